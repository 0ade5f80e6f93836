"""Distillation losses: a student embedding is pulled towards the (cached) teacher embedding.

Every loss is an ``nn.Module`` called as ``loss(student, teacher) -> scalar tensor`` with a
class attribute ``level``:

- ``"clip"``: student [B, Ds] and teacher [B, Dt] (one embedding per clip);
- ``"frame"``: student [B, Fs, Ds] and teacher [B, Ft, Dt] (frame embeddings).

The teacher is a target: it is detached, cast to the student's dtype, and never receives a
gradient. Feature losses
(cosine, mse, l1, kl, infonce) compare embeddings coordinate by coordinate and need Ds == Dt
(map the student with a head from :mod:`pyssondo.heads` first). Relational losses (rkd-dist,
rkd-angle, pairwise-cosine, sp, iusp) compare similarity structures inside the batch (or inside
an utterance) and accept any Ds, Dt.

Each loss has a plain-torch reference implementation below (the ``*_loss`` functions; the test
oracle, and the path used on GPU). The relational losses also have a fused CPU path in the C++
core (:mod:`pyssondo.fused_losses`), used by default for CPU tensors; ``fused=True/False``
forces either.

:func:`make_loss` builds a weighted sum from a spec string such as
``"cosine:1,rkd-angle:2,rkd-dist:1"``; :func:`list_losses` names every loss.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ParameterError
from .frames import resample_frames

# F.normalize's and Park et al.'s pdist epsilon.
EPS = 1e-12


# ------------------------------------------------------------------------------------------
# Reference implementations (plain torch; teacher is treated as a constant target)
# ------------------------------------------------------------------------------------------

def cosine_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """L = mean_b (1 - cos(s_b, t_b)), cos(s, t) = <s, t> / (max(||s||, 1e-8) max(||t||, 1e-8)).

    A zero vector has cosine 0 with everything (loss 1) and a finite gradient.
    """
    cos = F.cosine_similarity(student, teacher.detach(), dim=-1, eps=1e-8)
    return (1.0 - cos).mean()


def mse_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """L = mean_{b,d} (s_bd - t_bd)^2 (feature-wise mean squared error)."""
    return F.mse_loss(student, teacher.detach())


def l1_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """L = mean_{b,d} |s_bd - t_bd|."""
    return F.l1_loss(student, teacher.detach())


def kl_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """KL over embedding dims: L = tau^2 mean_b KL(softmax(t_b / tau) || softmax(s_b / tau)).

    The tau^2 factor (Hinton et al.) keeps gradient magnitudes comparable across temperatures.
    """
    log_p_s = F.log_softmax(student / tau, dim=-1)
    log_p_t = F.log_softmax(teacher.detach() / tau, dim=-1)
    return tau * tau * F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean")


def infonce_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE with in-batch negatives.

    z = L2-normalised rows, logits_ij = <z^s_i, z^t_j> / tau,
    L = (CE(logits, diag) + CE(logits^T, diag)) / 2: the matching teacher row is the positive,
    the other B - 1 rows of the batch are the negatives (B = 1 gives 0).
    """
    zs = F.normalize(student, dim=-1)
    zt = F.normalize(teacher.detach(), dim=-1)
    logits = zs @ zt.transpose(0, 1) / tau
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.transpose(0, 1), target))


def park_pdist(e: torch.Tensor) -> torch.Tensor:
    """Park et al.'s pairwise Euclidean distances [B, D] -> [B, B].

    d_ij = sqrt(max(||e_i||^2 + ||e_j||^2 - 2 <e_i, e_j>, 1e-12)) for i != j, d_ii = 0; so two
    coincident rows are at distance 1e-6, which counts as non-zero (and has no gradient).
    """
    sq = e.pow(2).sum(dim=1)
    res = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * (e @ e.t())).clamp(min=EPS).sqrt()
    off_diagonal = 1.0 - torch.eye(e.shape[0], dtype=e.dtype, device=e.device)
    return res * off_diagonal


def _normalise_by_mean_positive(d: torch.Tensor) -> torch.Tensor:
    positive = d[d > 0]
    # B = 1: no pair, so nothing to normalise (Park's code would divide by NaN).
    return d / positive.mean() if positive.numel() else d


def _centred(e: torch.Tensor) -> torch.Tensor:
    """Rows [B, D] minus their mean row."""
    return e - e.mean(dim=0, keepdim=True)


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD distance-wise loss (Park et al. 2019, lenscloth/RKD ``RkdDistance``).

    psi_ij = d_ij / mu with d = :func:`park_pdist` and mu the mean of the non-zero d_ij,
    computed separately for student and teacher; L = (1/B^2) sum_ij smoothL1(psi^s_ij - psi^t_ij)
    (Huber, delta 1, averaged over all B^2 entries). B = 1 gives 0 (Park's code gives NaN).

    The rows are centred first (distances do not change; the Gram-derived squared distances
    cancel far less), as the fused path does, so coincident rows get the same near-zero
    distance on both paths.
    """
    with torch.no_grad():
        t_d = _normalise_by_mean_positive(park_pdist(_centred(teacher.detach())))
    d = _normalise_by_mean_positive(park_pdist(_centred(student)))
    return F.smooth_l1_loss(d, t_d, reduction="mean")


def safe_normalize(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """x / max(||x||, 1e-12) along ``dim`` (F.normalize's value), but an exactly zero vector
    maps to zero with a zero gradient, where F.normalize's gradient there is 1e12 * I.

    Coincident rows (the same segment drawn twice in a batch) give exactly zero difference
    vectors and zero rows; this is the fused kernels' convention at them (no gradient
    through a zero vector).
    """
    sq = x.pow(2).sum(dim=dim, keepdim=True)
    live = sq > 0
    norm = torch.where(live, sq, torch.ones_like(sq)).sqrt().clamp(min=EPS)
    return torch.where(live, x / norm, torch.zeros_like(x))


def _angles(e: torch.Tensor) -> torch.Tensor:
    diff = e.unsqueeze(0) - e.unsqueeze(1)  # diff[j, i] = e_i - e_j: B x B x D
    unit = safe_normalize(diff, dim=2)  # zero difference vectors stay zero, without gradient
    return torch.bmm(unit, unit.transpose(1, 2)).view(-1)  # angle[j, i, k] = <u_ji, u_jk>


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD angle-wise loss (Park et al. 2019, lenscloth/RKD ``RKdAngle``).

    psi_ijk = <e_ij, e_kj>, e_ij = (x_i - x_j) / max(||x_i - x_j||, 1e-12), over all B^3
    ordered triplets (apex j), so zero difference vectors (i = j, or coincident rows) give 0;
    L = (1/B^3) sum_ijk smoothL1(psi^s_ijk - psi^t_ijk). Builds a B x B x D tensor: memory
    B^2 D elements (and as much again for the gradient).

    Where two student rows coincide exactly (the same segment twice in a batch) the angles
    at them are undefined: both paths set them to 0 and pass no gradient through the zero
    difference vector (:func:`safe_normalize`), so the gradient stays finite.
    """
    with torch.no_grad():
        t_angle = _angles(teacher.detach())
    return F.smooth_l1_loss(_angles(student), t_angle, reduction="mean")


def pairwise_cosine_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine ("cosine-wise"): match the B x B cosine-similarity matrices.

    C_ij = <z_i, z_j>, z = x / max(||x||, 1e-12) (rows); L = (1/B^2) sum_ij (C^s_ij - C^t_ij)^2.
    """
    zs = F.normalize(student, dim=-1)
    zt = F.normalize(teacher.detach(), dim=-1)
    return (zs @ zs.transpose(-1, -2) - zt @ zt.transpose(-1, -2)).pow(2).mean()


def _sp_gram(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x @ x.transpose(-1, -2), p=2, dim=-1)


def similarity_preserving_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Similarity preserving (Tung & Mori 2019) over the batch.

    G = row-L2-normalised (Q Q^T) for Q = [B, D] (rows divided by max(||row||, 1e-12));
    L = ||G^t - G^s||_F^2 / B^2.
    """
    b = student.shape[0]
    return (_sp_gram(teacher.detach()) - _sp_gram(student)).pow(2).sum() / (b * b)


def iusp_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Intra-utterance similarity preserving (Chang et al. 2020), frame level.

    Student frames [B, Fs, Ds] are first resampled to the teacher's Ft frames
    (:func:`resample_frames`); per utterance b, G_b = row-L2-normalised (Q_b Q_b^T) is the
    Ft x Ft frame similarity; L = (1/B) sum_b ||G^t_b - G^s_b||_F^2 / Ft^2.
    """
    b, frames = teacher.shape[0], teacher.shape[1]
    student = resample_frames(student, frames)
    return (_sp_gram(teacher.detach()) - _sp_gram(student)).pow(2).sum() / (b * frames * frames)


# ------------------------------------------------------------------------------------------
# Modules
# ------------------------------------------------------------------------------------------

class DistillLoss(nn.Module):
    """Base class: ``forward(student, teacher) -> scalar`` after checking shapes.

    Class attributes: ``name`` (registry name), ``level`` ("clip" or "frame"), ``summary``
    (one line), ``same_dims`` (True for feature losses: Ds must equal Dt).
    """

    name: str = ""
    level: str = "clip"
    summary: str = ""
    same_dims: bool = False

    def check(self, student: torch.Tensor, teacher: torch.Tensor) -> None:
        """Raises ParameterError unless the pair has this loss's shapes."""
        ndim = 2 if self.level == "clip" else 3
        layout = "[B, D]" if ndim == 2 else "[B, F, D]"
        for what, x in (("student", student), ("teacher", teacher)):
            if x.dim() != ndim:
                raise ParameterError(
                    f"{self.level}-level loss '{self.name}' takes {layout} {what} embeddings, "
                    f"got shape {list(x.shape)}")
            if x.shape[0] < 1 or x.shape[-1] < 1 or (ndim == 3 and x.shape[1] < 1):
                raise ParameterError(f"loss '{self.name}': empty {what} embeddings, shape "
                                     f"{list(x.shape)}")
        if student.shape[0] != teacher.shape[0]:
            raise ParameterError(f"loss '{self.name}': student batch {student.shape[0]} != "
                                 f"teacher batch {teacher.shape[0]}")
        if self.same_dims and student.shape[-1] != teacher.shape[-1]:
            raise ParameterError(
                f"loss '{self.name}' compares embeddings coordinate by coordinate: student dim "
                f"{student.shape[-1]} != teacher dim {teacher.shape[-1]}; add a head "
                f"(pyssondo.heads.make_head) or use a relational loss")

    def compute(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Loss of student against teacher (cast to the student's dtype, e.g. a float16 cache)."""
        self.check(student, teacher)
        return self.compute(student, teacher.detach().to(student.dtype))

    def extra_repr(self) -> str:
        return f"level={self.level}"


class _Feature(DistillLoss):
    same_dims = True
    reference: Callable  # set by each subclass

    def compute(self, student, teacher):
        return type(self).reference(student, teacher)


class CosineLoss(_Feature):
    """1 - cosine similarity (the S-SONDO default). See :func:`cosine_loss`."""

    name, summary = "cosine", "1 - cos(student, teacher), mean over the batch (S-SONDO default)"
    reference = staticmethod(cosine_loss)


class MSELoss(_Feature):
    """Feature-wise mean squared error. See :func:`mse_loss`."""

    name, summary = "mse", "feature-wise mean squared error"
    reference = staticmethod(mse_loss)


class L1Loss(_Feature):
    """Feature-wise mean absolute error. See :func:`l1_loss`."""

    name, summary = "l1", "feature-wise mean absolute error"
    reference = staticmethod(l1_loss)


class _Tempered(DistillLoss):
    same_dims = True
    default_tau = 1.0

    def __init__(self, tau: Optional[float] = None) -> None:
        super().__init__()
        tau = self.default_tau if tau is None else float(tau)
        if not (math.isfinite(tau) and tau > 0):
            raise ParameterError(f"loss '{self.name}': tau must be a finite number > 0, got {tau}")
        self.tau = tau

    def extra_repr(self) -> str:
        return f"level={self.level}, tau={self.tau}"


class KLLoss(_Tempered):
    """KL divergence over embedding dims, temperature ``tau`` (default 1). See :func:`kl_loss`."""

    name, summary = "kl", "tau^2 KL(softmax(t/tau) || softmax(s/tau)) over embedding dims (tau=1)"

    def compute(self, student, teacher):
        return kl_loss(student, teacher, self.tau)


class InfoNCELoss(_Tempered):
    """Symmetric InfoNCE, in-batch negatives, temperature ``tau`` (default 0.1).
    See :func:`infonce_loss`."""

    name, summary = "infonce", "symmetric InfoNCE with in-batch negatives (tau=0.1)"
    default_tau = 0.1

    def compute(self, student, teacher):
        return infonce_loss(student, teacher, self.tau)


class _Relational(DistillLoss):
    """A relational loss: a torch reference and a fused CPU kernel.

    ``fused=None`` uses the fused kernel for CPU tensors and the reference elsewhere;
    ``True`` forces the fused kernel (CPU only), ``False`` the reference.
    """

    reference: Callable  # set by each subclass
    fused_fn: str  # name of the function in pyssondo.fused_losses

    def __init__(self, fused: Optional[bool] = None) -> None:
        super().__init__()
        if fused not in (None, True, False):
            raise ParameterError(f"fused must be None, True or False, got {fused!r}")
        self.fused = fused

    def uses_fused(self, student: torch.Tensor) -> bool:
        return self.fused if self.fused is not None else student.device.type == "cpu"

    def compute(self, student, teacher):
        if self.uses_fused(student):
            from . import fused_losses

            return getattr(fused_losses, self.fused_fn)(student, teacher)
        return type(self).reference(student, teacher)

    def extra_repr(self) -> str:
        return f"level={self.level}, fused={self.fused}"


class RKDDistanceLoss(_Relational):
    """RKD distance-wise (Park et al.). See :func:`rkd_distance_loss`."""

    name = "rkd-dist"
    summary = "RKD distance-wise: smooth-L1 between mean-normalised pairwise distances"
    reference = staticmethod(rkd_distance_loss)
    fused_fn = "rkd_distance_fused"


class RKDAngleLoss(_Relational):
    """RKD angle-wise (Park et al.) over all B^3 triplets. See :func:`rkd_angle_loss`."""

    name = "rkd-angle"
    summary = "RKD angle-wise: smooth-L1 between the cosines of all B^3 triplet angles"
    reference = staticmethod(rkd_angle_loss)
    fused_fn = "rkd_angle_fused"


class PairwiseCosineLoss(_Relational):
    """Pairwise cosine ("cosine-wise"). See :func:`pairwise_cosine_loss`."""

    name = "pairwise-cosine"
    summary = "cosine-wise: mean squared difference of the B x B cosine-similarity matrices"
    reference = staticmethod(pairwise_cosine_loss)
    fused_fn = "pairwise_cosine_fused"


class SimilarityPreservingLoss(_Relational):
    """Similarity preserving (Tung & Mori). See :func:`similarity_preserving_loss`."""

    name = "sp"
    summary = "similarity preserving: ||G_t - G_s||_F^2 / B^2, G = row-normalised Q Q^T"
    reference = staticmethod(similarity_preserving_loss)
    fused_fn = "similarity_preserving_fused"


class IUSPLoss(_Relational):
    """Intra-utterance similarity preserving, frame level. See :func:`iusp_loss`."""

    name = "iusp"
    level = "frame"
    summary = "intra-utterance SP on frame embeddings [B, F, D] (student resampled to Ft frames)"
    reference = staticmethod(iusp_loss)
    fused_fn = "iusp_fused"


_REGISTRY: Dict[str, type] = {
    cls.name: cls
    for cls in (CosineLoss, MSELoss, L1Loss, KLLoss, InfoNCELoss, RKDDistanceLoss, RKDAngleLoss,
                PairwiseCosineLoss, SimilarityPreservingLoss, IUSPLoss)
}


def list_losses() -> Dict[str, str]:
    """{name: one-line description} of every loss :func:`make_loss` knows, in registry order."""
    return {name: f"[{cls.level}] {cls.summary}" for name, cls in _REGISTRY.items()}


class CombinedLoss(nn.Module):
    """Weighted sum ``sum_i w_i L_i(student, teacher)`` of distillation losses.

    ``level`` is "frame" if any term is frame-level, else "clip". A clip-level combination
    takes [B, D] pairs. A frame-level one takes [B, F, D] pairs (student and teacher frame
    counts may differ): frame terms get them as they are, clip terms get the frame means
    ``x.mean(dim=1)``.
    """

    def __init__(self, terms: List[Tuple[DistillLoss, float]]) -> None:
        super().__init__()
        if not terms:
            raise ParameterError("a combined loss needs at least one term")
        self.losses = nn.ModuleList([loss for loss, _ in terms])
        self.weights = [float(w) for _, w in terms]
        self.level = "frame" if any(loss.level == "frame" for loss in self.losses) else "clip"

    def components(self, student: torch.Tensor, teacher: torch.Tensor) -> Dict[str, torch.Tensor]:
        """{name: unweighted value} of every term (for logging)."""
        want = 3 if self.level == "frame" else 2
        for what, x in (("student", student), ("teacher", teacher)):
            if x.dim() != want:
                raise ParameterError(
                    f"loss {self.spec()!r} is {self.level}-level and takes "
                    f"{'[B, F, D]' if want == 3 else '[B, D]'} {what} embeddings, got shape "
                    f"{list(x.shape)}")
        pooled = None
        parts = {}
        for loss in self.losses:
            if loss.level == self.level:
                parts[loss.name] = loss(student, teacher)
            else:
                if pooled is None:
                    pooled = (student.mean(dim=1), teacher.mean(dim=1))
                parts[loss.name] = loss(*pooled)
        return parts

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        parts = self.components(student, teacher)
        total = None
        for loss, weight in zip(self.losses, self.weights):
            term = parts[loss.name] * weight
            total = term if total is None else total + term
        return total

    def spec(self) -> str:
        """The canonical spec string, e.g. ``"cosine:1,infonce@tau=0.07:0.5"``."""
        items = []
        for loss, weight in zip(self.losses, self.weights):
            name = loss.name + (f"@tau={loss.tau:g}" if isinstance(loss, _Tempered) else "")
            items.append(f"{name}:{weight:g}")
        return ",".join(items)

    def extra_repr(self) -> str:
        return f"spec={self.spec()!r}, level={self.level}"


def _parse_number(text: str, what: str, item: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise ParameterError(f"loss spec item {item!r}: {what} must be a finite number > 0, "
                             f"got {text!r}")
    return value


def make_loss(spec: str = "cosine", *, fused: Optional[bool] = None) -> CombinedLoss:
    """Builds a :class:`CombinedLoss` from a spec string.

    Grammar: comma-separated items ``NAME[@tau=VALUE][:WEIGHT]``; the weight defaults to 1,
    ``@tau=`` sets the temperature of ``kl`` and ``infonce``. Examples: ``"cosine"``,
    ``"cosine:1,rkd-angle:2,rkd-dist:1"``, ``"infonce@tau=0.07"``, ``"cosine:1,iusp:0.5"``
    (frame level: takes [B, F, D] pairs). Names: see :func:`list_losses`. ``fused`` is passed
    to the relational losses (None: fused C++ kernel on CPU, torch reference elsewhere).
    Raises ParameterError (a ValueError) on an unknown name, a bad weight or option, or a
    name listed twice.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ParameterError(f"loss spec must be a non-empty string such as 'cosine' or "
                             f"'cosine:1,rkd-angle:2', got {spec!r}")
    terms: List[Tuple[DistillLoss, float]] = []
    seen = set()
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            raise ParameterError(f"loss spec {spec!r} has an empty item")
        head, sep, weight_text = item.partition(":")
        weight = _parse_number(weight_text.strip(), "weight", item) if sep else 1.0
        name, *options = [p.strip() for p in head.split("@")]
        cls = _REGISTRY.get(name)
        if cls is None:
            raise ParameterError(f"unknown loss {name!r} in spec {spec!r}; known: "
                                 f"{', '.join(_REGISTRY)}")
        if name in seen:
            raise ParameterError(f"loss {name!r} is listed twice in spec {spec!r}")
        seen.add(name)
        kwargs = {}
        for option in options:
            key, eq, value = option.partition("=")
            if not issubclass(cls, _Tempered) or key.strip() != "tau" or not eq:
                valid = "'@tau=VALUE'" if issubclass(cls, _Tempered) else "no options"
                raise ParameterError(f"loss spec item {item!r}: bad option {option!r} "
                                     f"({name} takes {valid})")
            kwargs["tau"] = _parse_number(value.strip(), "tau", item)
        if issubclass(cls, _Relational):
            kwargs["fused"] = fused
        terms.append((cls(**kwargs), weight))
    return CombinedLoss(terms)


__all__ = [
    "DistillLoss", "CombinedLoss", "make_loss", "list_losses", "park_pdist",
    "cosine_loss", "mse_loss", "l1_loss", "kl_loss", "infonce_loss", "rkd_distance_loss",
    "rkd_angle_loss", "pairwise_cosine_loss", "similarity_preserving_loss", "iusp_loss",
    "CosineLoss", "MSELoss", "L1Loss", "KLLoss", "InfoNCELoss", "RKDDistanceLoss",
    "RKDAngleLoss", "PairwiseCosineLoss", "SimilarityPreservingLoss", "IUSPLoss",
]
