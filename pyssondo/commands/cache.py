"""ssondo cache: compute (or update) the teacher-embedding cache of an audio folder."""
from __future__ import annotations

import argparse

HELP = "compute the teacher embeddings of an audio folder once (resumable, incremental)"
DESCRIPTION = """\
Scans AUDIO_DIR recursively, cuts every file into WINDOW-second segments every HOP seconds
(a clip shorter than the window is one zero-padded segment; the tail of a longer clip is kept),
runs the teacher in batches and stores the embeddings in a cache folder keyed by the teacher
file's hash, its sample rate, the window, the hop and the dtype:

  OUT/<sha256[:16]>-sr<rate>-w<W>-h<H>-<dtype>/{meta.json, manifest.json, shard-*.npy}

OUT defaults to runs/cache/<audio folder>-<hash>, the root 'ssondo distill' uses for that folder
with its default --out, so a cache built here is the one distill reads.

Running it again skips unchanged files, computes new or changed ones and drops vanished ones;
an interrupted run (Ctrl-C, kill -9) resumes where it stopped. Unreadable audio files are
skipped with a warning and listed by --info. Under torchrun, the processes share the files
(each runs the teacher on its own device; rank 0 merges their shards). The teacher is a
TorchScript file (see 'ssondo teacher build'; an hf teacher state file is loaded with
transformers) or a Python factory pkg.module:function returning an nn.Module. A teacher with
several targets (layers) stores them concatenated in each row; --info lists them.

--views K adds K-1 augmented views of every segment (random speed, EQ, time shift, mixing
with another file's segment, gain; --view-augment chooses them), each seeded by (segment,
view, settings), and runs the teacher on each: K times the teacher time. View 0 is always the
clean segment. The cache key gets -v<K>-<settings hash>, so views never mix with a plain cache.

examples:
  ssondo teacher build crepe-tiny -o crepe_tiny.pt
  ssondo cache crepe_tiny.pt audio/ --out cache/
  ssondo cache crepe_tiny.pt audio/ --window 4 --hop 2 --dtype float32 --out cache/
  ssondo cache mypkg.models:teacher audio/ --teacher-sr 32000
  ssondo cache aisfx.pt audio/ --views 4 --out cache/
  ssondo cache aisfx.pt audio/ --views 2 --view-augment gain=-3:3,speed=0.9:1.1 --out cache/
  ssondo teacher build hf:snapshots/hubert-base --layers 4,8,12 -o hubert.pt
  ssondo cache hubert.pt audio/ --device cuda --teacher-batch-size 64 --out cache/
  ssondo cache --info cache/            (a root holding one cache, or cache/<key>/)
  torchrun --standalone --nproc_per_node 4 -m pyssondo cache teacher.pt audio/ --device cuda
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pyssondo.views import DEFAULT_SPEC, DEFAULT_VIEWS

    p.add_argument("teacher", nargs="?", help="teacher .pt file or pkg.module:factory")
    p.add_argument("audio_dir", nargs="?", help="folder of audio files (scanned recursively)")
    p.add_argument("--info", metavar="CACHE_DIR", help="print a summary of a cache folder")
    p.add_argument("--window", type=float, default=10.0, help="segment length, s (default: 10)")
    p.add_argument("--hop", type=float, default=None,
                   help="segment hop, s (default: the window)")
    p.add_argument("--out", default=None,
                   help="cache root folder (default: runs/cache/<audio folder>-<hash>, "
                        "as 'ssondo distill' uses)")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                   help="stored row type (default: float16)")
    p.add_argument("--teacher-batch-size", "--batch-size", dest="batch_size", type=int,
                   default=16, help="segments per teacher forward (default: 16)")
    p.add_argument("--teacher-sr", type=int, default=None,
                   help="teacher input sample rate in Hz (overrides the teacher's own)")
    p.add_argument("--workers", type=int, default=None,
                   help="audio reader threads (default: min(4, cores))")
    p.add_argument("--shard-rows", type=int, default=None,
                   help="segments per shard file (default: about 64 MB per shard)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads for the teacher (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--views", type=int, default=DEFAULT_VIEWS,
                   help=f"views per segment, view 0 clean (default: {DEFAULT_VIEWS}, as "
                        f"'ssondo distill' uses; 1 = no augmentation)")
    p.add_argument("--view-augment", default=DEFAULT_SPEC, metavar="SPEC",
                   help=f"augmentations of views >= 1: gain=LO:HI dB, eq=LO:HI dB, bands=N, "
                        f"shift=S seconds, shift_mode=circular|pad, mix=LO:HI SNR dB, "
                        f"speed=LO:HI, or none (default: {DEFAULT_SPEC})")


def run(args: argparse.Namespace) -> int:
    from pyssondo.cache import EmbeddingCache, build_cache
    from pyssondo.views import ViewConfig

    if args.info:
        if args.teacher or args.audio_dir:
            raise ValueError("--info takes only the cache folder")
        print(EmbeddingCache(args.info).summary())
        return 0
    if not (args.teacher and args.audio_dir):
        raise ValueError("give a teacher and an audio folder (or --info CACHE_DIR)")
    views = ViewConfig.from_spec(args.views, args.view_augment)  # checked before the teacher
    import torch

    from pyssondo.cache.open import default_cache_root
    from pyssondo.train.config import DistillConfig
    from pyssondo.train.distributed import barrier, local_device, process_group

    if args.threads:
        torch.set_num_threads(args.threads)
    root = args.out or default_cache_root(DistillConfig().out, args.audio_dir)
    with process_group(args.device) as world:
        folder = build_cache(args.teacher, args.audio_dir, root, window_s=args.window,
                             hop_s=args.hop, dtype=args.dtype, teacher_sr=args.teacher_sr,
                             batch_size=args.batch_size, workers=args.workers,
                             shard_rows=args.shard_rows,
                             device=str(local_device(torch.device(args.device))),
                             progress=world.rank == 0, rank=world.rank,
                             world_size=world.size, barrier=barrier, views=views)
    if world.rank == 0:
        print(EmbeddingCache(folder).summary())
    return 0
