"""Merging students distilled from different teachers by task arithmetic.

Ritter-Gutierrez et al. (2025): students that start from the same weights theta_0 and are
distilled from different teachers have task vectors tau_i = theta_i - theta_0; the merged
student is theta = theta_0 + sum_i lambda_i tau_i. Only floating-point tensors are merged;
integer buffers (such as BatchNorm's num_batches_tracked) keep theta_0's value.
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch

State = Dict[str, torch.Tensor]


def merge_task_vectors(base: State, students: Sequence[State], lambdas: Sequence[float],
                       names: Sequence[str] = ()) -> State:
    """theta_0 + sum_i lambda_i (theta_i - theta_0), tensor by tensor.

    Args:
        base: theta_0, the weights every student started from.
        students: theta_i, each with exactly base's keys and shapes.
        lambdas: one weight per student (any real numbers; 1/n averages the students).
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
    merged: State = {}
    for key, theta0 in base.items():
        if not theta0.is_floating_point():
            merged[key] = theta0.clone()
            continue
        acc = theta0.double().clone()
        for lam, state in zip(lambdas, students):
            acc += float(lam) * (state[key].double() - theta0.double())
        merged[key] = acc.to(theta0.dtype)
    return merged
