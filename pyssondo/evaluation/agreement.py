"""Label-free agreement between a student and its teacher on the same N segments.

Raw cosine between the student's projected output and the teacher's embedding says little
when the teacher's embeddings share one dominant direction (aisfx: median cosine 0.92 with
its mean), since a constant student already scores high. The measures here look past it:

- :func:`centered_cosine`: cosine after subtracting the teacher's mean (computed once from the
  training cache) from both the projected output and the teacher embedding;
- :func:`knn_agreement`: share of each segment's k nearest teacher neighbours (cosine, itself
  excluded) that are also among its k nearest student neighbours, for any student embedding
  (the backbone's [N, d] or the projected [N, D]);
- :func:`linear_cka`: linear centered kernel alignment (Kornblith et al. 2019) between two
  representations of any widths;
- :func:`agreement`: all of them as one dict with the fixed keys of :data:`MEASURES`.

Everything is numpy in, Python floats out. Nearest neighbours are found in row blocks of
float32 similarities, so memory stays O(block x N) and N ~ 20k takes seconds; no N x N
float64 matrix is ever formed. CKA works on the d x D cross-covariance, O(N (d + D)^2).
"""
from __future__ import annotations

from typing import Dict

import numpy as np

MEASURES = ("val_cos", "val_cos_centered", "knn_agree_backbone", "knn_agree_projected",
            "cka_backbone", "cka_projected")
"""Keys of :func:`agreement`, in the order reports show them."""


def _matrix(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty [N, dim] array, got shape {x.shape}")
    return x


def _same_rows(**arrays: np.ndarray) -> int:
    rows = {name: _matrix(a, name).shape[0] for name, a in arrays.items()}
    if len(set(rows.values())) != 1:
        raise ValueError(f"expected the same N segments in every array, got rows {rows}")
    return next(iter(rows.values()))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """float32 [N, d] rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def mean_cosine(student: np.ndarray, teacher: np.ndarray) -> float:
    """Mean over rows of cos(student[i], teacher[i]); both [N, D]."""
    _same_rows(student=student, teacher=teacher)
    if np.shape(student) != np.shape(teacher):
        raise ValueError(f"student {np.shape(student)} and teacher {np.shape(teacher)}: "
                         f"expected the same [N, D]")
    return float(np.mean(np.sum(_unit_rows(student) * _unit_rows(teacher), axis=1)))


def centered_cosine(student: np.ndarray, teacher: np.ndarray, mean: np.ndarray) -> float:
    """Mean over rows of cos(student[i] - mean, teacher[i] - mean).

    Args:
        student: projected student output (teacher space), [N, D].
        teacher: teacher embeddings of the same segments, [N, D].
        mean: the teacher's mean embedding [D], from the training cache (not from these rows).
    """
    mean = np.asarray(mean, dtype=np.float64).reshape(-1)
    if mean.shape[0] != np.shape(teacher)[-1]:
        raise ValueError(f"mean has {mean.shape[0]} dims, teacher {np.shape(teacher)[-1]}")
    return mean_cosine(np.asarray(student, np.float64) - mean,
                       np.asarray(teacher, np.float64) - mean)


def knn_indices(x: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
    """Indices of each row's k nearest other rows by cosine similarity, int64 [N, k].

    Args:
        x: [N, d] embeddings (any float dtype; compared in float32).
        k: neighbours per row, 1 <= k <= N - 1; a row is never its own neighbour.
        block: rows whose similarities to all N rows are held at once (memory block x N x 4 B).

    The k neighbours of a row are returned in no particular order.
    """
    x = _unit_rows(_matrix(x, "x"))
    n = x.shape[0]
    if not 1 <= k <= n - 1:
        raise ValueError(f"k={k}: expected 1 <= k <= N - 1 = {n - 1}")
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, block):
        stop = min(n, start + block)
        sims = x[start:stop] @ x.T
        sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        out[start:stop] = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return out


def knn_agreement(student: np.ndarray, teacher: np.ndarray, k: int = 10,
                  block: int = 1024) -> float:
    """Mean over segments of |kNN_teacher(i) & kNN_student(i)| / k, in [0, 1].

    Args:
        student: [N, d] student embeddings (backbone or projected; any width d).
        teacher: [N, D] teacher embeddings of the same segments.
        k: neighbours per segment (cosine, itself excluded); lowered to N - 1 for small N.
        block: row block of :func:`knn_indices`.

    1 means every segment has the same k nearest neighbours under both models; a random
    student scores about k / (N - 1).
    """
    n = _same_rows(student=student, teacher=teacher)
    if n < 2:
        raise ValueError(f"knn agreement needs at least 2 segments, got {n}")
    k = min(k, n - 1)
    return neighbour_overlap(knn_indices(student, k, block), knn_indices(teacher, k, block))


def neighbour_overlap(a: np.ndarray, b: np.ndarray, block: int = 1024) -> float:
    """Mean over rows of |set(a[i]) & set(b[i])| / k for two int [N, k] neighbour lists
    (each row without repeats), as :func:`knn_indices` returns them."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"neighbour lists of shapes {a.shape} and {b.shape}: expected equal [N, k]")
    n, k = a.shape
    shared = 0
    for start in range(0, n, block):  # [rows, k, k] comparisons, a block at a time
        stop = min(n, start + block)
        shared += int((a[start:stop, :, None] == b[start:stop, None, :]).sum())
    return shared / (n * k)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA between [N, d] and [N, D] representations of the same N segments, in [0, 1].

    CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) with Xc, Yc the column-centred
    inputs (float64). Invariant to orthogonal transforms and isotropic scaling of either input,
    not to arbitrary invertible linear maps. 0 when either input is constant.
    """
    _same_rows(x=x, y=y)
    xc = np.asarray(x, dtype=np.float64)
    yc = np.asarray(y, dtype=np.float64)
    xc = xc - xc.mean(axis=0)
    yc = yc - yc.mean(axis=0)
    cross = np.linalg.norm(yc.T @ xc) ** 2
    norms = np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)
    return float(cross / norms) if norms > 0 else 0.0


def agreement(backbone: np.ndarray, projected: np.ndarray, teacher: np.ndarray,
              mean: np.ndarray, k: int = 10) -> Dict[str, float]:
    """Every measure of this module for one student on N segments, keyed by :data:`MEASURES`.

    Args:
        backbone: the student's own embedding (what the export outputs), [N, d].
        projected: head(backbone), the student's output in the teacher's space, [N, D].
        teacher: the teacher's embeddings of the same segments, [N, D].
        mean: the teacher's mean embedding [D] from the training cache.
        k: neighbours of the agreement measures.

    Returns:
        ``val_cos`` (raw mean cosine, projected vs teacher), ``val_cos_centered``,
        ``knn_agree_backbone``, ``knn_agree_projected``, ``cka_backbone``, ``cka_projected``.
    """
    n = _same_rows(backbone=backbone, projected=projected, teacher=teacher)
    if n < 2:
        raise ValueError(f"agreement needs at least 2 segments, got {n}")
    k = min(k, n - 1)
    near = knn_indices(teacher, k)  # the teacher's neighbours, shared by both comparisons
    return {
        "val_cos": mean_cosine(projected, teacher),
        "val_cos_centered": centered_cosine(projected, teacher, mean),
        "knn_agree_backbone": neighbour_overlap(knn_indices(backbone, k), near),
        "knn_agree_projected": neighbour_overlap(knn_indices(projected, k), near),
        "cka_backbone": linear_cka(backbone, teacher),
        "cka_projected": linear_cka(projected, teacher),
    }
