"""What a run distills: one or more targets, each with its cache columns, weight and statistics.

A target is one embedding the student learns to predict through its own mapping head: a
teacher's output, or one layer (or layer mean) of a multi-layer teacher, whose cache rows hold
the chosen layers side by side (the cache's meta.json lists them as ``targets``: name and dim,
in order). Several teachers give several caches of the same audio; their rows are joined by
segment id (:func:`align_caches`).

Statistics (:class:`TargetNorm`) come from the training rows of the cache once: the mean, the
per-dimension standard deviation and the covariance's eigendecomposition. They drive the
target normalisation (``none``, ``center``, ``standardize``, ``whiten``): the head learns
normalised targets, and :meth:`TargetNorm.denormalize` maps its output back to the teacher's
space (validation, ``--projected`` exports).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..errors import ParameterError

NORMS = ("none", "center", "standardize", "whiten")


@dataclass(frozen=True)
class TargetSpec:
    """One target: ``name``, ``columns`` [start, stop) of its cache's rows, ``weight``,
    ``cache`` (index of the cache in the run's list) and the teacher ``record``
    (:func:`pyssondo.train.job.teacher_record`)."""

    name: str
    cache: int
    start: int
    stop: int
    weight: float
    record: Dict[str, Any]

    @property
    def dim(self) -> int:
        return self.stop - self.start

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "cache": self.cache, "columns": [self.start, self.stop],
                "dim": self.dim, "weight": self.weight, "teacher": self.record}


def cache_targets(meta: Dict[str, Any]) -> List[Tuple[str, int]]:
    """(name, dim) of each target in a cache's rows, from its meta.json: the teacher's
    ``targets`` list when it has several, else one target named after the teacher."""
    listed = meta.get("targets") or meta.get("teacher", {}).get("meta", {}).get("targets")
    if not listed:
        return [(str(meta["teacher"]["name"]), int(meta["dim"]))]
    out = [(str(t["name"]), int(t["dim"])) for t in listed]
    if sum(d for _, d in out) != int(meta["dim"]):
        raise ValueError(f"cache meta lists targets {out} of {sum(d for _, d in out)} dims in "
                         f"all, but its rows have {meta['dim']}")
    return out


def make_specs(metas: Sequence[Dict[str, Any]], records: Sequence[Dict[str, Any]],
               teacher_weights: Sequence[float], target_weights: Sequence[float]
               ) -> List[TargetSpec]:
    """The targets of a run reading the caches with ``metas`` (in order), weights =
    teacher weight x target weight (each list empty = all 1; else one per teacher / target)."""
    per_cache = [cache_targets(m) for m in metas]
    n_targets = sum(len(t) for t in per_cache)
    if teacher_weights and len(teacher_weights) != len(metas):
        raise ParameterError(f"--teacher-weights: {len(teacher_weights)} weights for "
                             f"{len(metas)} teachers")
    if target_weights and len(target_weights) != n_targets:
        names = [n for t in per_cache for n, _ in t]
        raise ParameterError(f"--target-weights: {len(target_weights)} weights for "
                             f"{n_targets} targets ({', '.join(names)})")
    specs, i = [], 0
    names = [n for t in per_cache for n, _ in t]
    for c, targets in enumerate(per_cache):
        start = 0
        for name, dim in targets:
            w = (teacher_weights[c] if teacher_weights else 1.0) * \
                (target_weights[i] if target_weights else 1.0)
            unique = name if names.count(name) == 1 else f"{name}#{c}"
            specs.append(TargetSpec(unique, c, start, start + dim, float(w),
                                    {**records[c], "dim": dim}))
            start += dim
            i += 1
    return specs


def align_caches(caches: Sequence[Any]) -> Tuple[np.ndarray, List[np.ndarray]]:
    """Joins several caches of the same audio by segment id.

    Returns (the rows of the first cache whose segment every cache holds, int64 [M]; for each
    cache, the map from a row of the first cache to its own row, int64 [N0], -1 where it has
    no such segment). One cache: all its rows and the identity.
    """
    n0 = len(caches[0])
    maps = [np.arange(n0, dtype=np.int64)]
    for cache in caches[1:]:
        index = {sid: i for i, sid in enumerate(cache.ids)}
        maps.append(np.array([index.get(sid, -1) for sid in caches[0].ids], dtype=np.int64))
    valid = np.flatnonzero(np.all(np.stack(maps) >= 0, axis=0)).astype(np.int64)
    return valid, maps


class JoinedRows:
    """Row r (a row of the first cache) = ``arrays[k][maps[k][r]]`` side by side on the last
    axis, float32: the targets of several caches as one [N0, sum D] array (``joined[r]``,
    ``shape``); rows missing from a cache must not be read (see :func:`align_caches`)."""

    def __init__(self, arrays: Sequence[Any], maps: Sequence[np.ndarray]) -> None:
        self.arrays, self.maps = list(arrays), list(maps)
        self.shape = (int(len(self.maps[0])),) + tuple(self.arrays[0].shape[1:-1]) + (
            sum(int(a.shape[-1]) for a in self.arrays),)

    def __getitem__(self, r: int) -> np.ndarray:
        return np.concatenate([np.asarray(a[int(m[r])], np.float32)
                               for a, m in zip(self.arrays, self.maps)], axis=-1)


class TargetNorm(nn.Module):
    """Affine normalisation of one target: ``z = (y - mean) @ forward_map``, and back:
    ``y = z @ inverse_map + mean`` (buffers; scriptable).

    Built by :meth:`fit` from training rows [N, D] (clip level; frame-level rows are pooled
    first) for a ``kind`` in :data:`NORMS`:
    - ``none``: identity (mean 0, maps I);
    - ``center``: subtract the mean;
    - ``standardize``: per dimension, (y - mean) / max(std, floor * max std);
    - ``whiten``: PCA whitening, (y - mean) V diag(1 / sqrt(max(lambda, floor * lambda_max))),
      with V, lambda the covariance's eigenvectors and eigenvalues (no dimension dropped).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("forward_map", torch.eye(dim))
        self.register_buffer("inverse_map", torch.eye(dim))

    @classmethod
    def fit(cls, rows: np.ndarray, kind: str, floor: float = 1e-3) -> "TargetNorm":
        """Statistics of ``rows`` float [N, D] for normalisation ``kind``."""
        if kind not in NORMS:
            raise ParameterError(f"target_norm={kind!r}: expected one of {NORMS}")
        y = np.asarray(rows, dtype=np.float64)
        norm = cls(y.shape[-1])
        if kind == "none":
            return norm
        mean = y.mean(axis=0)
        fwd = inv = np.eye(y.shape[-1])
        if kind == "standardize":
            std = y.std(axis=0)
            std = np.maximum(std, floor * std.max() if std.max() > 0 else 1.0)
            fwd, inv = np.diag(1.0 / std), np.diag(std)
        elif kind == "whiten":
            lam, vec = np.linalg.eigh(np.cov(y - mean, rowvar=False, bias=True))
            lam = np.maximum(lam, floor * lam.max() if lam.max() > 0 else 1.0)
            fwd = vec / np.sqrt(lam)
            inv = (vec * np.sqrt(lam)).T
        norm.mean.copy_(torch.from_numpy(mean))
        norm.forward_map.copy_(torch.from_numpy(fwd))
        norm.inverse_map.copy_(torch.from_numpy(inv))
        return norm

    def normalize(self, y: torch.Tensor) -> torch.Tensor:
        """[..., D] teacher space -> [..., D] normalised."""
        return (y - self.mean) @ self.forward_map

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """[..., D] normalised -> [..., D] teacher space."""
        return z @ self.inverse_map + self.mean


class Targets(nn.Module):
    """The normalisations of all targets of a run, on the joined [..., sum D] layout: target
    k owns the columns ``slices[k]`` (scriptable: ``--projected`` exports hold it).

    Args:
        dims: each target's dimension, in order. norms: their :class:`TargetNorm` (same order).
    """

    def __init__(self, dims: Sequence[int], norms: Sequence[TargetNorm]) -> None:
        super().__init__()
        bounds = np.cumsum([0] + [int(d) for d in dims])
        self.slices: List[Tuple[int, int]] = [(int(a), int(b))
                                              for a, b in zip(bounds[:-1], bounds[1:])]
        self.norms = nn.ModuleList(norms)

    def split(self, t: torch.Tensor) -> List[torch.Tensor]:
        """Each target's columns of ``t`` [..., sum D]."""
        return [t[..., a:b] for a, b in self.slices]

    @torch.jit.export
    def normalize(self, y: torch.Tensor) -> torch.Tensor:
        """Teacher space -> normalised, target by target, [..., sum D]."""
        parts: List[torch.Tensor] = []
        for i, norm in enumerate(self.norms):
            a, b = self.slices[i]
            parts.append(norm.normalize(y[..., a:b]))
        return torch.cat(parts, dim=-1)

    @torch.jit.export
    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised -> teacher space, target by target, [..., sum D]."""
        parts: List[torch.Tensor] = []
        for i, norm in enumerate(self.norms):
            a, b = self.slices[i]
            parts.append(norm.denormalize(z[..., a:b]))
        return torch.cat(parts, dim=-1)


class JoinedHeads(nn.Module):
    """One mapping head per target, outputs side by side: [..., d] -> [..., sum D]."""

    def __init__(self, heads: Sequence[nn.Module]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([h(x) for h in self.heads], dim=-1)
