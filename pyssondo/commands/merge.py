"""ssondo merge: one student from several distilled from different teachers (task arithmetic)."""
from __future__ import annotations

import argparse

HELP = "merge students distilled from different teachers by task arithmetic"
DESCRIPTION = """\
Task arithmetic (Ritter-Gutierrez et al. 2025): students distilled from different teachers,
all started from the same weights BASE (distill them with --init BASE), are merged as
    theta = theta_0 + sum_i lambda_i (theta_i - theta_0).
BASE and RUN are run folders, checkpoints or state-dict files; the runs must be run folders
of the same student and front end. Writes an exported student (waveform in, backbone
embedding out; the heads map to different teachers and are left out), and with --weights the
merged weights, usable with 'ssondo distill --init'.

examples:
  ssondo distill crepe.pt audio/ --student mn04 --init init.pt --out runs/
  ssondo distill aisfx.pt audio/ --student mn04 --init init.pt --out runs/
  ssondo merge init.pt runs/*-mn04-crepe runs/*-mn04-aisfx -o merged.pt
  ssondo merge init.pt runA runB --lambdas 0.7,0.3 -o merged.pt --weights merged_weights.pt
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", metavar="BASE", help="theta_0: the weights every run started from")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders of the distilled students")
    p.add_argument("--lambdas", default=None,
                   help="comma-separated weight per run (default: 1/number of runs each)")
    p.add_argument("-o", "--out", required=True, help="exported merged student (.pt)")
    p.add_argument("--weights", default=None, help="also save the merged weights here")
    p.add_argument("--checkpoint", choices=("best", "last"), default="last",
                   help="which checkpoint of each run to merge (default: last)")


def run(args: argparse.Namespace) -> int:
    import io
    from pathlib import Path

    import torch

    from pyssondo.atomic import atomic_write_bytes
    from pyssondo.export import format_report, save_export, wrap
    from pyssondo.merge import merge_task_vectors
    from pyssondo.students import create_student
    from pyssondo.train.checkpoint import load_checkpoint, load_student_weights
    from pyssondo.train.config import DistillConfig
    from pyssondo.train.rundir import RunDir

    lambdas = _parse_lambdas(args.lambdas, len(args.runs))
    configs, states = [], []
    for spec in args.runs:
        run_dir = RunDir(spec)
        if not run_dir.config.is_file():
            raise FileNotFoundError(f"{spec}: not a run folder (no config.json)")
        path = run_dir.best if args.checkpoint == "best" and run_dir.best.is_file() else run_dir.last
        state = load_checkpoint(path)
        configs.append(DistillConfig.from_json(state["config"]))
        states.append(state["student"])
    first = configs[0]
    for spec, cfg in zip(args.runs[1:], configs[1:]):
        if (cfg.student, cfg.mel, cfg.window_s) != (first.student, first.mel, first.window_s):
            raise ValueError(f"{spec}: student {cfg.student} / front end / window differ from "
                             f"{args.runs[0]}'s ({first.student}); merge needs the same student")
    merged = merge_task_vectors(load_student_weights(args.base), states, lambdas, args.runs)
    if args.weights:
        buf = io.BytesIO()
        torch.save(merged, buf)
        atomic_write_bytes(args.weights, buf.getvalue())
        print(f"wrote merged weights to {args.weights}")
    student = create_student(first.student, n_mels=first.mel.n_mels)
    student.load_state_dict(merged)
    module = wrap(student, None, first.mel, first.window_s)
    meta = {"mel": first.mel.to_dict(), "projected": False, "window_s": first.window_s,
            "student": first.student,
            "merge": {"base": str(args.base), "runs": [Path(r).name for r in args.runs],
                      "lambdas": lambdas}}
    print(format_report(save_export(module, args.out, meta)))
    return 0


def _parse_lambdas(text, n: int):
    if text is None:
        return [1.0 / n] * n
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--lambdas {text!r}: expected comma-separated numbers") from None
    if len(values) != n:
        raise ValueError(f"--lambdas {text!r}: {len(values)} values for {n} runs; give one per run")
    return values
