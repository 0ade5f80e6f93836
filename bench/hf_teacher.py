"""Benchmark: an hf teacher file (HuBERT base shapes) vs the transformers model called directly.

Nothing is downloaded: the model is HubertModel(HubertConfig()) — the HuBERT-base
configuration (7 conv layers, 12 blocks of width 768, 94.4M parameters) with random weights,
which costs what the pretrained one costs — saved as a snapshot folder with a
Wav2Vec2FeatureExtractor, then built into a teacher with ``ssondo teacher build hf:FOLDER``.
Both run in this process, at the same thread count, on the same batches of real 16 kHz audio
(../shared/data/pool, 4 s clips, tiled to the window):

- ours: the teacher file (TorchScript: waveform normalisation inside, the model traced).
- transformers: the feature extractor (numpy) + the eager model with output_hidden_states,
  the chosen layers concatenated, mean over frames.

Printed: seconds of compute per hour of audio (wall and process CPU time), the ratio
transformers / ours, the largest difference between the two outputs, and the embedding
cache's size per hour of audio for the chosen layers, pooled and as frames, float16 (rows of
a real ``build_cache`` run on the same clips, scaled to one hour).

usage:
  python bench/hf_teacher.py [--layers 4,8,12] [--window 10] [--batch-size 4] [--batches 3]
                             [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed(fn, batches):
    """(wall s, cpu s, last output) of ``fn`` over ``batches`` after one warm-up call."""
    fn(batches[0])
    wall, cpu = time.perf_counter(), time.process_time()
    for b in batches:
        out = fn(b)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", default="4,8,12")
    ap.add_argument("--window", type=float, default=10.0, help="segment seconds")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    import transformers as tf

    from pyssondo.cache import EmbeddingCache, build_cache
    from pyssondo.loading import load_model
    from pyssondo.teachers import build_hf_teacher_file

    tmp = Path(tempfile.mkdtemp(prefix="bench-hf-"))
    try:
        torch.manual_seed(0)
        model = tf.HubertModel(tf.HubertConfig()).eval()
        fe = tf.Wav2Vec2FeatureExtractor(do_normalize=True)
        model.save_pretrained(tmp / "hubert-base")
        fe.save_pretrained(tmp / "hubert-base")
        layers = [int(x) for x in args.layers.split(",")]
        t0 = time.perf_counter()
        meta = build_hf_teacher_file(f"hf:{tmp / 'hubert-base'}", tmp / "t.pt",
                                     layers=args.layers)
        build_s = time.perf_counter() - t0
        ours = load_model(tmp / "t.pt").module

        n = int(args.window * 16000)
        clips = sorted((ROOT.parent / "shared" / "data" / "pool").glob("*.flac"))
        segs = [np.resize(sf.read(p, dtype="float32")[0], n)
                for p in clips[:args.batch_size * args.batches]]
        batches = [np.stack(segs[i:i + args.batch_size])
                   for i in range(0, len(segs), args.batch_size)]

        def run_ours(b):
            with torch.inference_mode():
                return ours(torch.from_numpy(b))

        def run_hf(b):
            x = fe(list(b), sampling_rate=16000, return_tensors="pt").input_values
            with torch.inference_mode():
                hs = model(x, output_hidden_states=True).hidden_states
            return torch.cat([hs[i].mean(1) for i in layers], -1)

        ow, oc, oy = timed(run_ours, batches)
        hw, hc, hy = timed(run_hf, batches)
        hours = len(segs) * args.window / 3600
        err = float((oy - hy).abs().max())

        audio = tmp / "audio"
        audio.mkdir()
        for p in clips[:16]:
            shutil.copy(p, audio / p.name)
        frames = tmp / "frames.pt"
        build_hf_teacher_file(f"hf:{tmp / 'hubert-base'}", frames, layers=args.layers,
                              pool="none")
        sizes = {}
        for name, teacher in (("pooled", tmp / "t.pt"), ("frames", frames)):
            cache = EmbeddingCache(build_cache(teacher, audio, tmp / f"cache-{name}",
                                               window_s=4.0, batch_size=4, progress=False))
            per_segment = cache.disk_bytes() / len(cache)
            sizes[name] = (per_segment * 3600 / 4.0, cache.frames, cache.dim)

        print(f"HuBERT-base shapes (random weights), layers {args.layers}, {args.threads} "
              f"thread(s), {len(segs)} segments of {args.window:g} s in batches of "
              f"{args.batch_size}; teacher file built in {build_s:.1f} s ({meta['format']})")
        print(f"{'':14s}{'wall s/h audio':>16s}{'cpu s/h audio':>16s}")
        print(f"{'ours':14s}{ow / hours:16.0f}{oc / hours:16.0f}")
        print(f"{'transformers':14s}{hw / hours:16.0f}{hc / hours:16.0f}")
        print(f"ratio transformers / ours: wall {hw / ow:.2f}, cpu {hc / oc:.2f}; "
              f"max |ours - transformers| = {err:.2g}")
        for name, (per_hour, f, d) in sizes.items():
            shape = f"[{f}, {d}]" if f else f"[{d}]"
            print(f"cache, {name} {shape} float16 rows per 4 s segment: "
                  f"{per_hour / 1e6:.1f} MB per hour of audio")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
