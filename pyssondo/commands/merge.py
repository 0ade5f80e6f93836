"""ssondo merge: one student from several distilled from different teachers (task arithmetic)."""
from __future__ import annotations

import argparse

HELP = "merge students distilled from different teachers by task arithmetic"
DESCRIPTION = """\
Task arithmetic (Ritter-Gutierrez et al. 2025): students distilled from different teachers,
all started from the same weights BASE (made by 'ssondo init', distilled with --init BASE), are
merged as
    theta = theta_0 + sum_i lambda_i (theta_i - theta_0).
Batch-norm running statistics are not extrapolated: they are the students' statistics mixed
with weights lambda_i / sum lambda_i (--bn interpolate), or recomputed on unlabeled audio
(--bn recalibrate; audio from --recalibrate DIR, else the runs' own training audio).
BASE is a state-dict file, checkpoint or run; each RUN is a run folder that started from BASE
(checked by fingerprint) with the same student, front end and window.

Writes an exported student: waveform in, backbone embedding out. With --projected the output
is one parent's teacher space, through that run's head (--head-from RUN). --weights also saves
the merged weights (usable with 'ssondo distill --init').

--search DATA picks the lambdas: every lambda tuple of --grid that sums to 1 (for two runs,
(l, 1 - l)) and every parent alone are scored on DATA with the probes of 'ssondo eval'; a
candidate's share of a task is its score / the best parent's score there; the candidate with
the highest mean share (weighted by --task-weights) is exported. The table is printed and
drawn (--plot, needs matplotlib).

--search-unlabeled AUDIO_DIR picks them without labels, by the same rule: a candidate's score
against each parent is the kNN agreement of its backbone embedding with that parent's teacher
on AUDIO_DIR's segments (the measure best.pt follows); the teacher is the file the run's
config.json names (it must exist and be the run's teacher: sha256 checked), its embeddings
come from the teacher cache under --cache-dir (default FOLDER/cache/<audio>-<hash>, FOLDER
being -o's folder, where 'ssondo distill --out FOLDER' keeps its caches: nothing is recomputed
when the cache is there). --task-weights then weighs parents by name.

examples:
  ssondo init mn04 -o init.pt --seed 0
  ssondo distill crepe.pt audio/ --student mn04 --init init.pt --out runs/
  ssondo distill aisfx.pt audio/ --student mn04 --init init.pt --out runs/
  ssondo merge init.pt runs/*-mn04-crepe runs/*-mn04-aisfx -o merged.pt
  ssondo merge init.pt runA runB --lambdas 0.7,0.3 -o merged.pt --weights merged_weights.pt
  ssondo merge init.pt runA runB --search notes/labels.csv notes/labels.csv \\
      --label-column pitch_class --label-column program --grid 0:1:0.1 -o merged.pt
  ssondo merge init.pt runs/*-mn04-crepe runs/*-mn04-aisfx --search-unlabeled audio/ \\
      --grid 0:1:0.1 -o runs/merged.pt
  ssondo merge init.pt runA runB --lambdas 0.5,0.5 --projected --head-from runA -o m.pt
"""

BN_MODES = ("interpolate", "recalibrate")
DEFAULT_BN = "interpolate"  # measured by bench/merge.py (see README)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", metavar="BASE", help="theta_0: the weights every run started from")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders of the distilled students")
    p.add_argument("--lambdas", default=None,
                   help="comma-separated weight per run (default: 1/number of runs each)")
    p.add_argument("-o", "--out", required=True, help="exported merged student (.pt)")
    p.add_argument("--weights", default=None, help="also save the merged weights here")
    p.add_argument("--checkpoint", choices=("best", "last"), default="last",
                   help="which checkpoint of each run to merge (default: last)")
    p.add_argument("--bn", choices=BN_MODES, default=None,
                   help=f"batch-norm statistics: interpolated, or recomputed on audio "
                        f"(default {DEFAULT_BN}; recalibrate when --recalibrate is given)")
    p.add_argument("--recalibrate", action="append", default=[], metavar="AUDIO_DIR",
                   help="unlabeled audio to recompute batch-norm statistics on (repeatable)")
    p.add_argument("--projected", action="store_true",
                   help="export teacher-space outputs through the head of --head-from RUN")
    p.add_argument("--head-from", default=None, metavar="RUN",
                   help="the RUN whose mapping head --projected uses")
    p.add_argument("--search", nargs="+", default=None, metavar="DATA",
                   help="labeled data (folder or .csv, as for 'ssondo eval') to choose lambdas on")
    p.add_argument("--search-unlabeled", default=None, metavar="AUDIO_DIR",
                   help="unlabeled audio to choose lambdas on by the kNN agreement of the "
                        "merge with each parent's teacher")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="teacher-cache root (or one cache folder) for --search-unlabeled "
                        "(default: -o's folder/cache/<audio>-<hash>)")
    p.add_argument("--label-column", action="append", default=[], metavar="COL",
                   help="CSV label column (once, or once per --search DATA)")
    p.add_argument("--task", action="append", default=[], metavar="NAME",
                   help="task name (once per --search DATA)")
    p.add_argument("--grid", default="0:1:0.1",
                   help="lambda values START:STOP:STEP or a list (default 0:1:0.1)")
    p.add_argument("--task-weights", default=None, metavar="TASK=W,...",
                   help="weights of the tasks (--search) or parents (--search-unlabeled, "
                        "by the names the table shows) in the mean share (default 1 each)")
    p.add_argument("--probe", choices=("linear", "knn", "both"), default="knn",
                   help="probe(s) scoring the search (default knn: fast)")
    p.add_argument("--folds", type=int, default=None,
                   help="stratified k-fold for the search (default 5; a fold column is used "
                        "when present and --folds is not given)")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="draw the search table (default OUT stem + '-search.png' when "
                        "matplotlib is installed)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pyssondo.export import config_fields, format_report, save_export, wrap
    from pyssondo.merging.task_vectors import bn_weights, save_weights
    from pyssondo.merging.runs import load_parents, merged_student

    # Settings first, before anything expensive.
    unlabeled = args.search_unlabeled is not None
    searching = args.search is not None or unlabeled
    if args.search is not None and unlabeled:
        raise ValueError("--search and --search-unlabeled exclude each other: choose lambdas "
                         "on labeled data or on unlabeled audio")
    option = "--search-unlabeled" if unlabeled else "--search"
    if searching and args.lambdas is not None:
        raise ValueError(f"--lambdas and {option} exclude each other: {option} chooses them")
    if args.cache_dir and not unlabeled:
        raise ValueError("--cache-dir goes with --search-unlabeled")
    if unlabeled and (args.label_column or args.task or args.folds):
        raise ValueError("--label-column, --task and --folds go with --search (labeled data), "
                         "not --search-unlabeled")
    if unlabeled and not Path(args.search_unlabeled).is_dir():
        raise FileNotFoundError(f"--search-unlabeled {args.search_unlabeled}: no such folder")
    lambdas = None if searching else _parse_lambdas(args.lambdas, len(args.runs))
    if lambdas is not None:
        bn_weights(lambdas)
    mode = args.bn or ("recalibrate" if args.recalibrate else DEFAULT_BN)
    if args.recalibrate and mode != "recalibrate":
        raise ValueError(f"--recalibrate goes with --bn recalibrate, not --bn {mode}")
    for d in args.recalibrate:
        if not Path(d).is_dir():
            raise FileNotFoundError(f"--recalibrate {d}: no such folder")
    if args.head_from and not args.projected:
        raise ValueError("--head-from RUN goes with --projected")
    head_index = None
    if args.projected:
        if not args.head_from:
            raise ValueError("--projected: the merged runs' heads map to different teachers; "
                             "choose one with --head-from RUN (one of the RUNs)")
        matches = [i for i, r in enumerate(args.runs)
                   if Path(r).resolve() == Path(args.head_from).resolve()]
        if not matches:
            raise ValueError(f"--head-from {args.head_from}: not one of the RUNs "
                             f"({', '.join(args.runs)})")
        head_index = matches[0]
    if searching:
        search = _search_settings(args)

    base, parents = load_parents(args.base, args.runs, args.checkpoint)
    cfg = parents[0].cfg
    if unlabeled:  # the parents' names and teachers are known now; still no audio read
        from pyssondo.merging.agreement import teacher_files
        from pyssondo.merging.search import parse_task_weights

        search["weights"] = parse_task_weights(args.task_weights, [p.name for p in parents])
        search["teachers"] = [teacher_files(p) for p in parents]
    bn_batches = None
    if mode == "recalibrate":
        from pyssondo.merging.recalibrate import audio_windows, log_mel_batches

        dirs = args.recalibrate or sorted({p.cfg.audio for p in parents
                                           if p.cfg.audio and Path(p.cfg.audio).is_dir()})
        if not dirs:
            raise ValueError("--bn recalibrate: the runs' training audio is gone; give "
                             "--recalibrate AUDIO_DIR")
        bn_batches = list(log_mel_batches(
            audio_windows(dirs, cfg.mel.sample_rate, cfg.window_s), cfg.mel))
        print(f"batch-norm statistics recomputed on {sum(len(b) for b in bn_batches)} windows "
              f"of {', '.join(map(str, dirs))}")
    meta_search = None
    if searching:
        lambdas, meta_search = _run_search(search, parents, base, bn_batches, mode)

    student = merged_student(parents, base, lambdas, bn_batches)
    if args.weights:
        save_weights(student.state_dict(), args.weights)
        print(f"wrote merged weights to {args.weights}")
    head, teacher = None, None
    if head_index is not None:  # that run's head, then its inverse target normalisation
        from pyssondo.train.model import model_from_checkpoint

        chosen = parents[head_index]
        _, _, head = model_from_checkpoint(chosen.state)
        teacher = chosen.teacher
    module = wrap(student, head, cfg.mel, cfg.window_s)
    meta = {**config_fields(cfg, args.projected),
            "merge": {"base": str(args.base), "runs": [Path(r).name for r in args.runs],
                      "lambdas": list(lambdas), "bn": mode,
                      **({"search": meta_search} if meta_search else {})}}
    if teacher is not None:
        meta["teacher"] = teacher
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


def _search_settings(args):
    """The search's grid and plot path and, for --search, its tasks, evaluation settings and
    weights, validated (--search-unlabeled's weights need the parents' names: see run)."""
    import dataclasses
    from pathlib import Path

    from pyssondo.merging.search import parse_grid, simplex_grid

    grid = simplex_grid(len(args.runs), parse_grid(args.grid))
    if args.plot:
        from pyssondo.evaluation.plots import require_matplotlib

        require_matplotlib()
        plot = Path(args.plot)
    else:
        try:
            import matplotlib  # noqa: F401
            plot = Path(args.out).with_name(Path(args.out).stem + "-search.png")
        except ImportError:
            plot = None
    if args.search is None:
        from pyssondo.cache.open import default_cache_root

        audio = args.search_unlabeled
        root = args.cache_dir or default_cache_root(Path(args.out).parent, audio)
        return {"grid": grid, "plot": plot, "audio": audio, "cache_root": root}
    from pyssondo.commands.eval import _per_data
    from pyssondo.evaluation import data as data_mod
    from pyssondo.evaluation.config import EvalConfig
    from pyssondo.merging.search import parse_task_weights

    n = len(args.search)
    labels = _per_data(args.label_column, n, "--label-column")
    names = _per_data(args.task, n, "--task")
    tasks = [data_mod.load_labeled(src, name=name or (label if label else None),
                                   label_column=label, use_fold_column=args.folds is None)
             for src, name, label in zip(args.search, names, labels)]
    task_names = [t.name for t in tasks]
    if len(set(task_names)) < len(task_names):
        raise ValueError(f"--search: tasks {task_names} share names; name them with --task")
    weights = parse_task_weights(args.task_weights, task_names)
    d = EvalConfig()
    cfg = dataclasses.replace(d, folds=args.folds or d.folds,
                              probes=("linear", "knn") if args.probe == "both" else (args.probe,))
    return {"grid": grid, "tasks": tasks, "cfg": cfg, "weights": weights, "plot": plot,
            "audio": None}


def _run_search(search, parents, base, bn_batches, mode):
    """Scores the grid, prints the table, draws it; returns (chosen lambdas, a JSON summary)."""
    from pyssondo.merging.runs import score_candidates
    from pyssondo.merging.search import (choose, format_search, objective, plot_search,
                                       references)

    n_par = len(parents)
    if search["audio"] is not None:
        from pyssondo.merging.agreement import MEASURE, agreement_candidates

        candidates, chance = agreement_candidates(
            parents, base, search["grid"], search["teachers"], search["audio"],
            search["cache_root"], bn_batches=bn_batches, progress=True)
        what = (f"--search-unlabeled {search['audio']}", f"{MEASURE} with each parent's teacher",
                "of the best parent per teacher")
    else:
        candidates, _ = score_candidates(parents, base, search["grid"], search["tasks"],
                                         search["cfg"], bn_batches=bn_batches, progress=True)
        what = ("--search", "score (primary metric)", "of the best parent per task")
    reference = references(candidates[:n_par])
    merges = candidates[n_par:]
    best = choose(merges, reference, search["weights"])
    runs = [p.name for p in parents]
    print(format_search(candidates, runs, reference, n_par + best, search["weights"]))
    chosen = merges[best]
    if search["audio"] is not None:
        levels = sorted({f"{100 * v:.1f}" for v in chance.values()})
        print(f"chance level (random embeddings): {', '.join(levels)}; scores near it mean a "
              f"student keeps none of that teacher's neighbourhoods on this audio")
    print(f"chosen: lambdas {', '.join(f'{r}={v:g}' for r, v in zip(runs, chosen.lambdas))} "
          f"(mean share {100 * objective(chosen.scores, reference, search['weights']):.1f}% "
          f"{what[2]})")
    if search["plot"] is not None:
        plot_search(candidates, runs, search["plot"], ylabel=what[1],
                    title=f"ssondo merge {what[0]} (batch-norm statistics: {mode})")
        print(f"wrote {search['plot']}")
    summary = {"bn": mode, "reference": reference, "task_weights": search["weights"],
               **({"unlabeled": str(search["audio"]), "measure": MEASURE, "chance": chance}
                  if search["audio"] is not None else {}),
               "candidates": [{"name": c.name, "lambdas": list(c.lambdas), "scores": c.scores,
                               "parent": c.parent} for c in candidates]}
    return list(chosen.lambdas), summary
