"""Mapping heads: student embedding (d) -> teacher embedding (D), used during distillation only
and discarded at export.

Kinds (their names: :data:`pyssondo.names.HEADS`):
    "mlp":      S-SONDO's head, Linear(d, 1280) -> Hardswish -> Dropout(0.2) -> Linear(1280, D).
    "linear":   Linear(d, D).
    "identity": no parameters; only when d == D.

Every head maps the last axis, so it applies to clip embeddings [B, d] -> [B, D] and to frame
embeddings [B, F, d] -> [B, F, D] alike. Heads script with ``torch.jit.script``.
"""
from __future__ import annotations

from typing import Callable, Dict, List

from torch import nn

from .errors import ParameterError
from .names import HEADS

MLP_HIDDEN = 1280
MLP_DROPOUT = 0.2


def _mlp(in_dim: int, out_dim: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(in_dim, MLP_HIDDEN), nn.Hardswish(), nn.Dropout(MLP_DROPOUT),
        nn.Linear(MLP_HIDDEN, out_dim),
    )


def _identity(in_dim: int, out_dim: int) -> nn.Module:
    if in_dim != out_dim:
        raise ParameterError(f"head 'identity' needs equal dimensions, got student {in_dim} and "
                             f"teacher {out_dim}; use --head mlp or linear")
    return nn.Identity()


_REGISTRY: Dict[str, Callable[[int, int], nn.Module]] = {
    "mlp": _mlp, "linear": nn.Linear, "identity": _identity}


def list_heads() -> List[str]:
    """Names of the heads :func:`make_head` builds, in registry order."""
    return list(_REGISTRY)


def make_head(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """Builds the head ``kind`` mapping ``in_dim`` (student) to ``out_dim`` (teacher) features.

    Raises ParameterError (a ValueError) for an unknown kind, a dimension < 1, or "identity"
    with in_dim != out_dim.
    """
    HEADS.check(kind)
    for name, dim in (("in_dim", in_dim), ("out_dim", out_dim)):
        if not isinstance(dim, int) or dim < 1:
            raise ParameterError(f"head {name}={dim!r} is invalid: expected an integer >= 1")
    return _REGISTRY[kind](in_dim, out_dim)
