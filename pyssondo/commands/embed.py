"""ssondo embed: run an exported student (or any model) on audio files -> .npy."""
from __future__ import annotations

import argparse

from pyssondo.window_batches import DEFAULT_BATCH

HELP = "embed audio files with an exported student or any model -> .npy [N, D]"
DESCRIPTION = """\
Runs MODEL (a file written by 'ssondo export', any TorchScript model, an .onnx student run by
onnxruntime (pip install 'ssondo[onnx]'), or pkg.module:factory) on each audio file (folders
are scanned recursively), decoded and resampled to the model's rate, and writes one embedding
per file as float32 [N, D] to the .npy file (frame outputs [F, D] are averaged over frames).
The file order is the order given (folders sorted); -v prints one line per file as it is done.

An exported student embeds the windows of all files together, --batch windows per call (the
same numbers as one call per file; much faster on many short files, and int8 students keep
their speed: every call has the same shape). Other models get one call per file.

examples:
  ssondo embed student.pt a.wav b.flac -o emb.npy
  ssondo embed student.pt audio/ -o emb.npy -v
  ssondo embed student.onnx a.wav -o emb.npy --threads 1
  ssondo embed student-int8.pt clips/ -o emb.npy --batch 32
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="exported student (.pt or .onnx), TorchScript file or pkg.mod:fn")
    p.add_argument("audio", nargs="+", help="audio files or folders")
    p.add_argument("-o", "--output", required=True, help=".npy file to write ([N, D] float32)")
    p.add_argument("--sr", type=int, default=None,
                   help="model input rate in Hz, when the model does not say")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, metavar="N",
                   help=f"windows per call of an exported student, files sharing calls "
                        f"(default: {DEFAULT_BATCH})")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="print one line per file")


def audio_files(items):
    """Files in the order given; folders contribute their audio files, sorted."""
    from pathlib import Path

    from pyssondo.audio import AUDIO_EXTENSIONS

    out = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
            if not found:
                raise ValueError(f"{path}: no audio files ({', '.join(AUDIO_EXTENSIONS)})")
            out += found
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return out


def run(args: argparse.Namespace) -> int:
    import io
    import time

    import numpy as np
    import torch

    from pyssondo.atomic import atomic_write_bytes
    from pyssondo.audio import load_audio
    from pyssondo.loading import forward_checked, load_model
    from pyssondo.window_batches import embed_files, student_segments, student_window

    if args.batch < 1:
        raise ValueError(f"embed: --batch {args.batch} must be >= 1 window per call")
    if args.threads:
        torch.set_num_threads(args.threads)
    files = audio_files(args.audio)
    model = load_model(args.model, args.sr, device=args.device, role="model")
    what = f"model {args.model}"
    seconds: dict = {}

    def decoded():
        for path in files:
            wav, _ = load_audio(path, model.sample_rate)
            seconds[path] = wav.shape[0] / model.sample_rate
            yield path, wav

    def per_file():
        for path, wav in decoded():
            out = forward_checked(model.module, torch.from_numpy(wav)[None].to(args.device),
                                  what=what, names=str(path))
            out = out.float().reshape(out.shape[0], -1, out.shape[-1]).mean(1)
            yield path, out[0].cpu().numpy()

    window = student_window(model.meta, model.module)
    done = per_file() if window is None else embed_files(
        student_segments(model.module, what, args.device), decoded(), window, args.batch)
    rows = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for path, emb in done:
            rows.append(emb)
            if getattr(args, "verbose", False):
                print(f"{path}: {emb.shape[0]} dims, {seconds[path]:.2f} s of audio, done at "
                      f"{1e3 * (time.perf_counter() - t0):.1f} ms")
    elapsed = time.perf_counter() - t0
    dims = {r.shape[0] for r in rows}
    if len(dims) != 1:
        raise ValueError(f"{args.model}: embeddings of different sizes {sorted(dims)}")
    buf = io.BytesIO()
    np.save(buf, np.stack(rows).astype(np.float32))
    atomic_write_bytes(args.output, buf.getvalue())
    audio = sum(seconds.values())
    calls = ("one call per file" if window is None else
             f"{args.batch} window{'s' if args.batch > 1 else ''} per call")
    print(f"wrote {args.output}: {len(rows)} x {rows[0].shape[0]} ({model.name} at "
          f"{model.sample_rate} Hz); {audio:.1f} s of audio in {elapsed:.2f} s "
          f"({audio / max(elapsed, 1e-9):.0f}x real time, decoding included, {calls})")
    return 0
