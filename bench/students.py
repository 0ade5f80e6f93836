"""CPU speed of the students: inference and one training step, at 1 and 2 threads; and the
training step eager vs channels_last vs torch.compile, one student per family.

Usage:
    python bench/students.py                       # both parts (all students, batch 32 x 10 s)
    python bench/students.py --students mn04,mn10,dymn04 --batch 8 --threads 1,2,4
    python bench/students.py --script              # also time the TorchScript export
    python bench/students.py --part variants --variants micronet-m0,mobilevitv2-050

Input: a random log-mel batch [batch, 128, 624] (10 s at 32 kHz, hop 512, n_fft 1024).
Inference: eval mode, no gradients, the backbone's clip embedding (and, with --script, the
torch.jit.script of it, as exported). Training step: train mode, backbone -> S-SONDO mapping
head (Linear(d, 1280), Hardswish, Dropout 0.2, Linear(1280, D), D = --teacher-dim) -> loss
1 - cos(head(student(x)), target) -> backward -> Adam step. Each time is the median of
--repeats runs after two warm-up runs. The "vs mn10" column is the time relative to S-SONDO's
default student mn10 at the same thread count (when mn10 is in the run; it is timed first);
the last column is the speed-up from the first to the last thread count. Rows print as each
student finishes.

Variants (--part variants): the same training step (student -> head -> cosine loss ->
backward -> Adam) on a batch of --batch x --variant-seconds s of log-mel at 16 kHz (n_fft 1024,
hop 512, 128 mels: 124 frames for 4 s), for each --variants student and each thread count:
"eager"; "channels_last" (model weights in channels-last memory format; the 1-channel input
image is channels-last as it is);
"compile" (torch.compile, inductor on CPU, of student + head; the loss and the optimizer
stay eager; compiled anew per thread count; inductor's fallback_random, so dropout draws the
same masks as eager). Every variant starts from the same weights and
sees the same batches; it prints the median step time after --warmup steps (the compile
happens there), the ratio eager / variant (> 1: the variant is faster), and the largest
|loss - eager loss| over the --steps + --warmup steps ("same loss curve").
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyssondo.allocator import keep_freed_memory  # noqa: E402
from pyssondo.heads import make_head  # noqa: E402
from pyssondo.students import (count_macs, count_params, create_student,  # noqa: E402
                               list_students, ten_second_frames)


def median_time(fn: Callable[[], None], repeats: int) -> float:
    for _ in range(2):  # warm-up (TorchScript's profiling executor optimises on run 2)
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_student(name: str, batch: int, frames: int, teacher_dim: int, threads: List[int],
                  repeats: int, script: bool) -> Dict[Tuple[int, str], float]:
    """Seconds per batch for ("infer", "script", "train") at each thread count."""
    torch.manual_seed(0)
    x = torch.randn(batch, 128, frames)
    target = torch.randn(batch, teacher_dim)
    model = create_student(name)
    head = make_head("mlp", model.embed_dim, teacher_dim)
    optimizer = torch.optim.Adam(list(model.parameters()) + list(head.parameters()), lr=8e-4)
    scripted = None
    if script:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.script(create_student(name).eval())

    def infer() -> None:
        model.eval()
        with torch.no_grad():
            model(x)

    def infer_scripted() -> None:
        with torch.no_grad():
            scripted(x)

    def train_step() -> None:
        model.train()
        head.train()
        optimizer.zero_grad(set_to_none=True)
        loss = (1.0 - F.cosine_similarity(head(model(x)), target, dim=-1)).mean()
        loss.backward()
        optimizer.step()

    results = {}
    for n in threads:
        torch.set_num_threads(n)
        results[(n, "infer")] = median_time(infer, repeats)
        if scripted is not None:
            results[(n, "script")] = median_time(infer_scripted, repeats)
        results[(n, "train")] = median_time(train_step, repeats)
    return results


VARIANTS = ("eager", "channels_last", "compile")


class StudentHead(torch.nn.Module):
    """student -> mapping head, as one module for torch.compile."""

    def __init__(self, student: torch.nn.Module, head: torch.nn.Module) -> None:
        super().__init__()
        self.student = student
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.student(x))


def train_variant(name: str, variant: str, batches: List[Tuple[torch.Tensor, torch.Tensor]],
                  warmup: int) -> Tuple[float, List[float]]:
    """(median seconds per step after ``warmup`` steps, loss of every step) of one variant."""
    torch.manual_seed(0)
    n_mels, dim = batches[0][0].shape[1], batches[0][1].shape[1]
    student = create_student(name, n_mels=n_mels)
    net = StudentHead(student, make_head("mlp", student.embed_dim, dim)).train()
    if variant == "channels_last":
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.parameters(), lr=8e-4)
    forward = net
    if variant == "compile":
        torch._dynamo.reset()
        # eager's random numbers (the head's dropout masks), so the loss curves are comparable
        torch._inductor.config.fallback_random = True
        forward = torch.compile(net)
    losses, times = [], []
    for x, target in batches:  # a 1-channel image [B, 1, M, T] is already channels-last
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = (1.0 - F.cosine_similarity(forward(x), target, dim=-1)).mean()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    return statistics.median(times[warmup:]), losses


def bench_variants(names: List[str], batch: int, seconds: float, teacher_dim: int,
                   threads: List[int], steps: int, warmup: int) -> None:
    from pyssondo.frontend import MelConfig

    frames = MelConfig(sample_rate=16000, f_max=8000.0).num_frames(int(seconds * 16000))
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(batch, 128, frames, generator=g),
                torch.randn(batch, teacher_dim, generator=g)) for _ in range(warmup + steps)]
    print(f"\ntraining step variants: batch {batch} x {seconds:g} s at 16 kHz = {frames} frames "
          f"x 128 mels; head mlp -> {teacher_dim}; median of {steps} steps after {warmup}")
    print(f"{'student':<16} {'variant':<14} "
          + " ".join(f"{f'{n}t ms':>8} {'eager/x':>7} {'max dloss':>9}" for n in threads),
          flush=True)
    for name in names:
        res = {}
        for n in threads:
            torch.set_num_threads(n)
            for variant in VARIANTS:
                res[(n, variant)] = train_variant(name, variant, batches, warmup)
        for variant in VARIANTS:
            cells = []
            for n in threads:
                sec, losses = res[(n, variant)]
                ref_sec, ref_losses = res[(n, "eager")]
                dloss = max(abs(a - b) for a, b in zip(losses, ref_losses))
                cells.append(f"{1e3 * sec:>8.0f} {ref_sec / sec:>6.2f}x {dloss:>9.1e}")
            print(f"{name:<16} {variant:<14} " + " ".join(cells), flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--students", default=",".join(list_students()),
                   help="comma-separated names (default: all registered)")
    p.add_argument("--batch", type=int, default=32, help="clips per batch (default 32)")
    p.add_argument("--frames", type=int, default=ten_second_frames(),
                   help="log-mel frames per clip (default: 10 s = %(default)s)")
    p.add_argument("--threads", default="1,2", help="torch thread counts (default 1,2)")
    p.add_argument("--teacher-dim", type=int, default=768, help="head output D (default 768)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per cell (default 3)")
    p.add_argument("--script", action="store_true", help="also time the TorchScript student")
    p.add_argument("--part", choices=("all", "speed", "variants"), default="all",
                   help="speed (inference + train per student), variants, or both (default)")
    p.add_argument("--variants", default="mn01,dymn04,eres2net16,micronet-m0,mobilevitv2-050",
                   help="students of the variants part (default: one per family)")
    p.add_argument("--variant-seconds", type=float, default=4.0,
                   help="clip length of the variants part, at 16 kHz (default 4)")
    p.add_argument("--steps", type=int, default=4, help="timed steps per variant (default 4)")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps (default 2)")
    args = p.parse_args(argv)
    keep_freed_memory()  # as every ssondo command does (pyssondo/allocator.py)
    names = [s for s in args.students.split(",") if s]
    variant_names = [s for s in args.variants.split(",") if s]
    unknown = [s for s in names + variant_names if s not in list_students()]
    if unknown:
        p.error(f"unknown students {unknown}; known: {', '.join(list_students())}")
    threads = [int(t) for t in args.threads.split(",")]
    if (args.batch < 1 or args.frames < 1 or args.repeats < 1 or min(threads) < 1
            or args.steps < 1 or args.warmup < 1 or not args.variant_seconds > 0):
        p.error("--batch, --frames, --repeats, --threads, --steps and --warmup must be >= 1, "
                "--variant-seconds > 0")
    if args.part != "speed":
        bench_variants(variant_names, args.batch, args.variant_seconds, args.teacher_dim,
                       threads, args.steps, args.warmup)
    if args.part == "variants":
        return 0

    if "mn10" in names:  # the reference row goes first so every row can show its ratio
        names.remove("mn10")
        names.insert(0, "mn10")
    kinds = ["infer"] + (["script"] if args.script else []) + ["train"]
    print(f"torch {torch.__version__}; batch {args.batch} x {args.frames} frames x 128 mels; "
          f"head mlp -> {args.teacher_dim}; median of {args.repeats}; threads {threads}")
    print(f"{'student':<11} {'params':>7} {'MMACs':>6} {'what':<7} "
          + " ".join(f"{f'{n}t ms':>9} {f'{n}t clip/s':>10} {'vs mn10':>7}" for n in threads)
          + f" {f'{threads[-1]}t/{threads[0]}t':>6}", flush=True)
    ref = None
    for name in names:
        model = create_student(name)
        params, mmacs = count_params(model) / 1e6, count_macs(model, 128, args.frames) / 1e6
        res = bench_student(name, args.batch, args.frames, args.teacher_dim, threads,
                            args.repeats, args.script)
        if name == "mn10":
            ref = res
        for kind in kinds:
            cells = []
            for n in threads:
                sec = res[(n, kind)]
                rel = f"{sec / ref[(n, kind)]:.2f}x" if ref else "-"
                cells.append(f"{1e3 * sec:>9.0f} {args.batch / sec:>10.1f} {rel:>7}")
            speedup = res[(threads[0], kind)] / res[(threads[-1], kind)]
            print(f"{name:<11} {params:>6.2f}M {mmacs:>6.0f} {kind:<7} " + " ".join(cells)
                  + f" {speedup:>5.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
