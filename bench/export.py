"""Exported students: int8 vs float32, TorchScript vs ONNX Runtime, DFT vs FFT front end, and
the teacher, in one process.

For each student (default mn04 and eres2net16, S-SONDO front end: 32 kHz, 128 mels, 10 s
windows) the weights are random but the batch-norm statistics are those of real audio (the
average over training-mode passes on log-mel of ../shared/data/pool), so activations have
realistic ranges. Each format is exported as float32 with both front ends and as int8 with
its default front end (pyssondo.export.DEFAULT_FRONTEND), calibrated on 16 pool windows, with
every block int8 (ONNX: all but the first, pyssondo.onnx_export.ONNX_MIN_FLOAT_FRONT): random
students are chaotic (a rounding of the first layer moves their
embedding anywhere), so the export's agreement search (pyssondo.export.choose_int8) would
refuse them; their agreement with float32 on 8 other pool windows is printed but means little.
What int8 keeps of a trained student is bench/int8_quality.py's job. Latency: the median of
--repeats forwards of one 10 s clip, batch 1, the best of three rounds in which each model is
measured in turn (pyssondo.export.latencies_ms).

Prints per student: int8 / fp32 file size (target <= 0.35) and latency at 1 thread (target
<= 0.7) for TorchScript and ONNX (QDQ); ONNX Runtime / TorchScript latency at 1 and 2 threads
(each with its default front end); DFT / FFT front end latency in both; TorchScript float32
as the export writes it (batch norm folded; MobileNetV3 weights channels-last) over the
student scripted as written; and the teacher's forward latency (aisfx, built from its wheel
into --teacher) over the student's.

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

from pyssondo.allocator import keep_freed_memory  # noqa: E402
from pyssondo.calibration import Calibration, from_audio_dir  # noqa: E402
from pyssondo.export import (DEFAULT_FRONTEND, agreement, latencies_ms, latency_ms,  # noqa: E402
                             save_export, wrap)
from pyssondo.frontend import LogMel, MelConfig  # noqa: E402
from pyssondo.loading import load_model  # noqa: E402
from pyssondo.onnx_export import save_onnx  # noqa: E402
from pyssondo.onnx_model import OnnxStudent  # noqa: E402
from pyssondo.students import create_student  # noqa: E402

DATA = Path(os.environ.get("SSONDO_DATA", ROOT.parent / "shared" / "data"))
MEL = MelConfig()
WINDOW_S = 10.0
SAVE = {"torchscript": (save_export, "pt"), "onnx": (save_onnx, "onnx")}


def student_with_real_statistics(name: str, windows: np.ndarray,
                                 mel: MelConfig = MEL) -> torch.nn.Module:
    """A random-weight student whose batch-norm statistics average two training-mode passes
    over the ``mel`` log-mel of ``windows``."""
    torch.manual_seed(0)
    student = create_student(name, n_mels=mel.n_mels)
    for m in student.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average
    student.train()
    with torch.no_grad():
        x = LogMel(mel)(torch.from_numpy(windows))
        for _ in range(2):
            student(x)
    return student.eval()


def export_all(student: torch.nn.Module, calib: Calibration, tmp: Path, name: str) -> dict:
    """{(format, "fft" | "dft" | "int8"): path} of the float32 exports with each front end and
    the int8 export with the format's default front end, and ("torchscript", "unfolded"): the
    float32 student scripted as written, batch norms unfolded."""
    rows = {}
    for fmt, (save, ext) in SAVE.items():
        for fe in ("fft", "dft"):
            path = tmp / f"{name}-{fe}.{ext}"
            save(wrap(student, None, MEL, WINDOW_S, frontend=fe), path, {"frontend": fe},
                 measure=False)
            rows[fmt, fe] = path
        path = tmp / f"{name}-int8.{ext}"
        module = wrap(student, None, MEL, WINDOW_S, frontend=DEFAULT_FRONTEND[fmt])
        save(module, path, {}, int8=calib, measure=False, min_agreement=0.0)
        rows[fmt, "int8"] = path
    path = tmp / f"{name}-unfolded.pt"  # what float32 exports were before batch-norm folding
    torch.jit.save(torch.jit.script(wrap(student, None, MEL, WINDOW_S)), str(path))
    rows["torchscript", "unfolded"] = path
    return rows


def load(fmt: str, path: Path, threads: int):
    """The export at ``path`` in its runtime, at ``threads`` intra-op threads (ONNX)."""
    return OnnxStudent(path, threads=threads) if fmt == "onnx" else torch.jit.load(str(path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--students", nargs="+", default=["mn04", "eres2net16"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--teacher", default="/tmp/aisfx.pt",
                    help="aisfx teacher file (built with 'ssondo teacher build aisfx' if absent)")
    args = ap.parse_args()
    keep_freed_memory()  # as every ssondo command does (pyssondo/allocator.py)

    window = int(WINDOW_S * MEL.sample_rate)
    every = from_audio_dir(DATA / "pool", MEL.sample_rate, window, n=24).waveforms
    held = torch.from_numpy(every[1::3].copy())  # 8 held-out windows; the other 16 calibrate
    calib = Calibration(np.concatenate([every[0::3], every[2::3]]), None, "16 pool windows")
    tmp = Path(tempfile.mkdtemp(prefix="bench-export-"))
    lat = {}
    for name in args.students:
        torch.set_num_threads(1)
        student = student_with_real_statistics(name, every[:8])
        rows = export_all(student, calib, tmp, name)
        print(f"\n{name}: {sum(p.numel() for p in student.parameters()) / 1e6:.2f} M params, "
              f"latency per 10 s clip, batch 1")
        for threads in (1, 2):
            torch.set_num_threads(threads)
            models = {k: load(k[0], p, threads) for k, p in rows.items()}
            for k, t in latencies_ms(models, MEL.sample_rate, repeats=args.repeats).items():
                lat[name, k, threads] = t
        torch.set_num_threads(1)
        for fmt in SAVE:
            fe = DEFAULT_FRONTEND[fmt]
            fp32, q = rows[fmt, fe], rows[fmt, "int8"]
            size = q.stat().st_size / fp32.stat().st_size
            a, b = lat[name, (fmt, "int8"), 1], lat[name, (fmt, fe), 1]
            with torch.no_grad():
                got, want = load(fmt, q, 1)(held), load(fmt, fp32, 1)(held)
            cos = float(torch.nn.functional.cosine_similarity(got, want, dim=-1).mean())
            print(f"  {fmt:11s} int8/fp32 ({fe} front end): size {size:.3f}x "
                  f"({q.stat().st_size / 1e6:.2f} / {fp32.stat().st_size / 1e6:.2f} MB, target "
                  f"<= 0.35), latency at 1 thread {a / b:.3f}x ({a:.1f} / {b:.1f} ms, target "
                  f"<= 0.7); cosine to fp32 {cos:.4f}, agreement {agreement(got, want):.3f} on "
                  f"{len(held)} held-out windows (the fewest float32 blocks; random weights)")
        for threads in (1, 2):
            ts = lat[name, ("torchscript", DEFAULT_FRONTEND["torchscript"]), threads]
            ort = lat[name, ("onnx", DEFAULT_FRONTEND["onnx"]), threads]
            stft = lat[name, ("onnx", "fft"), threads]
            print(f"  {threads} thread(s): ONNX Runtime / TorchScript latency {ort / ts:.3f}x "
                  f"({ort:.1f} / {ts:.1f} ms; ONNX with the DFT op {stft:.1f} ms)")
        for fmt in SAVE:
            d, f = lat[name, (fmt, "dft"), 1], lat[name, (fmt, "fft"), 1]
            print(f"  {fmt:11s} DFT / FFT front end latency at 1 thread {d / f:.3f}x "
                  f"({d:.1f} / {f:.1f} ms; files {rows[fmt, 'dft'].stat().st_size / 1e6:.2f} / "
                  f"{rows[fmt, 'fft'].stat().st_size / 1e6:.2f} MB)")
        f, u = lat[name, ("torchscript", "fft"), 1], lat[name, ("torchscript", "unfolded"), 1]
        print(f"  torchscript fp32 as exported (batch norm folded, memory format) / as written: "
              f"latency at 1 thread {f / u:.3f}x ({f:.1f} / {u:.1f} ms; files "
              f"{rows['torchscript', 'fft'].stat().st_size / 1e6:.2f} / "
              f"{rows['torchscript', 'unfolded'].stat().st_size / 1e6:.2f} MB)")

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
            s = lat[name, ("torchscript", DEFAULT_FRONTEND["torchscript"]), threads]
            o = lat[name, ("onnx", DEFAULT_FRONTEND["onnx"]), threads]
            print(f"teacher aisfx ({rate} Hz) {t:.1f} ms per 10 s clip at {threads} thread(s): "
                  f"{t / s:.1f}x the {name} TorchScript student, {t / o:.1f}x its ONNX Runtime "
                  f"export")


if __name__ == "__main__":
    main()
