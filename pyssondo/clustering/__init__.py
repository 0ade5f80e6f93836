"""Clustering teacher embeddings: what Balanced Data Sampling and continual adaptation draw on.

- :mod:`.kmeans`: :class:`KMeans`, mini-batch/Lloyd k-means on the C++ kernels (memory-mapped
  input read in blocks), with plain numpy references.
- :mod:`.labels`: cluster ids fitted once and stored next to the data
  (:func:`load_or_fit_labels` for an array, :func:`load_or_fit_clusters` for an embedding
  cache), reused while the data are unchanged.
- :mod:`.codebook`: a codebook that grows online for new-domain patterns (:func:`grow_codebook`,
  :func:`load_or_fit_codebook`).

Nothing here imports torch.
"""
from .codebook import GROW_PERCENTILE, grow_codebook, load_or_fit_codebook, nearest, \
    similarity_percentile
from .kmeans import METRICS, KMeans
from .labels import cluster_embeddings, load_or_fit_clusters, load_or_fit_labels

__all__ = ["GROW_PERCENTILE", "METRICS", "KMeans", "cluster_embeddings", "grow_codebook",
           "load_or_fit_clusters", "load_or_fit_codebook", "load_or_fit_labels", "nearest",
           "similarity_percentile"]
