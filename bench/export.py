"""Exported students: int8 vs float32, TorchScript vs ONNX Runtime, DFT vs FFT front end, and
the teacher, in one process.

For each student (default mn04 and eres2net16, S-SONDO front end: 32 kHz, 128 mels, 10 s
windows) the weights are random but the batch-norm statistics come from real audio (a few
training-mode passes over log-mel of ../shared/data/pool), so activations have realistic
ranges. int8 exports are calibrated on 16 pool windows; cosines are measured on 8 other
(held-out) pool windows, also after removing the fp32 mean embedding: random students embed
every clip almost alike (tiny spread), so only a trained student makes that number meaningful.
Latency: median of --repeats forwards of one 10 s clip, batch 1.

Prints per student: int8 / fp32 file size (target <= 0.35) and latency at 1 thread (target
<= 0.7), cosine to fp32, for TorchScript and ONNX (QDQ), or the export's refusal when int8 breaks the
student (its agreement check, pyssondo.export.choose_int8); ONNX Runtime / TorchScript latency
at 1 and 2 threads; DFT / FFT front end latency in both; and the teacher's forward latency
(aisfx, built from its wheel into --teacher) over the student's.

usage: python bench/export.py [--students mn04 eres2net16] [--repeats 5] [--teacher /tmp/aisfx.pt]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pyssondo.calibration import Calibration, from_audio_dir  # noqa: E402
from pyssondo.frontend import MelConfig  # noqa: E402
from pyssondo.export import latency_ms, save_export, wrap  # noqa: E402
from pyssondo.frontend import LogMel  # noqa: E402
from pyssondo.loading import load_model  # noqa: E402
from pyssondo.onnx_export import save_onnx  # noqa: E402
from pyssondo.onnx_model import OnnxStudent  # noqa: E402
from pyssondo.students import create_student  # noqa: E402

DATA = Path(os.environ.get("SSONDO_DATA", ROOT.parent / "shared" / "data"))
MEL = MelConfig()
WINDOW_S = 10.0


def student_with_real_statistics(name: str, windows: np.ndarray) -> torch.nn.Module:
    """A random-weight student whose batch-norm statistics are those of real log-mel."""
    torch.manual_seed(0)
    student = create_student(name, n_mels=MEL.n_mels)
    student.train()
    mel = LogMel(MEL)
    with torch.no_grad():
        x = mel(torch.from_numpy(windows))
        for _ in range(3):
            student(x)
    return student.eval()


@torch.no_grad()
def cosines(a, b, windows: np.ndarray):
    """Mean cosine of a's embeddings to b's; the same after subtracting b's mean embedding
    (what separates clips); and b's spread (mean |b - mean| / |mean|)."""
    x = torch.from_numpy(windows)
    ea, eb = a(x), b(x)
    mu = eb.mean(0)
    cos = torch.nn.functional.cosine_similarity
    return (float(cos(ea, eb, dim=-1).mean()), float(cos(ea - mu, eb - mu, dim=-1).mean()),
            float((eb - mu).norm(dim=-1).mean() / mu.norm()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--students", nargs="+", default=["mn04", "eres2net16"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--teacher", default="/tmp/aisfx.pt",
                    help="aisfx teacher file (built with 'ssondo teacher build aisfx' if absent)")
    args = ap.parse_args()

    window = int(WINDOW_S * MEL.sample_rate)
    pool = DATA / "pool"
    every = from_audio_dir(pool, MEL.sample_rate, window, n=24).waveforms
    held = every[1::3].copy()  # 8 held-out windows; the other 16 calibrate
    calib = Calibration(np.concatenate([every[0::3], every[2::3]]), None, "16 pool windows")
    tmp = Path(tempfile.mkdtemp(prefix="bench-export-"))
    lat = {}
    for name in args.students:
        torch.set_num_threads(1)
        student = student_with_real_statistics(name, every[:8])
        rows, refused = {}, {}
        for fmt, save, ext in (("torchscript", save_export, "pt"), ("onnx", save_onnx, "onnx")):
            for fe in ("fft", "dft"):
                module = wrap(student, None, MEL, WINDOW_S, frontend=fe)
                path = tmp / f"{name}-{fe}.{ext}"
                save(module, path, {"frontend": fe}, measure=False)
                rows[fmt, fe] = path
            module = wrap(student, None, MEL, WINDOW_S)
            path = tmp / f"{name}-int8.{ext}"
            try:
                save(module, path, {}, int8=calib, measure=False)
                rows[fmt, "int8"] = path
            except RuntimeError as e:  # the export's agreement check refused every rung
                refused[fmt] = str(e)
        models = {k: (OnnxStudent(p) if k[0] == "onnx" else torch.jit.load(str(p)))
                  for k, p in rows.items()}
        print(f"\n{name}: {sum(p.numel() for p in student.parameters()) / 1e6:.2f} M params, "
              f"latency per 10 s clip, batch 1")
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for k in rows:  # sessions read their thread count when made
                if k[0] == "onnx":
                    models[k] = OnnxStudent(rows[k], threads=threads)
            for k, m in models.items():
                lat[name, k, threads] = latency_ms(m, MEL.sample_rate, repeats=args.repeats)
        torch.set_num_threads(1)
        for fmt in ("torchscript", "onnx"):
            if fmt in refused:
                print(f"  {fmt:11s} int8 refused: {refused[fmt]}")
                continue
            fp32, q = rows[fmt, "fft"], rows[fmt, "int8"]
            size = q.stat().st_size / fp32.stat().st_size
            speed = lat[name, (fmt, "int8"), 1] / lat[name, (fmt, "fft"), 1]
            cos, centered, spread = cosines(models[fmt, "int8"], models[fmt, "fft"], held)
            print(f"  {fmt:11s} int8/fp32: size {size:.3f}x ({q.stat().st_size / 1e6:.2f} / "
                  f"{fp32.stat().st_size / 1e6:.2f} MB, target <= 0.35), latency at 1 thread "
                  f"{speed:.3f}x ({lat[name, (fmt, 'int8'), 1]:.1f} / "
                  f"{lat[name, (fmt, 'fft'), 1]:.1f} ms, target <= 0.7), cosine to fp32 "
                  f"{cos:.4f} on {len(held)} held-out windows (after removing the mean "
                  f"embedding {centered:.3f}; fp32 spread {spread:.1e})")
        for threads in (1, 2):
            ts = lat[name, ("torchscript", "fft"), threads]
            ort = lat[name, ("onnx", "fft"), threads]
            print(f"  {threads} thread(s): ONNX Runtime / TorchScript latency {ort / ts:.3f}x "
                  f"({ort:.1f} / {ts:.1f} ms)")
        for fmt in ("torchscript", "onnx"):
            d, f = lat[name, (fmt, "dft"), 1], lat[name, (fmt, "fft"), 1]
            print(f"  {fmt:11s} DFT / FFT front end latency at 1 thread {d / f:.3f}x "
                  f"({d:.1f} / {f:.1f} ms; files {rows[fmt, 'dft'].stat().st_size / 1e6:.2f} / "
                  f"{rows[fmt, 'fft'].stat().st_size / 1e6:.2f} MB)")

    teacher_path = Path(args.teacher)
    if not teacher_path.is_file():
        from pyssondo.teachers import build_teacher_file

        build_teacher_file("aisfx", teacher_path)
    teacher = load_model(teacher_path, role="teacher")
    rate = teacher.sample_rate
    for threads in (1, 2):
        torch.set_num_threads(threads)
        t = latency_ms(teacher.module, rate, repeats=args.repeats)
        for name in args.students:
            s = lat[name, ("torchscript", "fft"), threads]
            o = lat[name, ("onnx", "fft"), threads]
            print(f"teacher aisfx ({rate} Hz) {t:.1f} ms per 10 s clip at {threads} thread(s): "
                  f"{t / s:.1f}x the {name} TorchScript student, {t / o:.1f}x its ONNX Runtime "
                  f"export")


if __name__ == "__main__":
    main()
