"""ssondo init: a shared initialisation for students that will be merged by task arithmetic."""
from __future__ import annotations

import argparse

from pyssondo.names import STUDENTS

HELP = "write a student's initial weights, shared by runs that 'ssondo merge' combines"
DESCRIPTION = """\
Builds STUDENT with randomly initialised weights (torch seeded with --seed) and saves its state
dict (the format 'ssondo distill --init' reads). Runs distilled with --init FILE record the
fingerprint of these weights; 'ssondo merge FILE RUN...' refuses runs that started elsewhere.

examples:
  ssondo init mn04 -o init.pt --seed 0
  ssondo init mn01 -o init.pt --seed 3 --n-mels 64   # for runs with a 64-band front end
  ssondo distill crepe.pt audio/ --student mn04 --init init.pt
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("student", metavar="STUDENT",
                   help=f"student architecture: {STUDENTS} (sizes: 'ssondo students')")
    p.add_argument("-o", "--out", required=True, help="state dict file to write (.pt)")
    p.add_argument("--seed", type=int, default=0, help="torch seed of the weights (default 0)")
    p.add_argument("--n-mels", type=int, default=None,
                   help="mel bands of the runs' front end (default: the default front end's, 128)")


def run(args: argparse.Namespace) -> int:
    from pyssondo.frontend import MelConfig
    from pyssondo.merging.task_vectors import initial_weights, save_weights

    n_mels = MelConfig().n_mels if args.n_mels is None else args.n_mels
    state = initial_weights(args.student, n_mels=n_mels, seed=args.seed)
    fingerprint = save_weights(state, args.out)
    print(f"wrote {args.out}: {args.student} initial weights, seed {args.seed}, {n_mels} mels "
          f"(fingerprint {fingerprint[:12]})")
    return 0
