"""Benchmark: pyssondo.clustering.KMeans vs scikit-learn MiniBatchKMeans / KMeans, faiss.Kmeans.

Data: N points in D dims drawn from a mixture of G isotropic Gaussians (centres ~ N(0, 1),
noise sigma 1), float32. For each K, every method runs once in this process at the same
thread count, and the final inertia (sum of squared Euclidean distances to the nearest centre)
is computed the same way for all, on the full data, from the returned centres (float32 BLAS
for the argmin, then the exact float64 distance to the chosen centre).

- ours: KMeans(k, metric="euclidean") with its defaults (timed: fit, which includes labels_).
- sklearn MiniBatchKMeans with the research code's settings: batch 10000, n_init 10,
  max_iter 100 (timed: fit, which includes labels_).
- sklearn KMeans (lloyd, n_init=1) (timed: fit).
- faiss.Kmeans(niter=25) defaults (256 points per centroid); timed: train, and train + search
  (labels for all rows, the work the others' fit includes).

usage:
  python bench/kmeans.py                      # full size: N=200000, D=768, K=50 and 256
  python bench/kmeans.py --scale 0.1          # N scaled by 0.1 (quick check)
  python bench/kmeans.py --ks 256 --skip sklearn-minibatch sklearn-kmeans --repeat 2
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def make_data(n: int, d: int, components: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((components, d), dtype=np.float32)
    X = rng.standard_normal((n, d), dtype=np.float32)
    X += means[rng.integers(0, components, n)]
    return X


def inertia(X: np.ndarray, C: np.ndarray, block: int = 20000) -> float:
    """Sum over rows of the squared Euclidean distance to the nearest centre (float64)."""
    C = np.ascontiguousarray(C, dtype=np.float32)
    c2 = (C.astype(np.float64) ** 2).sum(1)
    total = 0.0
    for i0 in range(0, X.shape[0], block):
        xb = X[i0:i0 + block]
        lab = np.argmin(c2[None, :] - 2.0 * (xb @ C.T), axis=1)
        diff = xb.astype(np.float64) - C[lab].astype(np.float64)
        total += float(np.einsum("ij,ij->", diff, diff))
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--components", type=int, default=500)
    ap.add_argument("--ks", type=int, nargs="+", default=[50, 256])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply N by this (quick runs)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per method; the best time is reported (the machine may be shared)")
    ap.add_argument("--skip", nargs="*", default=[],
                    choices=["sklearn-minibatch", "sklearn-kmeans", "faiss"])
    args = ap.parse_args()

    import pyssondo
    from pyssondo.clustering import KMeans
    from threadpoolctl import threadpool_limits

    pyssondo.set_num_threads(args.threads)
    n = max(1000, int(args.n * args.scale))
    t0 = time.perf_counter()
    X = make_data(n, args.d, args.components, args.seed)
    print(f"data: N={n} D={args.d} mixture of {args.components} Gaussians, float32; best of "
          f"{args.repeat} run(s) per method "
          f"({time.perf_counter() - t0:.1f} s to generate); threads: {args.threads} for every "
          f"method (pyssondo core, BLAS/OpenMP via threadpoolctl, faiss omp)")

    for k in args.ks:
        print(f"\n== K = {k}")
        rows = []  # (name, seconds, inertia)

        def run(name, fn):
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                C = fn()
                times.append(time.perf_counter() - t)
            dt = min(times)
            rows.append((name, dt, inertia(X, C)))
            print(f"  {name:<30s} {dt:8.2f} s  inertia {rows[-1][2]:.6e}", flush=True)

        with threadpool_limits(args.threads):
            run("ours", lambda: KMeans(k, metric="euclidean", seed=args.seed).fit(X).cluster_centers_)
            if "faiss" not in args.skip:
                import faiss

                faiss.omp_set_num_threads(args.threads)

                def faiss_fit(search: bool):
                    km = faiss.Kmeans(args.d, k, niter=25, seed=args.seed + 1)
                    km.train(X)
                    if search:
                        km.index.search(X, 1)
                    return km.centroids

                run("faiss (train)", lambda: faiss_fit(False))
                run("faiss (train + labels)", lambda: faiss_fit(True))
            if "sklearn-minibatch" not in args.skip:
                from sklearn.cluster import MiniBatchKMeans

                run("sklearn MiniBatchKMeans", lambda: MiniBatchKMeans(
                    k, batch_size=10000, n_init=10, max_iter=100,
                    random_state=args.seed).fit(X).cluster_centers_)
            if "sklearn-kmeans" not in args.skip:
                from sklearn.cluster import KMeans as SkKMeans

                run("sklearn KMeans (lloyd)", lambda: SkKMeans(
                    k, algorithm="lloyd", n_init=1, random_state=args.seed).fit(X).cluster_centers_)

        ours_t, ours_i = rows[0][1], rows[0][2]
        print("  ratios vs ours (time = theirs / ours: > 1 means ours is faster; "
              "inertia = ours / theirs: <= 1.01 is the target):")
        for name, dt, inert in rows[1:]:
            print(f"    {name:<30s} speed-up {dt / ours_t:7.2f}x   inertia ratio {ours_i / inert:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
