"""`ssondo embed` on many files: an exported student called once per file vs the windows of
all files sharing calls of --batch windows (pyssondo.window_batches.embed_files), in one
process.

Each way runs its own copy of the model (int8 TorchScript students prepare for the input shape of
their first call, as in a process running `ssondo embed`). The files are decoded once, up front, so only the model is timed. Each MODEL (a file written by
`ssondo export`: TorchScript, int8 TorchScript or ONNX) is run both ways on the same files, in
alternating rounds (the best round of each is kept, the machine being shared); the script prints
milliseconds per file both ways, their ratio, and the largest difference between the two
embeddings (relative to the largest value). Default audio: ../shared/data/fsdd (3000 spoken
digits of 0.1-2.3 s), ../shared/data/pool (400 clips of 4 s), and "joined": recordings of
varied length, made by joining runs of 1, 2, 3, ... 15 consecutive pool clips (4-60 s; 120
clips, 33 min), so that one call per file sees a different input shape on almost every call.

Without MODEL, it exports mn04 itself (random weights, batch-norm statistics of real audio:
bench/export.py's student_with_real_statistics) as the aisfx students are trained: 16 kHz,
8 kHz top band, 2 s windows; float32 and int8 (every block int8) TorchScript, and float32 ONNX
when onnxruntime is installed.

usage: python bench/embed.py [MODEL...] [--audio DIR...] [--batch 8] [--rounds 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pyssondo.allocator import keep_freed_memory  # noqa: E402
from pyssondo.audio import load_audio  # noqa: E402
from pyssondo.calibration import from_audio_dir  # noqa: E402
from pyssondo.commands.embed import audio_files  # noqa: E402
from pyssondo.loading import load_model  # noqa: E402
from pyssondo.export import save_export, wrap  # noqa: E402
from pyssondo.frontend import MelConfig  # noqa: E402
from pyssondo.window_batches import DEFAULT_BATCH, embed_files, student_window  # noqa: E402

DATA = Path(os.environ.get("SSONDO_DATA", ROOT.parent / "shared" / "data"))
MEL = MelConfig(sample_rate=16000, f_max=8000.0)  # the aisfx students' front end
WINDOW_S = 2.0


def default_exports(tmp: Path) -> list:
    """mn04 exported as float32 and int8 TorchScript and (with onnxruntime) float32 ONNX."""
    sys.path.insert(0, str(ROOT / "bench"))
    from export import student_with_real_statistics  # bench/export.py

    calib = from_audio_dir(DATA / "pool", MEL.sample_rate, int(WINDOW_S * MEL.sample_rate), n=32)
    student = student_with_real_statistics("mn04", calib.waveforms, MEL)
    module = wrap(student, None, MEL, WINDOW_S)
    paths = [tmp / "mn04.pt", tmp / "mn04-int8.pt"]
    save_export(module, paths[0], {}, measure=False)
    save_export(module, paths[1], {}, int8=calib, measure=False, min_agreement=0.0)
    try:
        from pyssondo.onnx_export import save_onnx

        save_onnx(wrap(student, None, MEL, WINDOW_S, frontend="dft"), tmp / "mn04.onnx", {},
                  measure=False)
        paths.append(tmp / "mn04.onnx")
    except ImportError:
        print("onnxruntime is not installed: no ONNX row")
    return [str(p) for p in paths]


def joined(waves, longest: int = 15):
    """Consecutive ``waves`` joined in runs of 1, 2, ..., ``longest`` (while they last)."""
    out, i = [], 0
    for n in range(1, longest + 1):
        if i + n > len(waves):
            break
        out.append(np.concatenate(waves[i:i + n]))
        i += n
    return out


def per_file(module, waves) -> np.ndarray:
    """One call per file: the student's own windowing and pooling."""
    with torch.no_grad():
        return np.stack([module(torch.from_numpy(w)[None])[0].numpy() for w in waves])


def shared_calls(module, waves, window: int, batch: int) -> np.ndarray:
    def segments(x, _keys):
        with torch.no_grad():
            return module.segments(torch.from_numpy(x))[:, 0].numpy()

    return np.stack([e for _, e in embed_files(segments, enumerate(waves), window, batch)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", metavar="MODEL")
    ap.add_argument("--audio", nargs="+",
                    default=[str(DATA / "fsdd"), str(DATA / "pool"), "joined"])
    ap.add_argument("--batch", type=int, default=DEFAULT_BATCH)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    keep_freed_memory()  # as every ssondo command does (pyssondo/allocator.py)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        run(args, args.models or default_exports(Path(tmp)))


def run(args: argparse.Namespace, models: list) -> None:
    print(f"threads: {args.threads}, batch: {args.batch} windows, best of {args.rounds} rounds")
    for folder in args.audio:
        files = audio_files([DATA / "pool" if folder == "joined" else folder])
        for spec in models:
            model = load_model(spec, role="model")
            window = student_window(model.meta, model.module)
            if window is None:
                raise SystemExit(f"{spec}: not an exported student (no ssondo.json window)")
            waves = [load_audio(f, model.sample_rate)[0] for f in files]
            if folder == "joined":
                waves = joined(waves)
            seconds = sum(w.shape[0] for w in waves) / model.sample_rate
            best = {}
            # Each way has its own copy of the model, as a process running `ssondo embed` has:
            # int8 TorchScript prepares for the input shape of its first call.
            other = load_model(spec, role="model").module
            for r in range(args.rounds):
                ways = [("per file", lambda: per_file(model.module, waves)),
                        ("shared", lambda: shared_calls(other, waves, window, args.batch))]
                for name, way in (ways if r % 2 == 0 else ways[::-1]):
                    t0 = time.perf_counter()
                    out = way()
                    t = time.perf_counter() - t0
                    if t < best.get(name, (np.inf,))[0]:
                        best[name] = (t, out)
            (a, ea), (b, eb) = best["per file"], best["shared"]
            diff = float(np.abs(ea - eb).max() / max(np.abs(ea).max(), 1e-12))
            print(f"{Path(folder).name} ({len(waves)} files, {seconds:.0f} s) {Path(spec).name}: "
                  f"per file {1e3 * a / len(waves):.2f} ms, shared calls "
                  f"{1e3 * b / len(waves):.2f} ms per file: {a / b:.2f}x faster; "
                  f"max difference {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
