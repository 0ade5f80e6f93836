"""Fused (C++ core on Gram matrices) vs plain-torch reference relational losses, CPU.

For each loss and size: forward + backward wall time (best of a few runs) and peak memory,
both paths in this one process at the same thread count (torch's and the core's), and the
ratios reference / fused: of wall time ("speed-up"), of process CPU time ("cpu-time": less
sensitive to other load on the machine), and of peak memory.

Peak memory is the rise of the process's resident-set high-water mark (Linux: VmHWM after
resetting it through /proc/self/clear_refs) over the resident set before the call, so it
counts every allocation: torch tensors, the C++ kernels' buffers, numpy arrays. So that freed
blocks leave the resident set instead of being silently reused, glibc is told to serve every
allocation of 64 KiB or more with its own mapping (mallopt M_MMAP_THRESHOLD, for both paths);
smaller allocations can still hide in reused heap memory, so values under ~1 MB are floors and
their ratio is not shown. A reference that would need more than half of the available memory
(its B x B x D tensors) is skipped with the amount it would need.

Usage:
    python bench/losses.py [--threads 2] [--sizes 64,256,1024] [--dims 768,3840]
                           [--losses rkd-angle,rkd-dist,pairwise-cosine,sp,iusp]
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import os
import time

import torch

import pyssondo
from pyssondo import fused_losses as fl
from pyssondo import losses as L

# name -> (reference, fused, level, bytes of the reference's largest live tensors / itemsize)
LOSSES = {
    # B x B x D tensors: diff, its norm-clamped copy and their gradients; measured peak is
    # ~5.7 of them (B = 256, D = 768: 1.15 GB)
    "rkd-angle": (L.rkd_angle_loss, fl.rkd_angle_fused, "clip", lambda b, d: 6 * b * b * d),
    "rkd-dist": (L.rkd_distance_loss, fl.rkd_distance_fused, "clip", lambda b, d: 8 * b * b),
    "pairwise-cosine": (L.pairwise_cosine_loss, fl.pairwise_cosine_fused, "clip",
                        lambda b, d: 8 * b * b),
    "sp": (L.similarity_preserving_loss, fl.similarity_preserving_fused, "clip",
           lambda b, d: 8 * b * b),
    # IUSP: B utterances of FRAMES teacher frames (student: 2 x FRAMES, resampled)
    "iusp": (L.iusp_loss, fl.iusp_fused, "frame", lambda b, d: 8 * b * FRAMES * FRAMES),
}
FRAMES = 32


def available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def map_large_allocations(threshold: int = 1 << 16) -> bool:
    """glibc: serve allocations >= threshold bytes with mmap (returned to the OS on free)."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, threshold))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def timed_peak(fn):
    """(wall s, process CPU s, rise of the resident high-water mark in bytes) of one fn()
    call; the peak is NaN where /proc is missing."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        before = _status_kb("VmRSS")
    except OSError:
        before = None
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if before is None:
        return wall, cpu, float("nan")
    return wall, cpu, max(0, _status_kb("VmHWM") - before) * 1024.0


def fwd_bwd(fn, s, t):
    s.grad = None
    fn(s, t).backward()


def best_time(fn, s, t, budget_s=1.0, max_runs=10):
    """(wall s, process CPU s) of the fastest of up to max_runs runs after a warm-up."""
    fwd_bwd(fn, s, t)  # warm-up
    times = []
    start = time.perf_counter()
    while len(times) < max_runs and (not times or time.perf_counter() - start < budget_s):
        t0, c0 = time.perf_counter(), time.process_time()
        fwd_bwd(fn, s, t)
        times.append((time.perf_counter() - t0, time.process_time() - c0))
    return min(times)


def make_pair(level, b, d):
    g = torch.Generator().manual_seed(0)
    if level == "clip":
        return torch.randn(b, d, generator=g).requires_grad_(True), torch.randn(b, d, generator=g)
    return (torch.randn(b, 2 * FRAMES, d, generator=g).requires_grad_(True),
            torch.randn(b, FRAMES, d, generator=g))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch and core threads (default 2)")
    p.add_argument("--sizes", default="64,256,1024", help="batch sizes B (default 64,256,1024)")
    p.add_argument("--dims", default="768,3840", help="embedding dims D (default 768,3840)")
    p.add_argument("--losses", default=",".join(LOSSES), help="losses to run (default all)")
    args = p.parse_args(argv)
    mapped = map_large_allocations()
    torch.set_num_threads(args.threads)
    pyssondo.set_num_threads(args.threads)
    sizes = [int(x) for x in args.sizes.split(",")]
    dims = [int(x) for x in args.dims.split(",")]
    print(f"torch {torch.__version__}, threads: torch {torch.get_num_threads()}, "
          f"core {pyssondo.get_num_threads()}, cpus {os.cpu_count()}, load average "
          f"{os.getloadavg()[0]:.1f}, float32, "
          f"forward + backward (student grad), best of <= 10 runs (references over 1 GB: "
          f"one cold run); "
          f"peak memory: {'RSS high-water' if mapped else 'RSS high-water (no mallopt: floors)'}")
    print(f"iusp: B utterances, teacher {FRAMES} frames, student {2 * FRAMES} frames")
    header = (f"{'loss':16s} {'B':>5s} {'D':>5s} {'fused ms':>10s} {'ref ms':>10s} "
              f"{'speed-up':>9s} {'cpu-time':>9s} {'fused MB':>9s} {'ref MB':>9s} "
              f"{'mem ratio':>9s}")
    print(header)
    print("-" * len(header))
    for name in args.losses.split(","):
        ref, fused, level, ref_elems = LOSSES[name]
        for d in dims:
            for b in sizes:
                s, t = make_pair(level, b, d)
                tf, cf = best_time(fused, s, t)
                mf = timed_peak(lambda: fwd_bwd(fused, s, t))[2]
                need = ref_elems(b, d) * 4
                line = f"{name:16s} {b:5d} {d:5d} {tf * 1e3:10.2f} "
                if need > 0.5 * available_bytes():
                    line += (f"{'-':>10s} {'-':>9s} {'-':>9s} {mf / 2**20:9.1f}   "
                             f"reference cannot run "
                             f"(needs ~{need / 2**30:.1f} GB)")
                else:
                    if need < (1 << 30):
                        tr, cr = best_time(ref, s, t)
                        mr = timed_peak(lambda: fwd_bwd(ref, s, t))[2]
                    else:  # one cold run measures both
                        tr, cr, mr = timed_peak(lambda: fwd_bwd(ref, s, t))
                    mem_ratio = (f"{mr / mf:8.1f}x" if min(mr, mf) >= 2**20
                                 else f"{'n/a':>9s}")
                    line += (f"{tr * 1e3:10.2f} {tr / tf:8.1f}x {cr / max(cf, 1e-9):8.1f}x "
                             f"{mf / 2**20:9.1f} {mr / 2**20:9.1f} {mem_ratio}")
                print(line, flush=True)
                s = t = None  # freed before the next pair is allocated
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
