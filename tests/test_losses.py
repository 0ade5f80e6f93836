"""Distillation losses: fused C++ kernels vs the torch references, references vs independent
numpy formulas (RKD after Park et al.'s lenscloth/RKD metric/loss.py), edge cases, make_loss."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pyssondo import fused_losses as fl
from pyssondo import losses as L
from pyssondo.frames import resample_frames

# (name, reference, fused, level)
RELATIONAL = [
    ("rkd-angle", L.rkd_angle_loss, fl.rkd_angle_fused, "clip"),
    ("rkd-dist", L.rkd_distance_loss, fl.rkd_distance_fused, "clip"),
    ("pairwise-cosine", L.pairwise_cosine_loss, fl.pairwise_cosine_fused, "clip"),
    ("sp", L.similarity_preserving_loss, fl.similarity_preserving_fused, "clip"),
    ("iusp", L.iusp_loss, fl.iusp_fused, "frame"),
]
IDS = [r[0] for r in RELATIONAL]


def pair(level, b, ds, dt, dtype=torch.float64, seed=0, fs=7, ft=5):
    g = torch.Generator().manual_seed(seed)
    shape_s = (b, ds) if level == "clip" else (b, fs, ds)
    shape_t = (b, dt) if level == "clip" else (b, ft, dt)
    s = torch.randn(*shape_s, generator=g, dtype=dtype)
    t = torch.randn(*shape_t, generator=g, dtype=dtype) + 0.5  # not centred: tests centring
    return s, t


def value_and_grad(fn, s, t):
    s = s.detach().clone().requires_grad_(True)
    loss = fn(s, t)
    (grad,) = torch.autograd.grad(loss, s)
    return loss.detach(), grad


def rel_err(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# ------------------------------------------------------------------------------------------
# Fused == reference
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,ref,fused,level", RELATIONAL, ids=IDS)
def test_fused_gradcheck_float64(name, ref, fused, level):
    s, t = pair(level, 6, 4, 3)
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: fused(x, t), (s,), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("name,ref,fused,level", RELATIONAL, ids=IDS)
@pytest.mark.parametrize("b", [1, 2, 3, 9, 33])
def test_fused_equals_reference_float64(name, ref, fused, level, b):
    s, t = pair(level, b, 5, 8, seed=b)
    lr, gr = value_and_grad(ref, s, t)
    lf, gf = value_and_grad(fused, s, t)
    assert torch.isfinite(lf) and torch.isfinite(gf).all()
    assert lf.item() == pytest.approx(lr.item(), rel=1e-10, abs=1e-14)
    assert torch.allclose(gf, gr, rtol=1e-8, atol=1e-13)


# The RKD-angle kernel's k loop takes 2 vectors a step (8 floats or 4 doubles each), then at
# most one whole and one partial vector: these batch sizes reach every combination of the
# three parts, for both widths.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b", [7, 14, 30, 40])
def test_rkd_angle_every_vector_tail(dtype, b):
    s, t = pair("clip", b, 6, 9, dtype=torch.float64, seed=b)
    lr, gr = value_and_grad(L.rkd_angle_loss, s, t)
    lf, gf = value_and_grad(fl.rkd_angle_fused, s.to(dtype), t.to(dtype))
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert lf.item() == pytest.approx(lr.item(), rel=tol)
    assert rel_err(gf.double(), gr) < 2 * tol


# float32 at a realistic size (B = 64 clips, teacher 768-d, student 512-d; IUSP: 62 student
# and 31 teacher frames): the fused path works from Grams, the reference from differences.
# Stated tolerances: 1e-5 relative on the loss, 2e-5 relative (L2 norm) on the gradient
# (measured: <= 1.3e-7 and <= 2e-6).
@pytest.mark.parametrize("name,ref,fused,level", RELATIONAL, ids=IDS)
def test_fused_equals_reference_float32_realistic(name, ref, fused, level):
    s, t = pair(level, 64, 512, 768, dtype=torch.float32, fs=62, ft=31)
    lr, gr = value_and_grad(ref, s, t)
    lf, gf = value_and_grad(fused, s, t)
    assert gf.dtype == torch.float32
    assert lf.item() == pytest.approx(lr.item(), rel=1e-5)
    assert rel_err(gf, gr) < 2e-5


def test_fused_is_cpu_default_and_can_be_forced():
    s, t = pair("clip", 5, 4, 4)
    loss = L.RKDAngleLoss()
    assert loss.uses_fused(s)
    assert not loss.uses_fused(torch.empty(2, 3, device="meta"))
    assert not L.RKDAngleLoss(fused=False).uses_fused(s)
    with pytest.raises(ValueError, match="CPU"):
        fl.rkd_angle_fused(torch.empty(2, 3, device="meta"), torch.empty(2, 3, device="meta"))
    for fused in (None, True, False):
        assert L.make_loss("rkd-angle", fused=fused)(s, t).item() == pytest.approx(
            L.rkd_angle_loss(s, t).item(), rel=1e-10)


def test_fused_result_does_not_depend_on_thread_count():
    import pyssondo

    s, t = pair("clip", 150, 6, 5, dtype=torch.float32)  # big enough to split RKD angle
    before = pyssondo.get_num_threads()
    try:
        results = []
        for n in (1, 3):
            pyssondo.set_num_threads(n)
            results.append([value_and_grad(fn, s, t) for _, _, fn, level in RELATIONAL
                            if level == "clip"])
    finally:
        pyssondo.set_num_threads(before)
    for (la, ga), (lb, gb) in zip(*results):
        assert la.item() == lb.item() and torch.equal(ga, gb)


def test_half_precision_teacher_is_cast():
    s, t = pair("clip", 6, 5, 5, dtype=torch.float32)
    for name in L.list_losses():
        if name == "iusp":
            continue
        want = L.make_loss(name)(s, t.half().float())
        assert L.make_loss(name)(s, t.half()).item() == pytest.approx(want.item(), rel=1e-6)


def test_teacher_gets_no_gradient_and_may_require_grad():
    s, t = pair("clip", 6, 4, 3)
    s.requires_grad_(True)
    t.requires_grad_(True)
    for fused in (fl.rkd_angle_fused, fl.rkd_distance_fused, fl.pairwise_cosine_fused,
                  fl.similarity_preserving_fused):
        fused(s, t).backward()
        assert t.grad is None
    # no gradient wanted at all: the kernels skip the backward work
    with torch.no_grad():
        assert fl.rkd_angle_fused(s, t).item() == pytest.approx(L.rkd_angle_loss(s, t).item())


# ------------------------------------------------------------------------------------------
# Edge cases
# ------------------------------------------------------------------------------------------

def test_single_clip_gives_zero_loss_and_gradient():
    s, t = pair("clip", 1, 4, 3)
    for name, ref, fused, level in RELATIONAL:
        if level != "clip":
            continue
        for fn in (ref, fused):
            loss, grad = value_and_grad(fn, s, t)
            assert loss.item() == pytest.approx(0.0, abs=1e-15), name
            assert grad.abs().max() < 1e-12, name


def test_duplicate_teacher_rows_match_reference():
    s, t = pair("clip", 8, 5, 6)
    t[3] = t[1]
    t[5] = t[1]
    for name, ref, fused, level in RELATIONAL[:4]:
        lr, gr = value_and_grad(ref, s, t)
        lf, gf = value_and_grad(fused, s, t)
        assert lf.item() == pytest.approx(lr.item(), rel=1e-10), name
        assert torch.allclose(gf, gr, rtol=1e-8, atol=1e-12), name


def _finite_difference(fn, s, t, index, h=1e-6):
    """Central difference of fn(s, t) w.r.t. s[index] (float64)."""
    plus, minus = s.clone(), s.clone()
    plus[index] += h
    minus[index] -= h
    return (fn(plus, t).item() - fn(minus, t).item()) / (2 * h)


@pytest.mark.parametrize("name,ref,fused,level", RELATIONAL, ids=IDS)
def test_duplicate_student_rows(name, ref, fused, level):
    # Balanced sampling with replacement puts the same segment twice in a batch: the torch
    # path (CUDA, and the oracle) must give the fused path's finite gradient there.
    s, t = pair(level, 8, 5, 6)
    s[2] = s[6]
    s[5] = s[6]
    if level == "frame":
        s[:, 3] = s[:, 1]  # and equal frames inside an utterance
    lr, gr = value_and_grad(ref, s, t)
    lf, gf = value_and_grad(fused, s, t)
    assert lf.item() == pytest.approx(lr.item(), rel=1e-10)
    assert torch.isfinite(gr).all() and gr.norm() < 10
    assert torch.allclose(gf, gr, rtol=1e-8, atol=1e-12)
    # where the loss is differentiable (rows not in a tie), the gradient is the derivative
    for index in [(0, 1), (3, 4), (7, 0)] if level == "clip" else [(0, 2, 1), (7, 4, 3)]:
        assert gr[index].item() == pytest.approx(_finite_difference(ref, s, t, index),
                                                 rel=1e-5, abs=1e-9)
    # float32 through make_loss, as training calls it: the same gradient on both paths
    s32, t32 = s.float(), t.float()
    _, g_torch = value_and_grad(L.make_loss(name, fused=False), s32, t32)
    _, g_fused = value_and_grad(L.make_loss(name, fused=True), s32, t32)
    assert torch.isfinite(g_torch).all()
    assert rel_err(g_torch, g_fused) < 1e-3


def test_safe_normalize_equals_f_normalize_off_zero():
    x = torch.randn(4, 6, dtype=torch.float64)
    x[2] = 0.0
    x[3] *= 1e-13  # below the clamp: x / 1e-12, as F.normalize
    x.requires_grad_(True)
    y = L.safe_normalize(x, dim=1)
    torch.testing.assert_close(y, torch.nn.functional.normalize(x, dim=1), rtol=1e-15, atol=0)
    (grad,) = torch.autograd.grad(y[:, 0].sum(), x)
    assert grad[2].abs().max() == 0 and torch.isfinite(grad).all()


def test_all_student_rows_identical():
    s, t = pair("clip", 6, 5, 6)
    s[:] = s[0]
    for name, ref, fused, level in RELATIONAL[:4]:
        lr = ref(s, t)
        lf, gf = value_and_grad(fused, s, t)
        assert lf.item() == pytest.approx(lr.item(), rel=1e-10), name
        assert torch.isfinite(gf).all(), name


def test_zero_vectors():
    s, t = pair("clip", 5, 4, 4)
    s[1] = 0.0
    t[3] = 0.0
    loss, grad = value_and_grad(L.cosine_loss, s, t)
    cos = [float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300))
           for a, b in zip(s.numpy(), t.numpy())]
    assert loss.item() == pytest.approx(1 - np.mean(cos), rel=1e-12)
    assert torch.isfinite(grad).all()
    for name, ref, fused, level in RELATIONAL[:4]:
        lr, gr = value_and_grad(ref, s, t)
        lf, gf = value_and_grad(fused, s, t)
        assert lf.item() == pytest.approx(lr.item(), rel=1e-10), name
        assert torch.isfinite(gf).all(), name
        assert torch.allclose(gf, gr, rtol=1e-8, atol=1e-12), name


def test_feature_losses_need_equal_dims_relational_do_not():
    s, t = pair("clip", 4, 5, 6)
    for name in ("cosine", "mse", "l1", "kl", "infonce"):
        with pytest.raises(ValueError, match="add a head"):
            L.make_loss(name)(s, t)
    for name in ("rkd-angle", "rkd-dist", "pairwise-cosine", "sp"):
        assert torch.isfinite(L.make_loss(name)(s, t))
    fs, ft = pair("frame", 3, 5, 6)
    assert torch.isfinite(L.make_loss("iusp")(fs, ft))


def test_shape_errors():
    s, t = pair("clip", 4, 5, 5)
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        L.CosineLoss()(s[None], t[None])
    with pytest.raises(ValueError, match="batch"):
        L.RKDAngleLoss()(s, t[:3])
    with pytest.raises(ValueError, match=r"\[B, F, D\]"):
        L.IUSPLoss()(s, t)
    with pytest.raises(ValueError, match="clip-level"):
        L.make_loss("cosine,rkd-dist")(s[:, None], t[:, None])


# ------------------------------------------------------------------------------------------
# References vs independent numpy formulas
# ------------------------------------------------------------------------------------------

def np_smooth_l1_mean(a, b):
    d = np.abs(a - b)
    return float(np.where(d < 1, 0.5 * d * d, d - 0.5).mean())


def np_park_pdist(e, eps=1e-12):
    # metric/utils.py pdist(e, squared=False)
    sq = (e ** 2).sum(axis=1)
    res = np.sqrt(np.clip(sq[:, None] + sq[None, :] - 2 * e @ e.T, eps, None))
    np.fill_diagonal(res, 0)
    return res


def np_rkd_distance(s, t):
    # RkdDistance.forward
    td = np_park_pdist(t)
    td = td / td[td > 0].mean()
    d = np_park_pdist(s)
    d = d / d[d > 0].mean()
    return np_smooth_l1_mean(d, td)


def np_rkd_angle(s, t):
    # RKdAngle.forward: td = t[None] - t[:, None]; F.normalize(td, dim=2); bmm
    def angles(e):
        diff = e[None, :, :] - e[:, None, :]
        norm = np.sqrt((diff ** 2).sum(axis=2, keepdims=True))
        unit = diff / np.maximum(norm, 1e-12)
        return np.einsum("aid,akd->aik", unit, unit).reshape(-1)
    return np_smooth_l1_mean(angles(s), angles(t))


@pytest.mark.parametrize("b", [2, 3, 10])
def test_rkd_references_match_park_in_numpy(b):
    s, t = pair("clip", b, 6, 4, seed=10 + b)
    if b == 10:
        s[7] = s[4]  # coincident rows: clamped distance, zero difference vector
        t[2] = t[9]
    sn, tn = s.numpy(), t.numpy()
    assert L.rkd_distance_loss(s, t).item() == pytest.approx(np_rkd_distance(sn, tn), rel=1e-12)
    assert L.rkd_angle_loss(s, t).item() == pytest.approx(np_rkd_angle(sn, tn), rel=1e-12)


def test_other_references_match_numpy():
    s, t = pair("clip", 7, 5, 5, seed=3)
    sn, tn = s.numpy(), t.numpy()
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    assert L.mse_loss(s, t).item() == pytest.approx(((sn - tn) ** 2).mean(), rel=1e-12)
    assert L.l1_loss(s, t).item() == pytest.approx(np.abs(sn - tn).mean(), rel=1e-12)
    cs, ct = unit(sn) @ unit(sn).T, unit(tn) @ unit(tn).T
    assert L.pairwise_cosine_loss(s, t).item() == pytest.approx(((cs - ct) ** 2).mean(), rel=1e-12)
    gs, gt = unit(sn @ sn.T), unit(tn @ tn.T)
    assert L.similarity_preserving_loss(s, t).item() == pytest.approx(
        ((gt - gs) ** 2).sum() / 49, rel=1e-12)
    tau = 2.0
    log_softmax = lambda x: x - np.log(np.exp(x).sum(axis=1, keepdims=True))  # noqa: E731
    lps, lpt = log_softmax(sn / tau), log_softmax(tn / tau)
    kl = tau ** 2 * (np.exp(lpt) * (lpt - lps)).sum(axis=1).mean()
    assert L.kl_loss(s, t, tau).item() == pytest.approx(kl, rel=1e-12)
    logits = unit(sn) @ unit(tn).T / 0.1
    ce_rows = -np.diag(log_softmax(logits)).mean()
    ce_cols = -np.diag(log_softmax(logits.T)).mean()
    assert L.infonce_loss(s, t, 0.1).item() == pytest.approx((ce_rows + ce_cols) / 2, rel=1e-12)


def test_iusp_resamples_student_frames_linearly():
    s, t = pair("frame", 2, 3, 4, fs=9, ft=4)
    r = resample_frames(s, 4).numpy()
    # align_corners=False: output frame m samples input position (m + 0.5) * Fs / Ft - 0.5
    pos = np.clip((np.arange(4) + 0.5) * 9 / 4 - 0.5, 0, 8)
    for b in range(2):
        for d in range(3):
            assert np.allclose(r[b, :, d], np.interp(pos, np.arange(9), s.numpy()[b, :, d]))
    sn = r
    tn = t.numpy()
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    per_utt = [((unit(tn[b] @ tn[b].T) - unit(sn[b] @ sn[b].T)) ** 2).sum() / 16 for b in range(2)]
    assert L.iusp_loss(s, t).item() == pytest.approx(np.mean(per_utt), rel=1e-12)


# ------------------------------------------------------------------------------------------
# make_loss / list_losses
# ------------------------------------------------------------------------------------------

def test_list_losses_names_every_loss():
    names = L.list_losses()
    assert list(names) == ["cosine", "mse", "l1", "kl", "infonce", "rkd-dist", "rkd-angle",
                           "pairwise-cosine", "sp", "iusp"]
    assert all(isinstance(v, str) and v for v in names.values())
    for name in names:
        assert L.make_loss(name).losses[0].level in ("clip", "frame")


def test_make_loss_weighted_sum():
    s, t = pair("clip", 6, 5, 5)
    loss = L.make_loss("cosine:1, rkd-angle:2,rkd-dist")
    assert loss.level == "clip"
    assert loss.spec() == "cosine:1,rkd-angle:2,rkd-dist:1"
    want = L.cosine_loss(s, t) + 2 * L.rkd_angle_loss(s, t) + L.rkd_distance_loss(s, t)
    assert loss(s, t).item() == pytest.approx(want.item(), rel=1e-10)
    assert set(loss.components(s, t)) == {"cosine", "rkd-angle", "rkd-dist"}
    assert L.make_loss().spec() == "cosine:1"


def test_make_loss_frame_level_pools_clip_terms():
    s, t = pair("frame", 3, 4, 4, fs=6, ft=5)
    loss = L.make_loss("cosine:0.5,iusp:2")
    assert loss.level == "frame"
    want = 0.5 * L.cosine_loss(s.mean(1), t.mean(1)) + 2 * L.iusp_loss(s, t)
    assert loss(s, t).item() == pytest.approx(want.item(), rel=1e-10)


def test_make_loss_temperature_option():
    s, t = pair("clip", 6, 5, 5)
    loss = L.make_loss("infonce@tau=0.07:0.5")
    assert loss.losses[0].tau == 0.07
    assert loss.spec() == "infonce@tau=0.07:0.5"
    assert loss(s, t).item() == pytest.approx(0.5 * L.infonce_loss(s, t, 0.07).item(), rel=1e-12)


@pytest.mark.parametrize("spec,match", [
    ("cosin", "unknown loss 'cosin'.*known: cosine, mse, l1, kl, infonce, rkd-dist"),
    ("cosine:abc", "weight must be a finite number > 0"),
    ("cosine:-1", "weight"),
    ("cosine:0", "weight"),
    ("cosine:nan", "weight"),
    ("cosine:inf", "weight"),
    ("cosine,,mse", "empty item"),
    ("", "non-empty"),
    ("cosine,cosine:2", "listed twice"),
    ("cosine@tau=2", "bad option"),
    ("kl@temp=2", "bad option"),
    ("kl@tau=-1", "tau must be"),
])
def test_make_loss_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        L.make_loss(spec)


def test_core_rejects_bad_shapes():
    from pyssondo import _core

    g = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="gt must have shape"):
        _core.rkd_distance_loss(g, np.eye(4, dtype=np.float32), True)
    with pytest.raises(ValueError, match="xs must have shape"):
        _core.rkd_angle_loss(g, g, np.zeros((2, 5), np.float32), np.zeros((3, 5), np.float32), True)
    with pytest.raises(TypeError):  # no silent float64 -> float32 cast
        _core.rkd_distance_loss(g, np.eye(3), True)
    loss, grad = _core.rkd_distance_loss(g, g, False)
    assert grad is None and math.isfinite(loss)
