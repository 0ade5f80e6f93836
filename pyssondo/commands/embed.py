"""ssondo embed: run an exported student (or any model) on audio files -> .npy."""
from __future__ import annotations

import argparse

HELP = "embed audio files with an exported student or any model -> .npy [N, D]"
DESCRIPTION = """\
Runs MODEL (a file written by 'ssondo export', any TorchScript model, an .onnx student run by
onnxruntime (pip install 'ssondo[onnx]'), or pkg.module:factory) on each audio file (folders
are scanned recursively), decoded and resampled to the model's rate, and writes one embedding
per file as float32 [N, D] to the .npy file (frame outputs [F, D] are averaged over frames).
The file order is the order given (folders sorted); -v prints one line per file with its time.

examples:
  ssondo embed student.pt a.wav b.flac -o emb.npy
  ssondo embed student.pt audio/ -o emb.npy -v
  ssondo embed student.onnx a.wav -o emb.npy --threads 1
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

    if args.threads:
        torch.set_num_threads(args.threads)
    files = audio_files(args.audio)
    model = load_model(args.model, args.sr, device=args.device, role="model")
    rows = []
    with torch.no_grad():
        for path in files:
            t0 = time.perf_counter()
            wav, _ = load_audio(path, model.sample_rate)
            out = forward_checked(model.module, torch.from_numpy(wav)[None].to(args.device),
                                  what=f"model {args.model}", names=str(path))
            emb = out.float().reshape(out.shape[0], -1, out.shape[-1]).mean(1)[0].cpu().numpy()
            rows.append(emb)
            if getattr(args, "verbose", False):
                print(f"{path}: {emb.shape[0]} dims, {wav.shape[0] / model.sample_rate:.2f} s "
                      f"of audio in {1e3 * (time.perf_counter() - t0):.1f} ms")
    dims = {r.shape[0] for r in rows}
    if len(dims) != 1:
        raise ValueError(f"{args.model}: embeddings of different sizes {sorted(dims)}")
    buf = io.BytesIO()
    np.save(buf, np.stack(rows).astype(np.float32))
    atomic_write_bytes(args.output, buf.getvalue())
    print(f"wrote {args.output}: {len(rows)} x {rows[0].shape[0]} ({model.name} at "
          f"{model.sample_rate} Hz)")
    return 0
