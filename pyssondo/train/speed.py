"""The fastest form of the training step on CPU: eager, channels-last weights or torch.compile.

``--compile`` (:data:`COMPILE_MODES`) decides which network the loss calls:

- ``off``: eager PyTorch.
- ``on``: ``torch.compile`` (inductor) of the network from the first step.
- ``auto`` (default): on CPU in one process, the first steps of a run time the variants of
  :data:`VARIANTS` and the run keeps the fastest when it is at least :data:`MIN_GAIN` x faster
  than eager, else eager. Elsewhere (CUDA, torchrun) it is eager. The trial:

  1. :data:`WARMUP_STEPS` untimed and :data:`TRIAL_STEPS` timed eager steps. When the eager
     training left is under :data:`MIN_AUTO_SECONDS`, too little to repay a compile, the run
     stays eager here.
  2. One untimed step of each other variant (for ``compile``, the compile itself).
  3. :data:`ROUNDS` rounds of one timed step of each variant in turn, so that a machine whose
     load drifts slows every variant alike; each variant's time is its median over the rounds.

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
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from .config import COMPILE_MODES

log = logging.getLogger("ssondo.train")

VARIANTS = ("eager", "channels_last", "compile")
MIN_GAIN = 1.3            # a variant replaces eager only when at least this much faster
MIN_AUTO_SECONDS = 600.0  # auto tries the variants only when the eager training left is longer
WARMUP_STEPS = 2          # untimed eager steps first (one-time costs of a new process)
TRIAL_STEPS = 4           # timed eager steps behind the estimate of the training left
ROUNDS = 5                # interleaved timed rounds of every variant


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
    steps left in the run; ``net`` may change there. ``choice`` is the variant in use (or on
    trial) and ``seconds`` the median step time per variant that ``auto`` measured.
    """

    def __init__(self, model: nn.Module, net: nn.Module, mode: str, *, tune: bool,
                 compile_fn: Optional[Callable[[nn.Module], nn.Module]] = None) -> None:
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile mode {mode!r}: expected one of {COMPILE_MODES}")
        self.model, self.eager = model, net
        self.compile_fn = compile_fn or compile_network
        self._compiled: Optional[nn.Module] = None
        self.seconds: Dict[str, float] = {}
        self._times: Dict[str, List[float]] = {}
        self._plan: List[Tuple[str, bool]] = []  # the trial's steps to take: (variant, timed)
        self._estimated = False                  # whether step 1 of the trial is done
        self.choice = "eager"
        self.net = net
        if mode == "on":
            self._use("compile")
        elif mode == "auto" and tune:
            self._plan = [("eager", False)] * WARMUP_STEPS + [("eager", True)] * TRIAL_STEPS

    @property
    def settled(self) -> bool:
        """Whether the choice is final (no variant is being timed)."""
        return not self._plan

    def observe(self, seconds: float, steps_left: int) -> None:
        """Records the step just taken (``seconds`` of wall time, ``steps_left`` in the run)
        and sets up the next one: the trial's next variant, or the choice at its end."""
        if not self._plan:
            return
        variant, timed = self._plan.pop(0)
        if timed:
            self._times.setdefault(variant, []).append(seconds)
        if not self._plan and not self._estimated:
            self._estimated = True
            eager = statistics.median(self._times.pop("eager"))
            if eager * steps_left < MIN_AUTO_SECONDS:
                self.seconds = {"eager": eager}
                log.info("--compile auto: eager (%.0f s of training left at %.0f ms a step, "
                         "too little to repay a compile)", eager * steps_left, 1e3 * eager)
                self._settle("eager")
                return
            self._plan = ([(v, False) for v in VARIANTS[1:]]
                          + [(v, True) for _ in range(ROUNDS) for v in VARIANTS])
        if self._plan:
            self._use(self._plan[0][0])
            return
        self.seconds = {v: statistics.median(t) for v, t in self._times.items()}
        best = min(self.seconds, key=self.seconds.get)
        chosen = best if self.seconds["eager"] / self.seconds[best] >= MIN_GAIN else "eager"
        log.info("--compile auto: %s (median step %s)", chosen, ", ".join(
            f"{v} {1e3 * t:.0f} ms" for v, t in self.seconds.items()))
        self._settle(chosen)

    def failed(self, error: BaseException) -> bool:
        """Whether a step that raised ``error`` may be taken again eager: True (and eager from
        now on, with a warning) when the step was a trial of another variant, e.g. inductor
        found no C++ compiler; otherwise the error is the caller's to raise."""
        if not self._plan or self.choice == "eager":
            return False
        log.warning("--compile auto: %s failed (%s: %s); training eager", self.choice,
                    type(error).__name__, (str(error).splitlines() or [""])[0])
        self.seconds = {}
        self._settle("eager")
        return True

    def _settle(self, variant: str) -> None:
        self._plan = []
        self._use(variant)

    def _use(self, variant: str) -> None:
        memory_format = (torch.channels_last if variant == "channels_last"
                         else torch.contiguous_format)
        self.model.to(memory_format=memory_format)
        if variant == "compile" and self._compiled is None:
            self._compiled = self.compile_fn(self.eager)
        self.net = self._compiled if variant == "compile" else self.eager
        self.choice = variant
