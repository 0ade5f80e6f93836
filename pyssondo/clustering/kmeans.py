"""k-means for Balanced Data Sampling: scikit-learn-like, C++ kernels, memory-mapped input.

:class:`KMeans` clusters rows of a float32/float16 array ``X [N, D]`` (an ``np.memmap`` or an
``EmbeddingCache`` array is read in row blocks and never copied whole) with the Euclidean or
the cosine metric (spherical k-means: rows and centroids unit-normalised; distance ``1 - cos``).

What ``fit`` does (all heavy loops are C++ kernels in ``csrc/kmeans.cpp``, threaded with
``pyssondo.set_num_threads``):

1. **Training sample.** ``m = min(N, sample_per_cluster * k)`` rows drawn uniformly without
   replacement (as faiss does; 128 per cluster by default, faiss uses 256: on the benchmark
   256 lowered the final inertia by only 0.05-0.15 % and doubled the time at K = 256),
   gathered in blocks into a float32 array (normalised for cosine). With ``m = N`` all rows are used and steps 2-4 are exact
   full-batch k-means.
2. **Seeding.** Greedy k-means++ (each step keeps the best of ``2 + ln k`` D^2-sampled
   candidates, rounded up to the kernel's block of 6 rows) on ``min(m, max(32 k, 1024))`` of
   those rows.
   With ``n_init > 1`` steps 2-4 run ``n_init`` times and the run with the lowest sample
   inertia is kept.
3. **Mini-batch warm start** (optional, ``minibatch_epochs``, default 0): epochs of mini-batch
   k-means over the sample in batches of ``batch_size`` (Sculley 2010, per-centroid learning
   rate ``n_batch / n_seen``, accumulated over each batch). Off by default: on the benchmark
   mixture (bench/kmeans.py) an epoch cost as much as a Lloyd iteration and did not lower the
   final inertia; greedy k-means++ seeds are good enough for Lloyd to converge in ~10 steps.
4. **Lloyd iterations** on the sample (full batch over the sample: the objective never rises)
   until the relative decrease of the inertia is ``<= tol`` or ``max_iter`` iterations.
5. **Refinement on all rows** (only when ``m < N``): ``refine_passes`` Lloyd steps over the full
   data in row blocks, then one last pass assigns every row (``labels_``, ``inertia_``).

Empty clusters are re-seeded with the rows farthest from their centroids (this never raises
the objective). Results are identical for the same seed, data and thread count.

``partial_fit`` updates an existing codebook online with mini-batch steps (or seeds one with
k-means++ on the first call), for continual adaptation.

``assign_reference`` / ``lloyd_step_reference`` are plain float64 numpy versions of the
kernels, used by the tests.
"""
from __future__ import annotations

import math
from typing import Iterator, List, Optional, Tuple, Union

import numpy as np

from ..errors import ParameterError

METRICS = ("cosine", "euclidean")
_BLOCK_BYTES = 64 << 20  # row blocks of about 64 MiB


# --------------------------------------------------------------------------------------------
# input handling


def _as_rows(X, what: str = "X") -> np.ndarray:
    """Checks that X is a 2-D float16/32/64 array (not copied; memmaps stay memmaps)."""
    if not isinstance(X, np.ndarray):
        X = np.asarray(X)
    if X.ndim != 2:
        raise ParameterError(f"{what} must be a 2-D array [N, D], got shape {X.shape}")
    if X.dtype not in (np.float16, np.float32, np.float64):
        raise ParameterError(f"{what} must be float16, float32 or float64, got {X.dtype}")
    if X.shape[1] < 1:
        raise ParameterError(f"{what} must have at least one column, got shape {X.shape}")
    return X


def _kernel_view(block: np.ndarray) -> np.ndarray:
    """A block as the core takes it: C-contiguous float32, or float16 as a uint16 view.
    Copies only this block, and only when it is float64 or not C-contiguous."""
    if block.dtype == np.float64:
        block = block.astype(np.float32)
    block = np.ascontiguousarray(block)
    return block.view(np.uint16) if block.dtype == np.float16 else block


def _block_rows(X: np.ndarray, block_rows: Optional[int]) -> int:
    if block_rows:
        return int(block_rows)
    return max(1, _BLOCK_BYTES // max(1, X.shape[1] * X.dtype.itemsize))


def _blocks(X: np.ndarray, block_rows: int) -> Iterator[Tuple[int, np.ndarray]]:
    for i0 in range(0, X.shape[0], block_rows):
        yield i0, _kernel_view(np.asarray(X[i0:i0 + block_rows]))


def _prepare(X: np.ndarray, rows: Optional[np.ndarray], metric: str,
             block_rows: int) -> np.ndarray:
    """float32 copy of X[rows] (all rows when None), validated, normalised for cosine."""
    from .. import _core

    idx = np.arange(X.shape[0], dtype=np.int64) if rows is None else rows.astype(np.int64)
    out = np.empty((idx.size, X.shape[1]), dtype=np.float32)
    for j0 in range(0, idx.size, block_rows):
        sel = idx[j0:j0 + block_rows]
        if rows is None:
            block = np.asarray(X[int(sel[0]):int(sel[-1]) + 1])
        else:
            block = np.asarray(X[sel])
        out[j0:j0 + sel.size] = _core.kmeans_prepare(_kernel_view(block), metric, sel)
    return out


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ParameterError(f"metric must be one of {METRICS}, got {metric!r}")
    return metric


# --------------------------------------------------------------------------------------------
# block-wise passes over the data


class _Pass:
    """Result of one assignment pass: labels, distances, per-cluster sums and counts, and the
    farthest rows (candidates for re-seeding empty clusters)."""

    def __init__(self, n: int, k: int, d: int, accumulate: bool, keep_labels: bool) -> None:
        self.labels = np.empty(n, dtype=np.int32) if keep_labels else None
        self.dist = np.empty(n, dtype=np.float32) if keep_labels else None
        self.sums = np.zeros((k, d), dtype=np.float64) if accumulate else None
        self.counts = np.zeros(k, dtype=np.int64)
        self.inertia = 0.0
        self.far_rows = np.empty(0, dtype=np.int64)
        self.far_dist = np.empty(0, dtype=np.float32)


def assign_pass(X: np.ndarray, centers: np.ndarray, metric: str, *, accumulate: bool = False,
                keep_labels: bool = True, block_rows: Optional[int] = None,
                progress=None) -> _Pass:
    """Assigns every row of X [N, D] to its nearest centre [k, D], one row block at a time.

    Returns a :class:`_Pass` with ``labels`` int32 [N], ``dist`` float32 [N] (squared Euclidean
    or 1 - cos), ``inertia`` (float64 sum of ``dist``), ``counts`` int64 [k], ``sums`` float64
    [k, D] when ``accumulate``, and the up-to-k farthest rows (``far_rows``, ``far_dist``).
    """
    from .. import _core

    X = _as_rows(X)
    centers = np.ascontiguousarray(centers, dtype=np.float32)
    n, d = X.shape
    k = centers.shape[0]
    if centers.ndim != 2 or centers.shape[1] != d:
        raise ParameterError(f"X has {d} columns but the centres have shape {centers.shape}")
    res = _Pass(n, k, d, accumulate, keep_labels)
    br = _block_rows(X, block_rows)
    far_rows: List[np.ndarray] = []
    far_dist: List[np.ndarray] = []
    lab_buf = np.empty(min(br, n), dtype=np.int32)
    dist_buf = np.empty(min(br, n), dtype=np.float32)
    for i0, block in _blocks(X, br):
        m = block.shape[0]
        lab = res.labels[i0:i0 + m] if keep_labels else lab_buf[:m]
        dist = res.dist[i0:i0 + m] if keep_labels else dist_buf[:m]
        _core.kmeans_assign(block, centers, metric, lab, dist, res.sums, res.counts, i0)
        res.inertia += float(dist.sum(dtype=np.float64))
        q = min(k, m)
        top = np.argpartition(dist, m - q)[m - q:]
        far_rows.append(top.astype(np.int64) + i0)
        far_dist.append(dist[top].copy())
        if progress is not None:
            progress.update(m)
    rows, dists = np.concatenate(far_rows), np.concatenate(far_dist)
    order = np.argsort(-dists, kind="stable")[:k]
    res.far_rows, res.far_dist = rows[order], dists[order]
    return res


def _reseed_empty(X: np.ndarray, centers: np.ndarray, counts: np.ndarray, far_rows: np.ndarray,
                  metric: str, block_rows: int) -> int:
    """Moves the centroids of empty clusters onto the farthest rows. Returns how many."""
    empty = np.flatnonzero(counts == 0)
    if empty.size == 0:
        return 0
    rows = np.sort(far_rows[:empty.size])
    centers[empty[:rows.size]] = _prepare(X, rows, metric, block_rows)
    return int(empty.size)


# --------------------------------------------------------------------------------------------
# the estimator


class KMeans:
    """Mini-batch + Lloyd k-means with Euclidean or cosine (spherical) metric.

    Parameters
    ----------
    k : number of clusters, >= 1 (and <= number of rows).
    metric : "cosine" (rows and centroids unit-normalised, distance 1 - cos) or "euclidean"
        (squared Euclidean distance).
    batch_size : rows per mini-batch, in the warm start and in :meth:`partial_fit` (>= 1).
    max_iter : maximum Lloyd iterations on the training sample (>= 1).
    n_init : number of seedings; the one with the lowest sample inertia is kept (>= 1).
    seed : random seed (sample, seeding); same seed, data and thread count -> same result.
    init : "k-means++", "random" (k distinct random rows), or an array [k, D] of centroids.
    tol : stop when the relative decrease of the sample inertia is <= tol (>= 0; the default
        1e-3 saves the last few slow Lloyd steps on the sample, which the refinement pass over
        all rows makes up for).
    sample_per_cluster : training-sample rows per cluster (faiss's max_points_per_centroid);
        None uses all rows (then held in memory as float32).
    minibatch_epochs : mini-batch epochs over the sample before the Lloyd iterations (>= 0).
    refine_passes : Lloyd steps over all rows after the sample phase when the sample is smaller
        than the data (>= 0).
    block_rows : rows per block read from X (default: about 64 MiB per block).
    progress : show a progress bar (None: only on a terminal).

    Attributes (after :meth:`fit`)
    ----------
    cluster_centers_ : float32 [k, D] (unit length for cosine).
    labels_ : int32 [N], inertia_ : float (sum of distances over all rows),
    n_iter_ : Lloyd iterations on the sample plus refinement passes,
    history_ : sample inertia after each Lloyd iteration (all rows when the sample is all rows),
    counts_ : float64 [k], rows seen per cluster (mini-batch weights for :meth:`partial_fit`).
    """

    def __init__(self, k: int, *, metric: str = "cosine", batch_size: int = 4096,
                 max_iter: int = 100, n_init: int = 1, seed: int = 0,
                 init: Union[str, np.ndarray] = "k-means++", tol: float = 1e-3,
                 sample_per_cluster: Optional[int] = 128, minibatch_epochs: int = 0,
                 refine_passes: int = 1, block_rows: Optional[int] = None,
                 progress: Optional[bool] = None) -> None:
        if int(k) < 1:
            raise ParameterError(f"k must be >= 1, got {k}")
        _check_metric(metric)
        for name, value, low in (("batch_size", batch_size, 1), ("max_iter", max_iter, 1),
                                 ("n_init", n_init, 1), ("minibatch_epochs", minibatch_epochs, 0),
                                 ("refine_passes", refine_passes, 0)):
            if int(value) < low:
                raise ParameterError(f"{name} must be >= {low}, got {value}")
        if not tol >= 0:
            raise ParameterError(f"tol must be >= 0, got {tol}")
        if sample_per_cluster is not None and int(sample_per_cluster) < 1:
            raise ParameterError(f"sample_per_cluster must be >= 1 or None, got {sample_per_cluster}")
        if isinstance(init, str) and init not in ("k-means++", "random"):
            raise ParameterError(f"init must be 'k-means++', 'random' or an array [k, D], got {init!r}")
        self.k = int(k)
        self.metric = metric
        self.batch_size = int(batch_size)
        self.max_iter = int(max_iter)
        self.n_init = int(n_init)
        self.seed = int(seed)
        self.init = init
        self.tol = float(tol)
        self.sample_per_cluster = sample_per_cluster
        self.minibatch_epochs = int(minibatch_epochs)
        self.refine_passes = int(refine_passes)
        self.block_rows = block_rows
        self.progress = progress
        self.cluster_centers_: Optional[np.ndarray] = None
        self.counts_: Optional[np.ndarray] = None

    # -- seeding -------------------------------------------------------------------------

    def _initial_centers(self, T: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from .. import _core

        if not isinstance(self.init, str):
            C = np.array(self.init, dtype=np.float32, copy=True)
            if C.shape != (self.k, T.shape[1]):
                raise ParameterError(f"init array must have shape {(self.k, T.shape[1])}, got {C.shape}")
            return _prepare(C, None, self.metric, C.shape[0])
        if self.init == "random":
            return T[np.sort(rng.choice(T.shape[0], self.k, replace=False))].copy()
        s = min(T.shape[0], max(32 * self.k, 1024))
        sub = np.sort(rng.choice(T.shape[0], s, replace=False)) if s < T.shape[0] else None
        S = T if sub is None else np.ascontiguousarray(T[sub])
        seed = int(rng.integers(0, 2**63 - 1))
        chosen = _core.kmeans_plusplus(S, self.k, 0, seed)
        return S[chosen].copy()

    # -- phases ----------------------------------------------------------------------------

    def _minibatch_epoch(self, T: np.ndarray, C: np.ndarray, weights: np.ndarray,
                         rng: np.random.Generator) -> None:
        """One mini-batch epoch over the rows of T in a random order (T is in memory)."""
        from .. import _core

        order = rng.permutation(T.shape[0])
        for j0 in range(0, T.shape[0], self.batch_size):
            batch = T[np.sort(order[j0:j0 + self.batch_size])]
            sums = np.zeros(C.shape, dtype=np.float64)
            counts = np.zeros(self.k, dtype=np.int64)
            _core.kmeans_assign(batch, C, self.metric, None, None, sums, counts, 0)
            _core.kmeans_update(C, weights, sums, counts, self.metric, False)

    def _lloyd(self, T: np.ndarray, C: np.ndarray, history: List[float]) -> Tuple[_Pass, bool]:
        """Lloyd iterations on the in-memory rows T from C (updated in place). Returns the
        last assignment pass and whether it converged (then the pass matches C)."""
        from .. import _core

        prev = math.inf
        zero_w = np.zeros(self.k, dtype=np.float64)
        for _ in range(self.max_iter):
            res = assign_pass(T, C, self.metric, accumulate=True, block_rows=T.shape[0])
            history.append(res.inertia)
            if prev - res.inertia <= self.tol * res.inertia:
                return res, True
            prev = res.inertia
            _core.kmeans_update(C, zero_w, res.sums, res.counts, self.metric, True)
            _reseed_empty(T, C, res.counts, res.far_rows, self.metric, T.shape[0])
        return res, False

    # -- public API ------------------------------------------------------------------------

    def fit(self, X) -> "KMeans":
        """Clusters the rows of X [N, D] (float16/float32/float64 array or memmap). Returns self."""
        from .. import _core
        from ..progress import Progress

        X = _as_rows(X)
        n, d = X.shape
        if self.k > n:
            raise ParameterError(f"k = {self.k} clusters need at least k rows, X has {n}")
        br = _block_rows(X, self.block_rows)
        rng = np.random.default_rng(self.seed)
        m = n if self.sample_per_cluster is None else min(n, int(self.sample_per_cluster) * self.k)
        rows = None if m == n else np.sort(rng.choice(n, m, replace=False))
        T = _prepare(X, rows, self.metric, br)

        best = None
        for _ in range(self.n_init):
            C = self._initial_centers(T, rng)
            weights = np.zeros(self.k, dtype=np.float64)
            for _ in range(self.minibatch_epochs):
                self._minibatch_epoch(T, C, weights, rng)
            history: List[float] = []
            res, converged = self._lloyd(T, C, history)
            score = res.inertia if converged else assign_pass(T, C, self.metric).inertia
            if best is None or score < best[0]:
                best = (score, C, res, converged, history)
        _, C, res, converged, history = best
        n_iter = len(history)

        if rows is not None or not converged:
            passes = self.refine_passes if rows is not None else 0
            zero_w = np.zeros(self.k, dtype=np.float64)
            with Progress(n * (passes + 1), desc="k-means", unit="row",
                          enabled=self.progress) as bar:
                for _ in range(passes):
                    full = assign_pass(X, C, self.metric, accumulate=True, keep_labels=False,
                                       block_rows=br, progress=bar)
                    _core.kmeans_update(C, zero_w, full.sums, full.counts, self.metric, True)
                    _reseed_empty(X, C, full.counts, full.far_rows, self.metric, br)
                    n_iter += 1
                res = assign_pass(X, C, self.metric, block_rows=br, progress=bar)
        self.cluster_centers_ = C
        self.labels_ = res.labels
        self.inertia_ = res.inertia
        self.n_iter_ = n_iter
        self.history_ = history
        self.counts_ = res.counts.astype(np.float64)
        return self

    def _check_fitted(self, X) -> np.ndarray:
        if self.cluster_centers_ is None:
            raise ParameterError("this KMeans has no centroids yet: call fit or partial_fit first")
        X = _as_rows(X)
        if X.shape[1] != self.cluster_centers_.shape[1]:
            raise ParameterError(f"X has {X.shape[1]} columns but the centroids have "
                                 f"{self.cluster_centers_.shape[1]}")
        return X

    def predict(self, X) -> np.ndarray:
        """Index of the nearest centroid of each row of X [N, D]: int32 [N]."""
        X = self._check_fitted(X)
        return assign_pass(X, self.cluster_centers_, self.metric, block_rows=self.block_rows).labels

    def partial_fit(self, X) -> "KMeans":
        """Online update of the codebook with the rows of X [N, D] in mini-batches of
        ``batch_size`` (per-centroid learning rate n_batch / n_seen, continuing the counts of
        the previous fit / partial_fit). The first call on an unfitted model seeds the codebook
        with k-means++ on (a sample of) X. Returns self; ``labels_``/``inertia_`` are not
        updated (use :meth:`predict`)."""
        from .. import _core

        X = _as_rows(X)
        br = _block_rows(X, self.block_rows)
        if self.cluster_centers_ is None:
            if self.k > X.shape[0]:
                raise ParameterError(f"k = {self.k} clusters need at least k rows, X has {X.shape[0]}")
            rng = np.random.default_rng(self.seed)
            m = X.shape[0] if self.sample_per_cluster is None else min(
                X.shape[0], int(self.sample_per_cluster) * self.k)
            rows = None if m == X.shape[0] else np.sort(rng.choice(X.shape[0], m, replace=False))
            self.cluster_centers_ = self._initial_centers(_prepare(X, rows, self.metric, br), rng)
            self.counts_ = np.zeros(self.k, dtype=np.float64)
        X = self._check_fitted(X)
        C = self.cluster_centers_
        for i0, block in _blocks(X, min(br, self.batch_size)):
            sums = np.zeros(C.shape, dtype=np.float64)
            counts = np.zeros(self.k, dtype=np.int64)
            _core.kmeans_assign(block, C, self.metric, None, None, sums, counts, i0)
            _core.kmeans_update(C, self.counts_, sums, counts, self.metric, False)
        return self


# --------------------------------------------------------------------------------------------
# plain numpy references (float64, brute force) used by the tests


def _normalise_reference(X: np.ndarray) -> np.ndarray:
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def assign_reference(X, centers, metric: str) -> Tuple[np.ndarray, np.ndarray]:
    """Brute-force nearest centre in float64: (labels int64 [N], dist float64 [N]), dist =
    squared Euclidean distance or 1 - cos."""
    X = np.asarray(X, dtype=np.float64)
    C = np.asarray(centers, dtype=np.float64)
    if _check_metric(metric) == "cosine":
        D = 1.0 - _normalise_reference(X) @ _normalise_reference(C).T
    else:
        D = ((X[:, None, :] - C[None, :, :]) ** 2).sum(-1)
    labels = D.argmin(1)
    return labels, np.maximum(D[np.arange(len(X)), labels], 0.0)


def lloyd_step_reference(X, centers, metric: str) -> np.ndarray:
    """One Lloyd step in float64: each centre becomes the mean of its rows (normalised rows and
    renormalised mean for cosine); a centre without rows is kept."""
    X = np.asarray(X, dtype=np.float64)
    if metric == "cosine":
        X = _normalise_reference(X)
    labels, _ = assign_reference(X, centers, metric)
    new = np.array(centers, dtype=np.float64, copy=True)
    for j in range(new.shape[0]):
        if np.any(labels == j):
            new[j] = X[labels == j].mean(0)
    return _normalise_reference(new) if metric == "cosine" else new
