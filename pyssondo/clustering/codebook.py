"""A clustered codebook that grows online for continual adaptation (SONAR).

The old run's k-means centroids (the run's metric, :func:`load_or_fit_codebook`) describe the
patterns the student was distilled on. A new domain brings embeddings that are near some of
them and far from all of them; :func:`grow_codebook` keeps the old centroids fixed and adds new
ones for the far patterns, by this rule (similarity = cosine, deterministic for a seed):

1. A new embedding is *novel* when its similarity to every old centroid is below
   ``threshold``.
2. The novel embeddings are visited in a random order drawn from ``seed``. Each one joins the
   most similar grown cluster when that similarity is at least ``threshold`` (the cluster's
   centroid becomes the normalised mean of its unit-length members), and otherwise starts a new
   cluster with itself as centroid (leader clustering).
3. Every embedding, old or new, is then labelled with its most similar centroid of the grown
   codebook (:func:`nearest`), so old and new segments are balanced over one codebook.

The default threshold is data-driven (:func:`similarity_percentile`): the 5th percentile of the
old embeddings' similarity to their own centroid, i.e. a new embedding starts a cluster when it
is farther from every old centroid than 95 % of the old data is from its own.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple, Union

import numpy as np

from ..errors import ParameterError
from .kmeans import assign_pass
from .labels import cluster_file, load_or_fit_clusters

GROW_PERCENTILE = 5.0  # default threshold: this percentile of the old within-cluster similarity


def _unit(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    return X / np.maximum(np.linalg.norm(X, axis=-1, keepdims=True), 1e-12)


def nearest(X, centers: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Most similar centroid of each row of X [N, D] (float16/32 array or memmap, read in
    blocks by the C++ kernel): (labels int32 [N], cosine similarity float32 [N])."""
    res = assign_pass(X, centers, "cosine")
    return res.labels, (1.0 - res.dist).astype(np.float32)


def similarity_percentile(X, centers: np.ndarray, percentile: float = GROW_PERCENTILE) -> float:
    """The ``percentile`` (0-100) of the rows' cosine similarity to their nearest centroid."""
    if not 0.0 <= float(percentile) <= 100.0:
        raise ParameterError(f"percentile must be in [0, 100], got {percentile}")
    return float(np.percentile(nearest(X, centers)[1], float(percentile)))


def grow_codebook(centers: np.ndarray, X, threshold: float, seed: int = 0) -> np.ndarray:
    """The old centroids followed by the grown ones, float32 [K + M, D], unit length.

    Args:
        centers: the old centroids [K, D] (any length; compared by cosine), kept as they are.
        X: the new domain's embeddings [N, D].
        threshold: cosine similarity in [-1, 1]; a row less similar than this to every
            centroid starts a new cluster (the module docstring states the whole rule).
        seed: order in which the novel rows are visited.
    """
    if not -1.0 <= float(threshold) <= 1.0:
        raise ParameterError(f"threshold must be a cosine similarity in [-1, 1], got {threshold}")
    old = _unit(centers).astype(np.float32)
    _, best = nearest(X, old)
    novel = np.flatnonzero(best < threshold)
    order = novel[np.random.default_rng(seed).permutation(novel.size)]
    sums = np.zeros((0, old.shape[1]), dtype=np.float64)  # member sums of the grown clusters
    grown = np.zeros((0, old.shape[1]), dtype=np.float64)  # their unit centroids
    for i in order.tolist():
        x = _unit(X[i])
        sims = grown @ x
        j = int(np.argmax(sims)) if sims.size else -1
        if j >= 0 and sims[j] >= threshold:
            sums[j] += x
            grown[j] = _unit(sums[j])
        else:
            sums = np.vstack([sums, x])
            grown = np.vstack([grown, x])
    return np.concatenate([old, grown.astype(np.float32)])


def load_or_fit_codebook(cache_dir: Union[str, "os.PathLike[str]"], k: int,
                         metric: str = "cosine", seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """The k-means of an embedding cache with the run's ``metric``, as distill fits and stores
    it: (labels int32 [N], centroids float32 [k, D]) (:func:`~.labels.load_or_fit_clusters`;
    reused while the cache is unchanged)."""
    labels = load_or_fit_clusters(cache_dir, k=k, metric=metric, seed=seed)
    path = cluster_file(Path(cache_dir), k, metric, seed).with_suffix(".centers.npy")
    if not path.is_file():  # ids stored without their centroids: fit again
        labels = load_or_fit_clusters(cache_dir, k=k, metric=metric, seed=seed, force=True)
    return labels, np.load(path)
