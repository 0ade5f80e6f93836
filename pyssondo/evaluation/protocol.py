"""Train / validation / test splits: fixed folds from a column, or stratified k-fold.

Every split is by file (one row of the labeled data): a file lies in exactly one of the train,
validation and test parts, whatever its content. The validation part is carved from the
training folds only; probes choose their settings on it, and the test part is scored once.
With k-fold (or fixed folds other than train/test) every file is in exactly one test part.
Everything is numpy and depends only on the labels, the fold values and the seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from ..errors import ParameterError
from .data import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VALID


@dataclass(frozen=True)
class Split:
    """Row indices (int64, sorted) of one evaluation round."""

    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def strata(y: np.ndarray) -> np.ndarray:
    """Stratum of each example, int64 [N]: the class for single-label targets [N]; for
    multi-hot targets [N, C] the example's rarest class (-1 for an example with none)."""
    y = np.asarray(y)
    if y.ndim == 1:
        return y.astype(np.int64)
    counts = y.sum(axis=0)
    rarity = np.where(y > 0, counts[None, :], np.inf)
    out = np.argmin(rarity, axis=1).astype(np.int64)
    out[~(y > 0).any(axis=1)] = -1
    return out


def stratified_folds(groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Assigns each example a fold in [0, k) so that every stratum is spread evenly.

    Each stratum's examples are shuffled and dealt round-robin; the dealing continues where the
    previous stratum stopped, so fold sizes differ by at most one.

    Args:
        groups: int [N] stratum of each example.
        k: number of folds, 2 <= k <= N.
        seed: shuffling seed.

    Returns:
        int64 [N] fold index.
    """
    groups = np.asarray(groups)
    if not 2 <= k <= len(groups):
        raise ParameterError(f"--folds {k}: expected 2 <= folds <= number of files ({len(groups)})")
    rng = np.random.default_rng(seed)
    fold = np.empty(len(groups), dtype=np.int64)
    offset = 0
    for g in np.unique(groups):
        idx = rng.permutation(np.flatnonzero(groups == g))
        fold[idx] = (offset + np.arange(len(idx))) % k
        offset = (offset + len(idx)) % k
    return fold


def carve_validation(train: np.ndarray, groups: np.ndarray, fraction: float,
                     rng: np.random.Generator) -> tuple:
    """Splits training rows into (train, val), stratified: each stratum gives
    ``round(fraction * n)`` rows to validation, keeping at least one in train; when that
    gives none at all, the largest stratum gives one.

    Returns:
        (train, val), sorted int64 arrays of row indices.
    """
    if not 0.0 < fraction < 1.0:
        raise ParameterError(f"validation fraction {fraction} must lie in (0, 1)")
    per_stratum = [rng.permutation(train[groups[train] == g]) for g in np.unique(groups[train])]
    n_val = [min(int(round(fraction * len(rows))), len(rows) - 1) for rows in per_stratum]
    if per_stratum and sum(n_val) == 0:  # tiny data: one row from the largest stratum
        largest = int(np.argmax([len(rows) for rows in per_stratum]))
        n_val[largest] = min(1, len(per_stratum[largest]) - 1)
    val = np.sort(np.concatenate([rows[:n] for rows, n in zip(per_stratum, n_val)]
                                 + [np.zeros(0, np.int64)]))
    rest = np.setdiff1d(train, val)
    if len(val) == 0 or len(rest) == 0:
        raise ValueError(f"too few training files ({len(train)}) to carve a validation part")
    return rest.astype(np.int64), val.astype(np.int64)


def make_splits(y: np.ndarray, *, folds: Optional[Sequence[str]] = None, k: int = 5,
                seed: int = 0, val_fraction: float = 0.2) -> List[Split]:
    """The evaluation rounds of a task.

    Args:
        y: targets, int [N] (single-label) or multi-hot [N, C].
        folds: split-column value per example, or None for stratified k-fold. Values exactly
            {train, test} (plus optionally valid/val/validation/dev) give one round with that
            test part (and that validation part, else one carved from train); other values
            are folds, each the test part of one round.
        k: number of folds for stratified k-fold (used when ``folds`` is None).
        seed: seed for the k-fold assignment and the validation carving.
        val_fraction: share of the training rows (per stratum) used for validation.

    Returns:
        One :class:`Split` per round, in a fixed order.
    """
    groups = strata(y)
    n = len(groups)
    rng = np.random.default_rng([seed, 1])
    if folds is None:
        assign = stratified_folds(groups, k, seed)
        names = [f"fold{i + 1}" for i in range(k)]
        test_sets = [np.flatnonzero(assign == i) for i in range(k)]
    else:
        values = np.array([str(v) for v in folds])
        if len(values) != n:
            raise ParameterError(f"{len(values)} fold values for {n} examples")
        present = set(values.tolist())
        if SPLIT_TEST in present and present <= {SPLIT_TRAIN, SPLIT_TEST, *SPLIT_VALID}:
            test = np.flatnonzero(values == SPLIT_TEST)
            val = np.flatnonzero(np.isin(values, SPLIT_VALID))
            train = np.flatnonzero(values == SPLIT_TRAIN)
            if len(train) == 0:
                raise ValueError("the split column has test rows but no train rows")
            if len(val) == 0:
                train, val = carve_validation(train, groups, val_fraction, rng)
            return [Split(SPLIT_TEST, train, val, test)]
        names = sorted(present, key=_natural)
        if len(names) < 2:
            raise ValueError(f"the split column holds a single value {names}; need at least "
                             f"two folds, or train/test")
        test_sets = [np.flatnonzero(values == v) for v in names]
    out = []
    for name, test in zip(names, test_sets):
        train, val = carve_validation(np.setdiff1d(np.arange(n), test), groups, val_fraction, rng)
        out.append(Split(str(name), train, val, test.astype(np.int64)))
    return out


def _natural(value: str):
    """Sort key putting "2" before "10"."""
    return (0, int(value), "") if value.lstrip("-").isdigit() else (1, 0, value)
