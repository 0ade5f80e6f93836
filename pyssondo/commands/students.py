"""ssondo students: the student architectures with their size and cost."""
from __future__ import annotations

import argparse

HELP = "list the student architectures: parameters, embedding size, MACs"
DESCRIPTION = """\
Prints every registered student with its family, parameter count (backbone only; the mapping
head used during distillation is discarded at export), embedding size, and multiply-accumulates
for one input of --frames log-mel frames (default: 10 s at the default front end, 32 kHz, hop
512 = 624 frames), with a one-line description.

examples:
  ssondo students
  ssondo students --frames 312       # 5 s
  ssondo students --n-mels 64
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=int, default=None,
                   help="log-mel frames of the input the MACs are counted for "
                        "(default: 10 s with the default front end)")
    p.add_argument("--n-mels", type=int, default=None,
                   help="mel bands (default: the default front end's, 128)")


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def run(args: argparse.Namespace) -> int:
    from pyssondo.config import MelConfig
    from pyssondo.errors import ParameterError

    cfg = MelConfig()
    n_mels = cfg.n_mels if args.n_mels is None else args.n_mels
    frames = cfg.num_frames(10 * cfg.sample_rate) if args.frames is None else args.frames
    if frames < 1:
        raise ParameterError(f"--frames {frames} is invalid: expected >= 1")
    if n_mels < 1:
        raise ParameterError(f"--n-mels {n_mels} is invalid: expected >= 1")

    from pyssondo.students import count_macs, count_params, create_student, list_students
    from pyssondo.students import student_entry

    print(f"MACs for one input of {n_mels} mels x {frames} frames")
    print(f"{'name':<12} {'family':<12} {'params':>8} {'dim':>5} {'MACs':>8}  description")
    for name in list_students():
        entry = student_entry(name)
        model = create_student(name, n_mels=n_mels)
        print(f"{name:<12} {entry.family:<12} {count_params(model) / 1e6:>7.2f}M "
              f"{model.embed_dim:>5} {_human(count_macs(model, n_mels, frames)):>8}  "
              f"{entry.description}")
    return 0
