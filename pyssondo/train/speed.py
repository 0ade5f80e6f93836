"""The fastest form of the training step on CPU: eager, channels-last weights or torch.compile.

``--compile`` (:data:`COMPILE_MODES`) decides which network the loss calls:

- ``off``: eager PyTorch.
- ``on``: ``torch.compile`` (inductor) of the network from the first step.
- ``auto`` (default): on CPU in one process, when the eager training left is long enough to
  repay a compile (:data:`MIN_AUTO_SECONDS`), the first steps of the run time each variant of
  :data:`VARIANTS` in turn (:data:`TRIAL_STEPS` timed steps after an untimed one, which for
  ``compile`` is the compile itself) and the run keeps the fastest when it is at least
  :data:`MIN_GAIN` x faster than eager, else eager. Elsewhere (CUDA, torchrun) it is eager.

The trial steps are real training steps on the run's own batches: nothing is thrown away, and
every variant computes the same step up to float rounding (inductor draws dropout masks from
torch's generator, ``fallback_random``, as eager does). Why measure instead of a table:
``bench/students.py --part variants`` found the winner to depend on the family, the batch
shape and the machine (e.g. channels-last 1.60x and compile 1.23x for mn01 at 64 x 2 s, but
compile 2.57x for micronet-m0 at 32 x 4 s and 0.68x at 64 x 2 s).
"""
from __future__ import annotations

import logging
import statistics
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from .config import COMPILE_MODES

log = logging.getLogger("ssondo.train")

VARIANTS = ("eager", "channels_last", "compile")
MIN_GAIN = 1.3            # a variant replaces eager only when at least this much faster
MIN_AUTO_SECONDS = 600.0  # auto tries the variants only when the eager training left is longer
TRIAL_STEPS = 4           # timed steps per variant, after one untimed step


def compile_network(net: nn.Module) -> nn.Module:
    """``torch.compile`` (inductor) of ``net``, drawing dropout masks as eager does."""
    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = True
    return torch.compile(net)


class StepVariants:
    """Chooses and holds the network the training loss calls (``net``).

    Args:
        model: the trained module (its parameters are what the optimiser updates).
        net: what eager training calls (``model``, or its DistributedDataParallel wrapper).
        mode: one of :data:`COMPILE_MODES`.
        tune: whether ``auto`` may try the variants here (CPU, one process).
        compile_fn: builds the compiled network (default :func:`compile_network`).

    The trainer calls :meth:`observe` after every step with its wall time in seconds and the
    steps left in the run; ``net`` may change there. ``choice`` is the variant in use and
    ``seconds`` the median step time measured per variant (empty unless ``auto`` tried them).
    """

    def __init__(self, model: nn.Module, net: nn.Module, mode: str, *, tune: bool,
                 compile_fn: Optional[Callable[[nn.Module], nn.Module]] = None) -> None:
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile mode {mode!r}: expected one of {COMPILE_MODES}")
        self.model, self.eager = model, net
        self.compile_fn = compile_fn or compile_network
        self._compiled: Optional[nn.Module] = None
        self.seconds: Dict[str, float] = {}
        self._times: List[float] = []
        self._trying: Optional[str] = None
        self.choice = "eager"
        self.net = net
        if mode == "on":
            self._use("compile")
        elif mode == "auto" and tune:
            self._trying = "eager"

    @property
    def settled(self) -> bool:
        """Whether the choice is final (no variant is being timed)."""
        return self._trying is None

    def observe(self, seconds: float, steps_left: int) -> None:
        """Records one step of ``seconds`` of the variant being tried; moves to the next
        variant, or settles, when it has its timed steps."""
        if self._trying is None:
            return
        self._times.append(seconds)
        if len(self._times) < TRIAL_STEPS + 1:
            return
        self.seconds[self._trying] = statistics.median(self._times[1:])
        self._times = []
        if self._trying == "eager" and self.seconds["eager"] * steps_left < MIN_AUTO_SECONDS:
            log.info("--compile auto: eager (%.0f s of training left at %.0f ms a step, too "
                     "little to repay a compile)", self.seconds["eager"] * steps_left,
                     1e3 * self.seconds["eager"])
            self._settle("eager")
            return
        following = VARIANTS[VARIANTS.index(self._trying) + 1:]
        if following:
            self._trying = following[0]
            self._use(self._trying)
            return
        best = min(self.seconds, key=self.seconds.get)
        gain = self.seconds["eager"] / self.seconds[best]
        chosen = best if gain >= MIN_GAIN else "eager"
        log.info("--compile auto: %s (step %s)", chosen, ", ".join(
            f"{v} {1e3 * s:.0f} ms" for v, s in self.seconds.items()))
        self._settle(chosen)

    def failed(self, error: BaseException) -> bool:
        """Whether a step that raised ``error`` may be taken again eager: True (and eager from
        now on, with a warning) when the variant on trial was not eager, e.g. inductor found
        no C++ compiler; otherwise the error is the caller's to raise."""
        if self._trying in (None, "eager"):
            return False
        log.warning("--compile auto: %s failed (%s: %s); training eager", self._trying,
                    type(error).__name__, (str(error).splitlines() or [""])[0])
        self._times = []
        self._settle("eager")
        return True

    def _settle(self, variant: str) -> None:
        self._trying = None
        self._use(variant)

    def _use(self, variant: str) -> None:
        memory_format = (torch.channels_last if variant == "channels_last"
                         else torch.contiguous_format)
        self.model.to(memory_format=memory_format)
        if variant == "compile" and self._compiled is None:
            self._compiled = self.compile_fn(self.eager)
        self.net = self._compiled if variant == "compile" else self.eager
        self.choice = variant
