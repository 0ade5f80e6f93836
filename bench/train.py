"""Training throughput: our data pipeline vs batches in memory vs the research code's loader.

Measured in one process, same student, batch, steps and thread counts:

- in memory: the model trains on batches collated beforehand, already on the device (the
  upper bound);
- ours: what ``ssondo distill`` does by default (--cache-mel auto, on for this set): float16
  log-mel computed once by the C++ core and memory-mapped, rows copied in DataLoader workers;
  and ours with --cache-mel off (segments cut from decoded files, batched C++ log-mel in the
  workers);
- baseline (S-SONDO research code's pattern): one .npy file per segment, log-mel computed per
  item in torch (our LogMel module, eager) in the same number of DataLoader workers.

Prints training steps/s for each and the ratios (targets: ours / in-memory >= 0.9; ours /
baseline >= 3), and the loaders' own throughput without the model (batches/s), where the
pipelines differ most: cold (each worker decodes every file once; the training loader keeps
its workers, and their decoded files, for the whole run) and after four passes over the data.
The teacher cache is built with a stand-in teacher (a fixed random projection of frame
energies): the teacher never runs during training, so its cost is not part of what is
measured.

On a CPU the model step dominates and every loader competes with it for the same cores; on a
GPU (--device cuda) the model is fast and the loader sets the pace.

    python bench/train.py [--student mn04] [--batch-size 32] [--steps 20] [--workers 2]
                          [--threads 2] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
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

from pyssondo import set_num_threads  # noqa: E402
from pyssondo.frontend import MelConfig  # noqa: E402


class StandIn(torch.nn.Module):
    """Teacher stand-in: [B, T] 16 kHz -> [B, 256] random projection of 64-sample frame energies."""

    def __init__(self) -> None:
        super().__init__()
        self.sample_rate = 16000
        proj = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
        self.register_buffer("proj", proj)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        t = wav.shape[1] // 64 * 64
        frames = wav[:, :t].reshape(wav.shape[0], -1, 64).square().mean(1)
        return torch.log(frames + 1e-4) @ self.proj


class NpyPerSegment(torch.utils.data.Dataset):
    """The baseline: one .npy waveform file per segment, log-mel per item in torch."""

    def __init__(self, files, targets, mel_cfg):
        from pyssondo.frontend import LogMel

        self.files, self.targets, self.mel = files, targets, LogMel(mel_cfg)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        wav = torch.from_numpy(np.load(self.files[i]))
        with torch.no_grad():
            x = self.mel(wav[None])[0]
        return x, torch.from_numpy(np.asarray(self.targets[i], dtype=np.float32))


def train_steps(model, loss_fn, opt, batches, steps, device):
    """Steps/s of training over an iterator of (x, y, ...) batches (first 2 steps are warm-up)."""
    it = iter(batches)
    for _ in range(2):
        _step(model, loss_fn, opt, *next(it)[:2], device)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        _step(model, loss_fn, opt, *next(it)[:2], device)
    _sync(device)
    return steps / (time.perf_counter() - t0)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(model, loss_fn, opt, x, y, device):
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    loss = loss_fn(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    opt.step()


def loader_rate(loader, batches, skip=1):
    """Batches/s of a loader alone, after ``skip`` untimed batches."""
    it = iter(loader)
    for _ in range(skip):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches / (time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data = os.environ.get("SSONDO_DATA", str(ROOT.parent / "shared" / "data"))
    p.add_argument("--data", default=data + "/pool",
                   help="folder of audio (default: $SSONDO_DATA/pool or ../shared/data/pool)")
    p.add_argument("--student", default="mn04")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--window", type=float, default=4.0, help="segment seconds")
    p.add_argument("--device", default="cpu", help="where the model trains: cpu or cuda")
    args = p.parse_args()
    device = torch.device(args.device)

    from pyssondo.cache import EmbeddingCache, build_cache
    from pyssondo.losses import make_loss
    from pyssondo.sampling import BalancedSampler
    from pyssondo.train.config import DistillConfig
    from pyssondo.train.data import DistillDataset
    from pyssondo.train.job import student_inputs, train_loader
    from pyssondo.train.model import build_model

    torch.set_num_threads(args.threads)
    set_num_threads(args.threads)
    mel_cfg = MelConfig(sample_rate=16000, f_max=8000.0, n_mels=128)
    tmp = Path(tempfile.mkdtemp(prefix="ssondo-bench-train-"))
    try:
        teacher = tmp / "standin.pt"
        torch.jit.script(StandIn()).save(str(teacher))
        cache_dir = build_cache(teacher, args.data, tmp / "cache", window_s=args.window,
                                progress=False)
        cache = EmbeddingCache(cache_dir)
        segments, targets = cache.segments(), cache.embeddings()
        n = len(segments)
        cfg = DistillConfig(student=args.student, mel=mel_cfg, window_s=args.window,
                            batch_size=args.batch_size, epochs=1, cache_mel="on")
        model = build_model(cfg, targets.shape[1], frame_level=False).to(device).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        loss_fn = make_loss("cosine")
        total = args.steps + 3
        rows = np.arange(n)

        warm = 4 * -(-n // args.batch_size)  # 4 passes of random draws: ~98% of files decoded

        # The training pipeline's own inputs and loader (pyssondo.train.job).
        audio, mel, _ = student_inputs(cfg, [(cache_dir, cache)])

        def ours_loader(mel=None, workers=args.workers, batches=total + warm):
            sampler = BalancedSampler(np.zeros(n, np.int32), batches * args.batch_size, seed=0)
            return train_loader(cfg.replace(workers=workers), DistillDataset(audio, targets, mel),
                                sampler, rows, 0, device)

        # Baseline data: one .npy per segment at the student's rate (written once, untimed).
        files = []
        for i in range(n):
            path = tmp / "npy" / f"{i:06d}.npy"
            path.parent.mkdir(exist_ok=True)
            np.save(path, audio(i))
            files.append(path)
        order = np.random.default_rng(0).integers(0, n, (total + warm) * args.batch_size)

        def baseline_loader():
            return torch.utils.data.DataLoader(
                NpyPerSegment(files, targets, mel_cfg), batch_size=args.batch_size,
                sampler=order.tolist(), num_workers=args.workers,
                worker_init_fn=lambda _: torch.set_num_threads(1))

        memory = [tuple(t.to(device) for t in b[:2])
                  for _, b in zip(range(total), ours_loader(workers=0))]

        print(f"student {args.student} on {device}, batch {args.batch_size}, {args.window:g} s "
              f"segments at {mel_cfg.sample_rate} Hz, {n} segments; torch threads {args.threads}, "
              f"C++ threads {args.threads}, DataLoader workers {args.workers} (1 thread each); "
              f"{os.cpu_count()} CPU cores")
        rates = {"in memory": train_steps(model, loss_fn, opt, memory, args.steps, device),
                 "ours": train_steps(model, loss_fn, opt, ours_loader(mel), args.steps, device),
                 "ours --cache-mel off": train_steps(model, loss_fn, opt, ours_loader(),
                                                     args.steps, device),
                 "baseline": train_steps(model, loss_fn, opt, baseline_loader(), args.steps,
                                         device)}
        for name, r in rates.items():
            print(f"  train {name:22s} {r:7.2f} steps/s")
        for name in ("ours", "ours --cache-mel off"):
            print(f"  {name + ' / in memory':32s} {rates[name] / rates['in memory']:5.2f}"
                  + ("  (target >= 0.9)" if name == "ours" else ""))
            print(f"  {name + ' / baseline':32s} {rates[name] / rates['baseline']:5.2f}"
                  + ("  (target >= 3)" if name == "ours" else ""))
        loaders = {"ours": loader_rate(ours_loader(mel), args.steps),
                   "ours off (cold: decoding)": loader_rate(ours_loader(), args.steps),
                   "ours off (warm)": loader_rate(ours_loader(), args.steps, skip=warm),
                   "baseline": loader_rate(baseline_loader(), args.steps)}
        for name, r in loaders.items():
            print(f"  loader alone {name:26s} {r:7.2f} batches/s  "
                  f"({r / loaders['baseline']:.2f}x baseline)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("SSONDO_PROGRESS", "0")
    sys.exit(main())
