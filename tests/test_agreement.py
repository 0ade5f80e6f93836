"""Label-free student/teacher measures against brute-force numpy, plus their invariances."""
import numpy as np
import pytest

from pyssondo.evaluation.agreement import (MEASURES, agreement, centered_cosine, knn_agreement,
                                           knn_indices, linear_cka, mean_cosine)


def brute_knn_sets(x, k):
    """Each row's k nearest other rows by cosine, as Python sets (full N x N in float64)."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = u @ u.T
    np.fill_diagonal(sims, -np.inf)
    return [set(np.argsort(-row)[:k].tolist()) for row in sims]


def brute_cka(x, y):
    """Linear CKA as HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) on N x N Gram matrices."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return np.sum(k * l) / np.sqrt(np.sum(k * k) * np.sum(l * l))


def random_orthogonal(d, rng):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_knn_indices_match_brute_force_across_blocks(rng):
    x = rng.standard_normal((53, 7))
    for block in (1, 8, 1024):
        got = knn_indices(x, 5, block=block)
        assert got.shape == (53, 5)
        assert [set(r.tolist()) for r in got] == brute_knn_sets(x, 5)
        assert not (got == np.arange(53)[:, None]).any()


def test_knn_agreement_matches_brute_force(rng):
    t = rng.standard_normal((60, 12))
    s = t[:, :5] + 0.7 * rng.standard_normal((60, 5))  # a partly faithful student, other width
    k = 6
    ts, ss = brute_knn_sets(t, k), brute_knn_sets(s, k)
    want = np.mean([len(a & b) / k for a, b in zip(ts, ss)])
    assert 0.05 < want < 0.95  # neither trivial end, so the comparison means something
    assert knn_agreement(s, t, k, block=7) == pytest.approx(want, abs=1e-12)


def test_knn_agreement_is_one_for_identical_and_scaled_embeddings(rng):
    t = rng.standard_normal((40, 9))
    assert knn_agreement(t, t, 5) == 1.0
    assert knn_agreement(3.0 * t @ random_orthogonal(9, rng), t, 5) == 1.0


def test_knn_agreement_of_an_unrelated_student_is_near_chance(rng):
    t, s = rng.standard_normal((400, 16)), rng.standard_normal((400, 16))
    assert knn_agreement(s, t, 10) < 0.08  # chance: 10 / 399 = 0.025


def test_knn_agreement_clips_k_for_small_n(rng):
    t = rng.standard_normal((4, 3))
    assert knn_agreement(t, t, 10) == 1.0  # k becomes 3 = N - 1: every other row
    assert knn_agreement(-t, t, 10) == 1.0


def test_linear_cka_matches_gram_formula_and_invariances(rng):
    x = rng.standard_normal((50, 8))
    y = x @ rng.standard_normal((8, 20)) + 0.5 * rng.standard_normal((50, 20))
    want = brute_cka(x, y)
    assert 0.1 < want < 0.99
    assert linear_cka(x, y) == pytest.approx(want, rel=1e-10)
    assert linear_cka(x @ random_orthogonal(8, rng), y) == pytest.approx(want, rel=1e-10)
    assert linear_cka(x, 7.5 * y @ random_orthogonal(20, rng)) == pytest.approx(want, rel=1e-10)
    assert linear_cka(x + 3.0, y - 1.0) == pytest.approx(want, rel=1e-10)  # centred inside
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(np.ones((50, 8)), y) == 0.0


def test_mean_and_centered_cosine_match_formula(rng):
    t = rng.standard_normal((30, 6)) + 4.0
    s = t + rng.standard_normal((30, 6))
    mean = rng.standard_normal(6) + 4.0
    cos = lambda a, b: np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert mean_cosine(s, t) == pytest.approx(cos(s, t).mean(), rel=1e-6)
    assert centered_cosine(s, t, mean) == pytest.approx(cos(s - mean, t - mean).mean(), rel=1e-6)


def test_constant_student_has_high_raw_but_no_centered_cosine(rng):
    # Anisotropic teacher: one shared direction dominates, as in aisfx (cosine ~0.92 to mean).
    direction = np.zeros(32)
    direction[0] = 15.0
    t = direction + rng.standard_normal((500, 32))
    mean = t.mean(axis=0)
    constant = np.tile(mean, (500, 1))
    assert mean_cosine(constant, t) > 0.9
    # The constant minus the mean is the zero vector: it shares no direction with anything.
    assert abs(centered_cosine(constant + 1e-3 * rng.standard_normal((500, 32)), t, mean)) < 0.05
    assert centered_cosine(t, t, mean) == pytest.approx(1.0)


def test_agreement_returns_the_fixed_keys(rng):
    t = rng.standard_normal((80, 10))
    backbone = t @ rng.standard_normal((10, 4))
    got = agreement(backbone, t, t, t.mean(0), k=5)
    assert tuple(got) == MEASURES
    assert all(isinstance(v, float) for v in got.values())
    assert got["val_cos"] == pytest.approx(1.0) and got["val_cos_centered"] == pytest.approx(1.0)
    assert got["knn_agree_projected"] == 1.0 and got["cka_projected"] == pytest.approx(1.0)
    assert got["knn_agree_backbone"] < 1.0 and got["cka_backbone"] < 1.0
    # The shared teacher neighbours give what the separate functions give.
    assert got["knn_agree_backbone"] == knn_agreement(backbone, t, 5)
    assert got["cka_backbone"] == pytest.approx(linear_cka(backbone, t), rel=1e-12)


def test_bad_shapes_are_refused(rng):
    with pytest.raises(ValueError, match="same N"):
        knn_agreement(rng.standard_normal((5, 3)), rng.standard_normal((6, 3)))
    with pytest.raises(ValueError, match="N, dim"):
        linear_cka(np.zeros(5), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="k=0"):
        knn_indices(rng.standard_normal((5, 3)), 0)
