"""Parameter and multiply-accumulate (MAC) counts of a student.

MACs are counted with forward hooks on one input of batch 1, for the layers that do the
arithmetic: ``nn.Conv1d``/``nn.Conv2d`` (output elements x input channels per group x kernel
size), ``nn.Linear`` (output elements x in_features), and any module with a
``macs(inputs, output) -> int`` method for work done functionally (DyMN's dynamic
convolutions count their per-example convolution and the kernel aggregation there). Biases,
normalisation, activations, pooling and element-wise products are not counted (they are
<2% of the total for these networks).
"""
from __future__ import annotations

from typing import Any, List, Optional

import torch
from torch import nn


def count_params(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameter elements (buffers such as BatchNorm statistics are not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _layer_macs(module: nn.Module, inputs: Any, output: torch.Tensor) -> int:
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        per_output = module.in_channels // module.groups
        for k in module.kernel_size:
            per_output *= k
        return output.numel() * per_output
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    macs = getattr(module, "macs", None)
    if callable(macs):
        return int(macs(inputs, output))
    return 0


def ten_second_frames() -> int:
    """Log-mel frames of 10 s with the default front end (32 kHz, n_fft 1024, hop 512): 624."""
    from ..frontend import MelConfig

    cfg = MelConfig()
    return cfg.num_frames(10 * cfg.sample_rate)


def count_macs(model: nn.Module, n_mels: int = 128, frames: Optional[int] = None) -> int:
    """Multiply-accumulates of one forward pass of ``model`` on one log-mel [1, n_mels, frames]
    (default frames: 10 s with the default front end, :func:`ten_second_frames`). Runs in
    eval mode without gradients; the model's mode is restored. Needs an eager module (forward
    hooks do not run inside TorchScript)."""
    if isinstance(model, torch.jit.ScriptModule):
        raise ValueError("count_macs needs the eager module; TorchScript modules run no hooks")
    if frames is None:
        frames = ten_second_frames()
    if n_mels < 1 or frames < 1:
        raise ValueError(f"count_macs: n_mels={n_mels}, frames={frames}; both must be >= 1")
    total: List[int] = [0]

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        total[0] += _layer_macs(module, inputs, output)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.no_grad():
            model(torch.zeros(1, n_mels, frames, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total[0]
