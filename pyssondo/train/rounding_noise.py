"""Rounding noise while training: a student that int8 rounding of its activations cannot break.

Trained students amplify small perturbations of their early activations (mn04 after 30 epochs:
uniform noise of one int8 step at the first convolution's output, in float32, moves the
embedding as far as the whole int8 model does, agreement 0.27 vs 0.25), so their int8 exports
keep their first blocks float32 (:func:`pyssondo.export.choose_int8`). Adding that noise in
training (as in Fan et al. 2020, "Training with quantization noise for extreme model
compression") teaches the student to ignore it. :func:`add_rounding_noise` adds to the output of
every batch-norm layer, the tensors that int8 rounds once convolution and batch norm are fused,
uniform noise of ``steps`` int8 steps, one step being the tensor's range (over the batch) / 255
as a per-tensor uint8 quantiser would set it. Only in training mode: validation and exports see
the clean network.
"""
from __future__ import annotations

import logging
from typing import List

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..errors import ParameterError

log = logging.getLogger("ssondo.train")
INT8_LEVELS = 255  # steps across a tensor's range in a per-tensor uint8 quantiser


def add_rounding_noise(student: nn.Module, steps: float) -> List[RemovableHandle]:
    """Registers the noise on ``student``'s batch-norm outputs (see the module docstring).

    Args:
        student: the network whose batch-norm layers get the noise.
        steps: noise amplitude in int8 steps (> 0): uniform in [-steps / 2, steps / 2] steps.

    Returns:
        the hook handles (``handle.remove()`` takes the noise off again); none, with a
        warning, when ``student`` has no batch-norm layer (it trains without the noise).

    Raises:
        ParameterError: ``steps`` <= 0.
    """
    if not steps > 0:
        raise ParameterError(f"rounding_noise={steps} is invalid: expected > 0 int8 steps")
    norms = [m for m in student.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        log.warning("rounding noise: %s has no batch-norm layer to add it to; it trains "
                    "without", type(student).__name__)
        return []

    def noisy(module: nn.Module, args, out: torch.Tensor):
        if not module.training:
            return None  # the output as it is
        step = (out.detach().amax() - out.detach().amin()) / INT8_LEVELS
        # drawn in logical order, not memory order: channels-last and contiguous runs of the
        # same step (``--compile auto`` tries both) add the same noise
        noise = torch.rand(out.shape, dtype=out.dtype, device=out.device) - 0.5
        return out + noise * (steps * step)

    return [m.register_forward_hook(noisy) for m in norms]
