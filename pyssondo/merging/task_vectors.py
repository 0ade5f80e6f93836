"""Merging students distilled from different teachers by task arithmetic.

Ritter-Gutierrez et al. (2025): students that start from the same weights theta_0 and are
distilled from different teachers have task vectors tau_i = theta_i - theta_0; the merged
student is theta = theta_0 + sum_i lambda_i tau_i. That formula applies to weights only.
Batch-norm running statistics are not weights: extrapolated like weights, variances go
negative (``--lambdas 0.7,0.7``) and the merged student outputs NaN. They are interpolated
instead, as the convex combination of the students' statistics with weights
max(lambda_i, 0) / sum_j max(lambda_j, 0) (:func:`bn_weights`), or recomputed on audio
(:mod:`pyssondo.merging.recalibrate`). Integer buffers (``num_batches_tracked``) keep theta_0's value.
"""
from __future__ import annotations

import io
import os
from typing import Dict, List, Sequence, Union

import torch

from ..atomic import atomic_write_bytes
from ..errors import ParameterError

State = Dict[str, torch.Tensor]
PathLike = Union[str, "os.PathLike[str]"]
BN_STATS = ("running_mean", "running_var")  # state-dict suffixes of batch-norm statistics


def is_bn_stat(key: str) -> bool:
    """True for a batch-norm running mean or variance (``...bn.running_var``)."""
    return key.rsplit(".", 1)[-1] in BN_STATS


def bn_weights(lambdas: Sequence[float]) -> List[float]:
    """Weights of the students' batch-norm statistics in the merge: max(lambda_i, 0) normalised
    to sum 1 (a convex combination, so variances stay positive).

    Raises:
        ParameterError: no lambda is positive.
    """
    pos = [max(float(v), 0.0) for v in lambdas]
    if sum(pos) <= 0:
        raise ParameterError(f"lambdas {list(lambdas)}: at least one must be positive to "
                             f"interpolate batch-norm statistics")
    return [v / sum(pos) for v in pos]


def merge_task_vectors(base: State, students: Sequence[State], lambdas: Sequence[float],
                       names: Sequence[str] = ()) -> State:
    """theta_0 + sum_i lambda_i (theta_i - theta_0) for weights, tensor by tensor; batch-norm
    running means and variances sum_i w_i theta_i with w = :func:`bn_weights` (lambdas);
    integer buffers theta_0's.

    Args:
        base: theta_0, the weights every student started from.
        students: theta_i, each with exactly base's keys and shapes.
        lambdas: one weight per student (any real numbers, at least one positive; 1/n
            averages the students).
        names: labels of the students for error messages (default: their positions).

    Raises:
        ValueError: lambdas and students differ in number, or a student's keys or shapes
            differ from base's (the message names the student and the tensor).
    """
    if not students:
        raise ValueError("merge: give at least one student")
    if len(lambdas) != len(students):
        raise ValueError(f"merge: {len(lambdas)} lambdas for {len(students)} students; "
                         f"give one per student")
    names = list(names) or [f"student {i + 1}" for i in range(len(students))]
    for name, state in zip(names, students):
        missing, extra = sorted(set(base) - set(state)), sorted(set(state) - set(base))
        if missing or extra:
            raise ValueError(f"{name}: weights do not match the base (missing {missing[:3]}, "
                             f"unexpected {extra[:3]}); were both made for the same student?")
        for key, value in base.items():
            if state[key].shape != value.shape:
                raise ValueError(f"{name}: {key} has shape {tuple(state[key].shape)}, the base "
                                 f"has {tuple(value.shape)}")
    stat_w = bn_weights(lambdas)
    merged: State = {}
    for key, theta0 in base.items():
        if not theta0.is_floating_point():
            merged[key] = theta0.clone()
            continue
        if is_bn_stat(key):
            acc = sum(w * state[key].double() for w, state in zip(stat_w, students))
        else:
            acc = theta0.double().clone()
            for lam, state in zip(lambdas, students):
                acc += float(lam) * (state[key].double() - theta0.double())
        merged[key] = acc.to(theta0.dtype)
    return merged


def initial_weights(student: str, *, n_mels: int, seed: int) -> State:
    """The randomly initialised weights of ``student`` (for ``n_mels`` bands) with torch
    seeded by ``seed``; the global RNG state is left as it was."""
    from ..students import create_student

    if n_mels < 1:
        raise ParameterError(f"--n-mels {n_mels} is invalid: expected >= 1")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_student(student, n_mels=n_mels).state_dict()


def save_weights(state: State, path: PathLike) -> str:
    """Saves a state dict atomically (readable by ``--init`` and ``ssondo merge``); returns its
    :func:`pyssondo.train.checkpoint.weights_fingerprint`."""
    from ..train.checkpoint import weights_fingerprint

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())
    return weights_fingerprint(state)
