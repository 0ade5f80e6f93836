"""Cluster ids of embeddings, fitted with k-means and stored next to the data.

- :func:`cluster_embeddings`: k-means (:class:`~pyssondo.clustering.kmeans.KMeans`) on an
  embedding array -> cluster ids, sizes, centres and the balance of sampling over them.
- :func:`load_or_fit_labels`: the same, stored in a folder (``{stem}-k{K}-{metric}-s{seed}.npy``,
  ``.centers.npy`` and a ``.json`` summary, written atomically) and reused while the data's
  fingerprint (:func:`data_fingerprint`) is unchanged.
- :func:`load_or_fit_clusters`: the ids of an embedding cache's clip embeddings, stored inside
  the cache folder (what distill's Balanced Data Sampling uses).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import numpy as np

from ..sampling import effective_balance
from .kmeans import KMeans


def cluster_embeddings(X, k: int = 50, metric: str = "cosine", seed: int = 0,
                       **kmeans_kw: Any) -> Tuple[np.ndarray, Dict[str, Any]]:
    """k-means on the rows of X [N, D] (float16/32 array or memmap, read in blocks).

    Returns ``(labels int32 [N], info)``; ``info`` holds k, metric, seed, n, d, inertia,
    n_iter, seconds, ``sizes`` (list, per cluster id), ``centers`` (float32 [k, D]) and the
    balance (entropy ratio) of uniform (alpha 0) and BDS (alpha 1) sampling.
    """
    t0 = time.perf_counter()
    km = KMeans(k, metric=metric, seed=seed, **kmeans_kw).fit(X)
    labels = km.labels_.astype(np.int32, copy=False)
    sizes = np.bincount(labels, minlength=k)
    info = {
        "k": int(k), "metric": metric, "seed": int(seed),
        "n": int(X.shape[0]), "d": int(X.shape[1]),
        "inertia": float(km.inertia_), "n_iter": int(km.n_iter_),
        "seconds": round(time.perf_counter() - t0, 3),
        "sizes": sizes.tolist(),
        "balance_uniform": effective_balance(labels, 0.0)["entropy_ratio"],
        "balance_bds": effective_balance(labels, 1.0)["entropy_ratio"],
        "centers": km.cluster_centers_,
    }
    return labels, info


def data_fingerprint(X, extra: str = "") -> Dict[str, Any]:
    """Identifies an embedding array: shape, dtype and a sha256 of 64 evenly spaced rows plus
    the last one (read without loading the array), combined with ``extra`` (e.g. a hash of the
    cache manifest)."""
    n = int(X.shape[0])
    rows = np.unique(np.concatenate([np.linspace(0, n - 1, 64).astype(np.int64), [n - 1]]))
    h = hashlib.sha256()
    for r in rows.tolist():
        h.update(np.ascontiguousarray(X[r]).tobytes())
    h.update(extra.encode())
    return {"n": n, "d": int(X.shape[1]), "dtype": str(X.dtype), "sha256": h.hexdigest()}


def cluster_file(folder: Union[str, os.PathLike], k: int, metric: str, seed: int,
                 stem: str = "clusters") -> Path:
    """Where the cluster ids live: ``folder/{stem}-k{k}-{metric}-s{seed}.npy``."""
    return Path(folder) / f"{stem}-k{int(k)}-{metric}-s{int(seed)}.npy"


def load_or_fit_labels(X, folder: Union[str, os.PathLike], k: int = 50, metric: str = "cosine",
                       seed: int = 0, *, stem: str = "clusters", extra_fingerprint: str = "",
                       force: bool = False, **kmeans_kw: Any) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Cluster ids of X stored in ``folder``: reused when the stored fingerprint matches X (and
    ``extra_fingerprint``), else recomputed with :func:`cluster_embeddings` and written
    atomically (ids ``.npy``, centres ``.centers.npy``, then the ``.json`` summary, which marks
    the set complete). Returns ``(labels int32 [N], summary)``; ``summary["reused"]`` says
    which happened."""
    from ..atomic import atomic_open, atomic_write_text

    path = cluster_file(folder, k, metric, seed, stem)
    meta_path = path.with_suffix(".json")
    fp = data_fingerprint(X, extra_fingerprint)
    if not force and meta_path.exists() and path.exists():
        try:
            summary = json.loads(meta_path.read_text())
            labels = np.load(path)
        except (OSError, ValueError):
            summary, labels = {}, None
        if (summary.get("fingerprint") == fp and labels is not None
                and labels.shape == (fp["n"],) and labels.dtype == np.int32):
            summary["reused"] = True
            return labels, summary
    labels, info = cluster_embeddings(X, k, metric, seed, **kmeans_kw)
    centers = info.pop("centers")
    with atomic_open(path) as f:
        np.save(f, labels)
    with atomic_open(path.with_suffix(".centers.npy")) as f:
        np.save(f, centers)
    summary = {**info, "fingerprint": fp, "labels_file": path.name}
    atomic_write_text(meta_path, json.dumps(summary, indent=1) + "\n")
    summary["reused"] = False
    return labels, summary


def cache_files_hash(cache_dir: Path) -> str:
    """sha256 of the cache's metadata files (meta.json, manifest*), when present."""
    h = hashlib.sha256()
    for p in sorted(cache_dir.iterdir()):
        if p.is_file() and (p.name == "meta.json" or p.name.startswith("manifest")):
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def load_or_fit_clusters(cache_dir: Union[str, os.PathLike], k: int = 50,
                         metric: str = "cosine", seed: int = 0, *, force: bool = False,
                         **kmeans_kw: Any) -> np.ndarray:
    """Cluster ids (int32 [N], one per cache row) of an embedding cache's clip embeddings
    (``EmbeddingCache(cache_dir).embeddings(pool="mean")``), stored as
    ``clusters-k{K}-{metric}-s{seed}.npy`` (+ ``.json``) inside the cache folder and reused
    while the cache is unchanged."""
    from ..cache import EmbeddingCache

    cache_dir = Path(cache_dir)
    X = EmbeddingCache(cache_dir).embeddings(pool="mean")
    labels, _ = load_or_fit_labels(X, cache_dir, k, metric, seed, force=force,
                                   extra_fingerprint=cache_files_hash(cache_dir), **kmeans_kw)
    return labels
