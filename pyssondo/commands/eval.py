"""ssondo eval: linear probes and kNN on labeled audio; how much of the teacher a student keeps."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

HELP = "score models on labeled audio (linear probe, kNN) and compare a student with its teacher"
DESCRIPTION = """\
Embeds labeled audio with each MODEL, fits a linear probe and a cosine kNN on frozen
embeddings, and prints accuracy / macro-F1 (mAP for multi-label data) as mean ± 95% CI over
folds. All models see the same files and the same splits. Probe settings (weight decay,
epochs, k) are chosen on a validation part of the training folds; test folds are used once.

Positional arguments are MODELs and DATA, told apart by what they are:
  DATA   a folder with one sub-folder per class, or a .csv file (path,label[,fold]; several
         labels separated by ';'; paths relative to the CSV; other columns picked with
         --label-column / --split-column). Use --data PATH to force a path to be DATA.
  MODEL  'logmel' (time-averaged log-mel at 32 kHz: a cheap baseline, always include it),
         a TorchScript file (exported student, teacher file), an .onnx student (run by
         onnxruntime) or pkg.module:factory.
--task, --label-column and --split-column are given once for all DATA or once per DATA, in
order. A CSV with a 'fold' column uses it unless --folds is given; split values train/test
(and optionally valid) form one fixed split, other values are folds.

examples:
  ssondo eval logmel student.pt data/esc50/               # folder of class folders, 5-fold
  ssondo eval logmel student.pt fsdd/labels.csv --label-column digit --split-column split
  ssondo eval logmel fsdd/labels.csv fsdd/labels.csv --label-column digit \\
      --label-column speaker --task digits --task speakers --probe knn
  ssondo eval --compare student.pt --teacher teacher.pt logmel esc50/ notes/labels.csv \\
      --label-column category --label-column family --out report.json --md report.md
  ssondo eval logmel student.pt notes/labels.csv --label-column family --plot notes.png
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..evaluation.config import EvalConfig  # standard library only

    d = EvalConfig()
    p.add_argument("items", nargs="*", metavar="MODEL|DATA",
                   help="models (logmel, TorchScript file, pkg.mod:fn) and labeled data "
                        "(folder or .csv)")
    p.add_argument("--data", action="append", default=[], metavar="DATA",
                   help="labeled data given explicitly (repeatable)")
    p.add_argument("--compare", metavar="STUDENT",
                   help="student model to compare with --teacher (percentage of the teacher)")
    p.add_argument("--teacher", metavar="TEACHER", help="teacher model for --compare")
    p.add_argument("--task", action="append", default=[], metavar="NAME",
                   help="task name in reports (once, or once per DATA)")
    p.add_argument("--label-column", action="append", default=[], metavar="COL",
                   help="CSV column with the labels (default: 'label', else the second column)")
    p.add_argument("--split-column", action="append", default=[], metavar="COL",
                   help="CSV column with fixed folds or train/test (default: 'fold' if present)")
    p.add_argument("--folds", type=int, default=None,
                   help=f"stratified k-fold with this k, ignoring any fold column "
                        f"(default {d.folds} when there is no split column)")
    p.add_argument("--probe", choices=("linear", "knn", "both"), default="both",
                   help="probe(s) to fit (default: both)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"folds and probes seed (default {d.seed})")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help=f"share of training files used for validation (default {d.val_fraction})")
    p.add_argument("--sr", type=int, default=None, metavar="HZ",
                   help="sample rate of every MODEL and of --compare (overrides the model's own)")
    p.add_argument("--teacher-sr", type=int, default=None, metavar="HZ",
                   help="sample rate of --teacher (overrides the model's own)")
    p.add_argument("--window", type=float, default=d.window_s, metavar="S",
                   help=f"files longer than this are embedded in windows of S seconds and "
                        f"averaged (default {d.window_s})")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"windows per model call (default {d.batch_size})")
    p.add_argument("--device", default="cpu", help="torch device for the models (default cpu)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="embedding cache folder (default $XDG_CACHE_HOME/ssondo/eval or "
                        "~/.cache/ssondo/eval)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write cached embeddings")
    p.add_argument("--out", type=Path, default=None, metavar="JSON", help="write the report as JSON")
    p.add_argument("--md", type=Path, default=None, metavar="MD", help="write the report as Markdown")
    p.add_argument("--plot", type=Path, default=None, metavar="PNG",
                   help="2-D PCA / t-SNE of each model's embeddings (needs matplotlib); with "
                        "several tasks, one file per task: PNG stem + '-<task>'")
    p.add_argument("--projection", choices=("pca", "tsne", "both"), default="both",
                   help="2-D projections in --plot (default both; t-SNE needs scikit-learn)")


def split_items(items, explicit_data):
    """Sorts positional items into (models, data): folders and .csv files are data; 'logmel',
    pkg.mod:fn specs and other files are models. A missing path is an error naming it."""
    from ..evaluation.embed import LOGMEL
    from ..loading import is_factory_spec

    models, data = [], list(explicit_data)
    for item in items:
        path = Path(item)
        if item == LOGMEL or (not path.exists() and is_factory_spec(item)):
            models.append(item)
        elif path.is_dir() or (path.is_file() and path.suffix.lower() == ".csv"):
            data.append(item)
        elif path.is_file():
            models.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder (a MODEL is 'logmel', a "
                                    f"model file or pkg.mod:fn; DATA is a folder or a .csv)")
    return models, data


def _per_data(values, n, option):
    if not values:
        return [None] * n
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise ValueError(f"{option} given {len(values)} times for {n} DATA; give it once or "
                         f"once per DATA")
    return values


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ssondo" / "eval"


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from ..evaluation import data as data_mod
    from ..evaluation.embed import LOGMEL, open_embedder
    from ..evaluation.config import EvalConfig
    from ..evaluation.evaluate import evaluate
    from ..evaluation.report import compare, format_table, write_json, write_markdown

    if args.folds is not None and args.folds < 2:
        raise ValueError(f"--folds {args.folds}: expected at least 2 folds")
    if not args.window > 0:
        raise ValueError(f"--window {args.window:g}: expected a window > 0 seconds")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size}: expected a positive integer")
    models, data = split_items(args.items, args.data)
    if bool(args.compare) != bool(args.teacher):
        raise ValueError("--compare STUDENT and --teacher TEACHER go together")
    if args.teacher_sr and not args.teacher:
        raise ValueError("--teacher-sr applies to --teacher; use --sr for MODELs")
    if args.compare:
        models = [args.compare, args.teacher] + models
    if not models:
        raise ValueError("no MODEL given: name 'logmel', a model file or pkg.mod:fn")
    if not data:
        raise ValueError("no DATA given: a folder with one sub-folder per class or a .csv file")
    if args.plot:
        from ..evaluation.plots import require_matplotlib

        require_matplotlib()
    n = len(data)
    names = _per_data(args.task, n, "--task")
    labels = _per_data(args.label_column, n, "--label-column")
    splits = _per_data(args.split_column, n, "--split-column")
    if args.folds is not None and args.split_column:
        raise ValueError("--folds and --split-column exclude each other")
    tasks = [data_mod.load_labeled(src, name=name, label_column=label, split_column=split,
                                   use_fold_column=args.folds is None)
             for src, name, label, split in zip(data, names, labels, splits)]

    embedders = []
    for i, spec in enumerate(models):
        is_teacher = bool(args.compare) and i == 1
        sr = args.teacher_sr if is_teacher else (None if spec == LOGMEL else args.sr)
        embedders.append(open_embedder(spec, sr, device=args.device,
                                       role="teacher" if is_teacher else "model"))
    defaults = EvalConfig()
    cfg = dataclasses.replace(
        defaults, folds=defaults.folds if args.folds is None else args.folds, seed=args.seed,
        val_fraction=args.val_fraction, window_s=args.window, batch_size=args.batch_size,
        probes=("linear", "knn") if args.probe == "both" else (args.probe,))
    cache_dir = None if args.no_cache else (args.cache_dir or _default_cache_dir())
    result = evaluate(embedders, tasks, cfg, cache_dir=cache_dir)
    report = result.report
    if args.compare:
        report["compare"] = compare(report, report["models"][0]["name"],
                                    report["models"][1]["name"])
    print(format_table(report))
    if args.out:
        write_json(report, args.out)
        print(f"wrote {args.out}")
    if args.md:
        write_markdown(report, args.md)
        print(f"wrote {args.md}")
    if args.plot:
        from ..evaluation.plots import plot_embeddings

        for task in result.tasks:
            path = args.plot if len(result.tasks) == 1 else args.plot.with_name(
                f"{args.plot.stem}-{task.name}{args.plot.suffix or '.png'}")
            plot_embeddings(result.embeddings[task.name], [e.labels[0] for e in task.examples],
                            path, title=task.name, seed=args.seed,
                            projection=args.projection)
            print(f"wrote {path}")
    return 0
