"""k-means: C++ kernels against float64 numpy references, and invariants of KMeans."""
from __future__ import annotations

import numpy as np
import pytest

from pyssondo import _core
from pyssondo.clustering.kmeans import KMeans, assign_reference, lloyd_step_reference


def mixture(n=600, d=24, groups=12, seed=0, spread=3.0):
    rng = np.random.default_rng(seed)
    means = spread * rng.standard_normal((groups, d))
    return (means[rng.integers(0, groups, n)] + rng.standard_normal((n, d))).astype(np.float32)


def check_assignment(X, C, metric, labels, dist):
    """labels equal the brute-force argmin, except on near ties (within float32 rounding)."""
    ref_lab, ref_dist = assign_reference(X, C, metric)
    _, all_dist = assign_reference(np.repeat(X, 1, 0), C, metric)
    Xd = np.asarray(X, dtype=np.float64)
    Cd = np.asarray(C, dtype=np.float64)
    if metric == "cosine":
        Xd = Xd / np.linalg.norm(Xd, axis=1, keepdims=True)
        Cd = Cd / np.linalg.norm(Cd, axis=1, keepdims=True)
        D = 1 - Xd @ Cd.T
    else:
        D = ((Xd[:, None] - Cd[None]) ** 2).sum(-1)
    scale = 1.0 if metric == "cosine" else float(np.abs(Xd).max() ** 2 * Xd.shape[1])
    picked = D[np.arange(len(X)), labels]
    assert np.all(picked - ref_dist <= 1e-5 * scale)
    assert np.mean(labels == ref_lab) > 0.99
    np.testing.assert_allclose(dist, ref_dist, atol=1e-5 * scale, rtol=1e-4)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("n,d,k", [(1, 1, 1), (7, 3, 5), (97, 17, 19), (300, 260, 33)])
def test_assign_matches_numpy(metric, n, d, k):
    rng = np.random.default_rng(n + d + k)
    X = rng.standard_normal((n, d)).astype(np.float32)
    C = rng.standard_normal((k, d)).astype(np.float32)
    labels = np.empty(n, np.int32)
    dist = np.empty(n, np.float32)
    sums = np.zeros((k, d))
    counts = np.zeros(k, np.int64)
    _core.kmeans_assign(X, C, metric, labels, dist, sums, counts)
    check_assignment(X, C, metric, labels, dist)
    rows = X.astype(np.float64)
    if metric == "cosine":
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    ref_sums = np.zeros((k, d))
    np.add.at(ref_sums, labels, rows)
    np.testing.assert_allclose(sums, ref_sums, atol=1e-5)
    np.testing.assert_array_equal(counts, np.bincount(labels, minlength=k))


def test_float16_path_equals_float32_path():
    rng = np.random.default_rng(1)
    X16 = rng.standard_normal((257, 40)).astype(np.float16)  # fp16-representable data
    X16[0, 0] = np.float16(6e-8)  # a subnormal half
    C = rng.standard_normal((9, 40)).astype(np.float32)
    for metric in ("euclidean", "cosine"):
        a = np.empty(257, np.int32), np.empty(257, np.float32)
        b = np.empty(257, np.int32), np.empty(257, np.float32)
        _core.kmeans_assign(X16.view(np.uint16), C, metric, *a)
        _core.kmeans_assign(X16.astype(np.float32), C, metric, *b)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    km16 = KMeans(5, metric="cosine", seed=3).fit(X16)
    km32 = KMeans(5, metric="cosine", seed=3).fit(X16.astype(np.float32))
    np.testing.assert_array_equal(km16.labels_, km32.labels_)
    np.testing.assert_array_equal(km16.cluster_centers_, km32.cluster_centers_)


@pytest.mark.parametrize("d", [8, 61])  # whole vectors of 8; 7 blocks and a 5-value tail
def test_every_finite_half_converts_exactly(d):
    bits = np.arange(1 << 16, dtype=np.uint16)
    finite = bits[np.isfinite(bits.view(np.float16))]  # +-0, subnormals, normals
    x = np.resize(finite, (-(-finite.size // d)) * d).reshape(-1, d)
    got = _core.kmeans_prepare(x, "euclidean")
    want = x.view(np.float16).astype(np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_predict_matches_numpy_and_fit_finds_groups(metric):
    X = mixture()
    km = KMeans(12, metric=metric, seed=0).fit(X)
    check_assignment(X, km.cluster_centers_, metric, km.predict(X), assign_reference(
        X, km.cluster_centers_, metric)[1].astype(np.float32))
    np.testing.assert_array_equal(km.labels_, km.predict(X))
    _, ref_dist = assign_reference(X, km.cluster_centers_, metric)
    assert km.inertia_ == pytest.approx(ref_dist.sum(), rel=1e-4)
    if metric == "cosine":
        np.testing.assert_allclose(np.linalg.norm(km.cluster_centers_, axis=1), 1, atol=1e-6)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_objective_never_rises_and_lloyd_step_matches_reference(metric):
    X = mixture(n=500, groups=30, spread=1.0, seed=4)
    km = KMeans(10, metric=metric, seed=1, init="random", minibatch_epochs=0, tol=0,
                max_iter=30).fit(X)
    h = np.asarray(km.history_)
    assert len(h) >= 3
    assert np.all(np.diff(h) <= 1e-6 * h[0]), h
    # One more Lloyd step of our kernels equals the float64 reference step.
    C = km.cluster_centers_
    ref = lloyd_step_reference(X, C, metric)
    w = np.zeros(10)
    sums = np.zeros(C.shape)
    counts = np.zeros(10, np.int64)
    C2 = C.copy()
    _core.kmeans_assign(X, C2, metric, None, None, sums, counts)
    _core.kmeans_update(C2, w, sums, counts, metric, True)
    np.testing.assert_allclose(C2, ref, atol=1e-5)


def test_same_seed_same_result_and_other_seed_differs():
    X = mixture(n=2000, d=16, groups=40, spread=1.0)
    kw = dict(metric="euclidean", sample_per_cluster=50)  # sample + refinement path
    a = KMeans(20, seed=5, **kw).fit(X)
    b = KMeans(20, seed=5, **kw).fit(X)
    c = KMeans(20, seed=6, **kw).fit(X)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    assert not np.array_equal(a.cluster_centers_, c.cluster_centers_)


def test_quality_close_to_sklearn():
    from sklearn.cluster import KMeans as SkKMeans
    from threadpoolctl import threadpool_limits

    X = mixture(n=3000, d=32, groups=60, spread=1.0, seed=2)
    ours = KMeans(15, metric="euclidean", seed=0).fit(X).inertia_
    with threadpool_limits(1):  # sklearn's OpenMP threads spin badly on a busy machine
        ref = SkKMeans(15, n_init=1, random_state=0).fit(X).inertia_
    assert ours <= 1.02 * ref


def test_empty_clusters_are_reseeded():
    X = mixture(n=200, d=5, groups=4, spread=10.0)
    # All initial centres far away on one side: most clusters start empty.
    init = np.full((8, 5), 100.0, dtype=np.float32) + np.arange(8, dtype=np.float32)[:, None]
    km = KMeans(8, metric="euclidean", init=init, minibatch_epochs=0).fit(X)
    assert np.bincount(km.labels_, minlength=8).min() >= 1
    assert km.inertia_ < assign_reference(X, init, "euclidean")[1].sum()


def test_k_edge_cases_and_duplicates():
    X = mixture(n=50, d=4)
    with pytest.raises(ValueError, match="k = 51 clusters need at least k rows"):
        KMeans(51).fit(X)
    with pytest.raises(ValueError, match="k must be >= 1"):
        KMeans(0)
    km = KMeans(1, metric="euclidean").fit(X)
    np.testing.assert_allclose(km.cluster_centers_[0], X.mean(0), atol=1e-5)
    assert set(km.labels_.tolist()) == {0}
    # 10 distinct points, each 5 times: k = 10 recovers them exactly.
    P = np.random.default_rng(0).standard_normal((10, 6)).astype(np.float32)
    D = np.repeat(P, 5, axis=0)
    km = KMeans(10, metric="euclidean", seed=2).fit(D)
    assert km.inertia_ == pytest.approx(0.0, abs=1e-4)  # float32 rounding of |x|^2-2xc+|c|^2
    assert np.all(np.bincount(km.labels_) == 5)
    assert len({tuple(g) for g in km.labels_.reshape(10, 5)}) == 10
    assert all(len(set(g)) == 1 for g in km.labels_.reshape(10, 5).tolist())
    # k = N with duplicates: defined result, every row at distance 0.
    km = KMeans(50, metric="euclidean").fit(D)
    assert km.inertia_ == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_bad_rows_name_the_row(metric):
    X = mixture(n=300, d=8)
    for bad in (np.nan, np.inf):
        Y = X.copy()
        Y[123, 3] = bad
        with pytest.raises(ValueError, match=r"row 123 has a NaN or inf"):
            KMeans(4, metric=metric, sample_per_cluster=None).fit(Y)
        km = KMeans(4, metric=metric).fit(X)
        with pytest.raises(ValueError, match=r"row 123 has a NaN or inf"):
            km.predict(Y)
    with pytest.raises(ValueError, match="has 7 columns but the centroids have 8"):
        KMeans(4, metric=metric).fit(X).predict(X[:, :7])


def test_zero_row_with_cosine_and_row_index_in_blocks():
    X = mixture(n=1000, d=8)
    X[777] = 0
    with pytest.raises(ValueError, match=r"row 777 is all zeros; the cosine metric"):
        KMeans(4, metric="cosine", block_rows=100).fit(X)
    KMeans(4, metric="euclidean").fit(X)  # fine for Euclidean


def test_memmap_input(tmp_path):
    X = mixture(n=1500, d=12)
    path = tmp_path / "x.npy"
    np.save(path, X.astype(np.float16))
    mm = np.load(path, mmap_mode="r")
    a = KMeans(6, seed=1, block_rows=128).fit(mm)
    b = KMeans(6, seed=1).fit(np.asarray(mm))
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.predict(mm), b.labels_)


def test_partial_fit_moves_centroids_toward_new_data():
    X = mixture(n=400, d=8, groups=4, spread=5.0)
    km = KMeans(4, metric="euclidean", batch_size=64).fit(X)
    before = km.cluster_centers_.copy()
    shift = np.zeros(8, np.float32)
    shift[0] = 3.0
    new = X + shift
    km.partial_fit(new)
    lab = km.predict(new)
    for j in range(4):
        target = new[lab == j].mean(0)
        assert np.linalg.norm(km.cluster_centers_[j] - target) < np.linalg.norm(before[j] - target)
    # Unfitted model: the first partial_fit seeds the codebook.
    km2 = KMeans(4, metric="cosine", batch_size=64).partial_fit(X)
    assert km2.cluster_centers_.shape == (4, 8)
    assert km2.counts_.sum() == len(X)
