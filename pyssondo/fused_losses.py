"""Fused CPU forward/backward of the relational losses (C++ core kernels on Gram matrices).

Each function here equals, to rounding, its plain-torch reference in :mod:`pyssondo.losses`
(same name without ``_fused``), and is differentiable w.r.t. the student input only; the
teacher is a target and never receives a gradient. Work is split so each part runs where it is
fastest:

- the O(B^2 D) products -- the Grams ``G = X X^T`` in the forward pass and ``dL/dX = S X`` in
  the backward pass -- go to torch (BLAS, torch's threads);
- the O(B^2) and, for RKD angle, O(B^3) elementwise work runs in the C++ core on the Grams
  (``ssondo`` threads, see :func:`pyssondo.set_num_threads`). The kernel computes the loss
  and, in the same pass, ``S = dL/dG + dL/dG^T``, which backward only multiplies by ``X``.

So RKD angle costs O(B^2 D + B^3) time and O(B^2) memory instead of the reference's
B x B x D tensor. Inputs are computed in float64 when the student is float64, else float32
(autograd casts the gradient back). Only CPU tensors are accepted.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from .errors import ParameterError
from .frames import resample_frames

# kernel(gs, gt, xs, xt, want_grad) -> (loss, S or None); all arrays float32 or all float64.
Kernel = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool],
                  Tuple[float, Optional[np.ndarray]]]


class _GramLoss(torch.autograd.Function):
    """loss = kernel(Grams of xs and xt); backward: dL/dxs = grad_out * (S @ xs)."""

    @staticmethod
    def forward(ctx, xs: torch.Tensor, xt: torch.Tensor, kernel: Kernel) -> torch.Tensor:
        want_grad = bool(ctx.needs_input_grad[0])
        xs_ = xs.detach()
        xt_ = xt.detach()
        gs = torch.matmul(xs_, xs_.transpose(-1, -2))
        gt = torch.matmul(xt_, xt_.transpose(-1, -2))
        loss, s = kernel(gs.numpy(), gt.numpy(), xs_.numpy(), xt_.numpy(), want_grad)
        if want_grad:
            ctx.save_for_backward(torch.from_numpy(s), xs_)
        return torch.tensor(loss, dtype=xs.dtype)

    @staticmethod
    @once_differentiable  # S is a constant here: no second derivatives
    def backward(ctx, grad_out: torch.Tensor):
        s, xs = ctx.saved_tensors
        return torch.matmul(s, xs) * grad_out, None, None


def _prepare(student: torch.Tensor, teacher: torch.Tensor, center: bool):
    """Casts to the compute dtype, detaches the teacher, optionally centres the batch rows."""
    if student.device.type != "cpu" or teacher.device.type != "cpu":
        raise ParameterError(
            f"fused losses run on CPU tensors, got student on {student.device} and teacher on "
            f"{teacher.device}; use fused=False (the torch reference) on other devices")
    dtype = torch.float64 if student.dtype == torch.float64 else torch.float32
    xs = student.to(dtype)
    xt = teacher.detach().to(dtype)
    if center:
        # The RKD losses depend only on differences of rows: centring changes nothing but
        # makes Gram-derived distances (G_ii + G_jj - 2 G_ij) far less prone to cancellation.
        xs = xs - xs.mean(dim=-2, keepdim=True)
        xt = xt - xt.mean(dim=-2, keepdim=True)
    return xs.contiguous(), xt.contiguous()


def _core():
    from . import _core

    return _core


def rkd_angle_fused(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD angle-wise loss; student [B, Ds], teacher [B, Dt] -> scalar."""
    xs, xt = _prepare(student, teacher, center=True)
    core = _core()
    return _GramLoss.apply(
        xs, xt, lambda gs, gt, s, t, g: core.rkd_angle_loss(gs, gt, s, t, g))


def rkd_distance_fused(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD distance-wise loss; student [B, Ds], teacher [B, Dt] -> scalar."""
    xs, xt = _prepare(student, teacher, center=True)
    core = _core()
    return _GramLoss.apply(xs, xt, lambda gs, gt, s, t, g: core.rkd_distance_loss(gs, gt, g))


def pairwise_cosine_fused(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Pairwise-cosine loss; student [B, Ds], teacher [B, Dt] -> scalar."""
    xs, xt = _prepare(student, teacher, center=False)
    core = _core()
    return _GramLoss.apply(xs, xt, lambda gs, gt, s, t, g: core.pairwise_cosine_loss(gs, gt, g))


def _sp_kernel(gs, gt, s, t, want_grad):
    """Stacked Grams [n_grams, n, n] (one per utterance for IUSP)."""
    return _core().similarity_preserving_loss(gs, gt, want_grad)


def _sp_clip_kernel(gs, gt, s, t, want_grad):
    """One [B, B] Gram: a single-item stack, so that the products stay 2-D (mm, not bmm)."""
    loss, grad = _sp_kernel(gs[None], gt[None], s, t, want_grad)
    return loss, (grad[0] if grad is not None else None)


def similarity_preserving_fused(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving loss; student [B, Ds], teacher [B, Dt] -> scalar."""
    xs, xt = _prepare(student, teacher, center=False)
    return _GramLoss.apply(xs, xt, _sp_clip_kernel)


def iusp_fused(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """IUSP on frames resampled to the teacher's count; student [B, Fs, Ds], teacher [B, Ft, Dt]."""
    student = resample_frames(student, teacher.shape[1])
    xs, xt = _prepare(student, teacher, center=False)
    return _GramLoss.apply(xs, xt, _sp_kernel)


__all__ = ["rkd_angle_fused", "rkd_distance_fused", "pairwise_cosine_fused",
           "similarity_preserving_fused", "iusp_fused"]
