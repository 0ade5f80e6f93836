"""Weight averaging: an exponential moving average (EMA) of the student and head weights.

After optimiser step ``t`` (1-based) every floating-point parameter and buffer (batch-norm
running statistics included) of the average moves towards the trained model's::

    avg <- d_t * avg + (1 - d_t) * w,    d_t = min(decay, (1 + t) / (10 + t))

The warm-up of ``d_t`` (as in TensorFlow's ExponentialMovingAverage with ``num_updates``) keeps
the first steps from tying the average to the random initial weights. Integer buffers (batch
norm's step counter) are copied. With ``decay`` 0.995 the average spans about the last 200
steps. The average is what a run validates, keeps as ``best.pt`` and exports; the trained
weights are kept next to it so a resumed run continues exactly.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Iterator

import torch
from torch import nn


class WeightAverage:
    """The EMA of ``model``'s state (see the module docstring); starts equal to ``model``."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.state: Dict[str, torch.Tensor] = {k: v.detach().clone()
                                               for k, v in model.state_dict().items()}

    def update(self, model: nn.Module, step: int) -> None:
        """Moves the average towards ``model`` after optimiser step ``step`` (1-based)."""
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            for name, value in model.state_dict().items():
                avg = self.state[name]
                if avg.is_floating_point():
                    avg.mul_(d).add_(value.detach(), alpha=1.0 - d)
                else:
                    avg.copy_(value)

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """``model`` holds the average inside the block and its own weights again after it."""
        trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.state)
        try:
            yield
        finally:
            model.load_state_dict(trained)

    def part(self, prefix: str) -> Dict[str, torch.Tensor]:
        """The averaged state of sub-module ``prefix`` (e.g. "student"), keys without it."""
        cut = len(prefix) + 1
        return {k[cut:]: v.clone() for k, v in self.state.items() if k.startswith(prefix + ".")}

    def load_parts(self, parts: Dict[str, Dict[str, torch.Tensor]]) -> None:
        """Sets the average from sub-module states, e.g. {"student": ..., "head": ...}."""
        for prefix, state in parts.items():
            for k, v in state.items():
                self.state[f"{prefix}.{k}"].copy_(v)
