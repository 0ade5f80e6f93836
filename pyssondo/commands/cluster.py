"""ssondo cluster: k-means on cached teacher embeddings for Balanced Data Sampling."""
from __future__ import annotations

import argparse

HELP = "cluster cached teacher embeddings (k-means) for balanced data sampling"
DESCRIPTION = """\
Runs k-means (C++ core) on the clip embeddings of an embedding cache folder, or on an [N, D]
.npy file, and writes the cluster ids next to them: clusters-k{K}-{metric}-s{seed}.npy (+ .json
summary, + .centers.npy) inside the cache folder, or {name}.clusters-k{K}-{metric}-s{seed}.npy
next to a .npy file. Re-running with unchanged data reuses the stored ids. Prints the cluster
sizes and how evenly the clusters are drawn without (alpha 0) and with balanced sampling
(alpha 1): the entropy of the expected draws per cluster divided by log K (1 = perfectly even).

examples:
  ssondo cluster runs/cache/audio-3f2a9c1e -k 50     (a root holding one cache, or root/<key>/)
  ssondo cluster embeddings.npy -k 50 --metric euclidean --plot clusters.png
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", metavar="CACHE_DIR_OR_NPY",
                   help="embedding cache folder, or a .npy file of embeddings [N, D]")
    p.add_argument("-k", type=int, default=50, help="number of clusters (default: 50)")
    p.add_argument("--metric", choices=["cosine", "euclidean"], default="cosine",
                   help="k-means metric (default: cosine)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--plot", metavar="PNG", default=None,
                   help="write a bar plot of the cluster sizes (needs matplotlib)")
    p.add_argument("--force", action="store_true", help="recompute even if stored ids match")
    p.add_argument("--threads", type=int, default=0,
                   help="C++ core threads (default: all cores)")


def _compact_sizes(sizes) -> str:
    s = sorted((int(v) for v in sizes), reverse=True)
    if len(s) <= 20:
        return " ".join(map(str, s))
    return " ".join(map(str, s[:10])) + " ... " + " ".join(map(str, s[-5:]))


def _plot(sizes, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    s = np.sort(np.asarray(sizes))[::-1]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.12 * s.size), 3.5))
    ax.bar(np.arange(s.size), s, width=0.9, color="tab:blue")
    ax.axhline(s.mean(), color="tab:red", lw=1, ls="--", label=f"mean {s.mean():.0f}")
    ax.set_xlabel("cluster (sorted by size)")
    ax.set_ylabel("segments")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    import pyssondo
    from pyssondo.clustering.labels import cache_files_hash, cluster_file, load_or_fit_labels
    from pyssondo.sampling import effective_balance

    if args.k < 1:
        raise ValueError(f"-k must be >= 1, got {args.k}")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ValueError("--plot needs matplotlib, which is not installed: "
                             "pip install 'ssondo[plot]' (or matplotlib)") from None
    if args.threads:
        pyssondo.set_num_threads(args.threads)
    data = Path(args.data)
    if not data.exists():
        raise FileNotFoundError(f"{data}: no such cache folder or .npy file")
    if data.is_dir():
        from pyssondo.cache import EmbeddingCache

        cache = EmbeddingCache(data)  # a cache folder, or a root holding one (as distill makes)
        X = cache.embeddings(pool="mean")
        folder, stem = cache.path, "clusters"
        extra = cache_files_hash(folder)
    elif data.suffix == ".npy":
        try:
            X = np.load(data, mmap_mode="r")
        except ValueError as e:
            raise ValueError(f"{data}: not a readable .npy array ({e})") from None
        folder, stem, extra = data.parent, f"{data.stem}.clusters", ""
    else:
        raise ValueError(f"{data}: expected an embedding cache folder or a .npy file")
    if X.ndim != 2:
        raise ValueError(f"{data}: embeddings must be [N, D], got shape {X.shape}")

    labels, summary = load_or_fit_labels(
        X, folder, args.k, args.metric, args.seed, stem=stem, extra_fingerprint=extra,
        force=args.force, progress=None)
    out = cluster_file(folder, args.k, args.metric, args.seed, stem)
    how = "reused" if summary["reused"] else f"fitted in {summary['seconds']:.1f} s"
    print(f"{X.shape[0]} rows x {X.shape[1]} dims -> {args.k} clusters "
          f"({args.metric}, seed {args.seed}); {how}; inertia {summary['inertia']:.6g}")
    print(f"cluster ids: {out}")
    sizes = np.bincount(labels, minlength=args.k)
    print(f"sizes (largest first): {_compact_sizes(sizes)}")
    print(f"  min {sizes.min()}  median {int(np.median(sizes))}  max {sizes.max()}  "
          f"empty {int((sizes == 0).sum())}")
    for name, alpha in (("uniform sampling (alpha 0)", 0.0), ("balanced sampling (alpha 1)", 1.0)):
        b = effective_balance(labels, alpha)
        print(f"{name}: balance {b['entropy_ratio']:.3f} (entropy / log K), "
              f"effective clusters {b['effective_clusters']:.1f} of {b['num_clusters']}, "
              f"largest / smallest share {b['max_over_min']:.1f}")
    if args.plot:
        _plot(sizes, args.plot, f"{data.name}: {args.k} clusters ({args.metric})")
        print(f"plot: {args.plot}")
    return 0
