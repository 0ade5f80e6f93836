"""ssondo export: a run folder -> one TorchScript student file with the front end inside."""
from __future__ import annotations

import argparse

HELP = "export a trained student to TorchScript (waveform in, embedding out)"
DESCRIPTION = """\
Writes the student of RUN_DIR as one TorchScript file: forward(wav [B, T]) -> [B, D] at the
student's sample rate with the log-mel front end inside, any length T >= 1 (long inputs are
cut into training-length windows and averaged), plus segments(wav) -> [B, S, D] per window.
Metadata (sample rate, front end, teacher, training summary) is stored as ssondo.json inside.
The file is reloaded and compared with eager output before success is reported; size,
parameters and latency for 10 s of audio are printed, with the command that builds the C++ app.

examples:
  ssondo export runs/20260101-120000-mn10-teacher -o student.pt
  ssondo export runs/20260101-120000-mn10-teacher -o student-proj.pt --projected
  ssondo export runs/20260101-120000-mn10-teacher -o student-int8.pt --int8 --checkpoint last
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder written by 'ssondo distill'")
    p.add_argument("-o", "--output", required=True, help="TorchScript file to write")
    p.add_argument("--projected", action="store_true",
                   help="keep the mapping head: output embeddings in the teacher's space")
    p.add_argument("--int8", action="store_true",
                   help="dynamic int8 quantisation of Linear layers; reports size, speed and "
                        "cosine similarity to the float32 export")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="which checkpoint to export (default: best)")
    p.add_argument("--threads", type=int, default=0, help="torch threads for the latency check")


def run(args: argparse.Namespace) -> int:
    import torch

    from pyssondo.export import export_run

    if args.threads:
        torch.set_num_threads(args.threads)
    export_run(args.run_dir, args.output, projected=args.projected, int8=args.int8,
               which=args.checkpoint)
    return 0
