"""Batch norm folded into the convolution (or linear) before it, for float32 exports.

In eval mode a BatchNorm after a convolution is an affine map per channel, so the pair is one
convolution with rescaled weights and a new bias (``torch.nn.utils.fusion``). TorchScript
runs the two as written (aten's ``native_batch_norm``: about 1 of 11 ms of an mn04 student on
10 s at 1 thread); the ONNX exporter's optimiser and the int8 path (FX ``prepare_fx``) fold
them already. :func:`fold_batch_norm` does it with torch.fx's ``fuse`` on each largest
sub-module that FX can trace (a student's own ``forward`` starts with a shape check, which FX
cannot trace, so its children are folded instead, as :mod:`pyssondo.quantize` does).
"""
from __future__ import annotations

import copy

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode (``model`` is not modified) where each BatchNorm whose
    input is a Conv1d/2d/3d (or Linear) output used by nothing else is folded into it; the
    other BatchNorms stay (DyMN's after its dynamic convolutions). Same outputs within float32
    rounding (1e-7 to 1e-5 of the largest, tests/test_folding.py)."""
    model = copy.deepcopy(model).eval()
    _fold_children(model)
    return model


def _fold_children(module: nn.Module) -> None:
    """Replaces, depth first, each child that holds a BatchNorm and traces with its folded
    GraphModule; recurses into the children that do not trace."""
    from torch.fx.experimental.optimization import fuse

    for name, child in list(module.named_children()):
        if not any(isinstance(m, _BatchNorm) for m in child.modules()):
            continue
        try:
            folded = fuse(child)  # on a copy: a failed trace leaves ``child`` as it was
        except Exception:  # untraceable control flow: fold its parts instead
            _fold_children(child)
            continue
        setattr(module, name, folded)
