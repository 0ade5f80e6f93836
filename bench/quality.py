"""Quality benchmark: how much of the teacher's skill each student and recipe keeps.

Teacher aisfx (built once from its wheel, as ``ssondo teacher build aisfx`` does). Unlabeled
training audio: ../shared/data/pool plus the FSDD train split (a folder of symlinks made under
--out; the distillation never reads a label). Held-out evaluation, through the same probes as
``ssondo eval`` (pyssondo.evaluation, stratified 4-fold, linear probe and kNN): the notes'
``program`` and ``family`` (instruments the training audio never holds) and the FSDD test split
(rows 0-4 of every digit and speaker, never trained on) ``digit`` and ``speaker``.

For log-mel, the teacher and every student x recipe it prints each score, the mean over the
8 scores and the student's share of the teacher's mean; then the label-free measures of
:mod:`pyssondo.evaluation.agreement` at the end of training, on the held-out validation
segments of the training cache (``val_*``) and on the eval audio (``eval_*``), and the Spearman
rank correlation between each measure and the mean probe score over every student row in
--results (so several invocations build one table and one verdict).

Recipes are named dicts of DistillConfig overrides in RECIPES below (a new lever is one line);
each is applied on top of BASE, the issue's setting (2 s windows, 16 kHz student front end up
to 8 kHz), and on top of --epochs; a recipe's own ``epochs`` wins. Caches are shared: the
teacher cache of the training audio and the students' log-mel are computed once per window and
front end, the eval embeddings of the teacher and log-mel once per data set.

    python bench/quality.py                                  # baseline, mn01 + mn04, 30 epochs
    python bench/quality.py --students mn01 --recipes baseline,rkd,sp --epochs 10
    python bench/quality.py --recipes infonce --results screens.jsonl --threads 1
    python bench/quality.py --list                           # the recipes and their overrides

Cost, measured with --threads 1 on a 2-core machine shared with ~7 other busy sessions (about a
quarter to half a core for this script): teacher cache of the training audio (3100 files, 2 s
windows) 20 min, teacher + log-mel eval embeddings and probes 15 min (both once, kept in
--out); per epoch mn01 ~40-75 s, mn04 ~95-190 s; scoring one run ~2-3 min. On 2 quiet cores
the default set (mn01 and mn04, baseline, 30 epochs) should take well under 40 minutes.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The issue's setting (S-SONDO's raw cosine, best.pt by raw cosine); every recipe starts from it.
BASE: Dict[str, Any] = {"window_s": 2.0, "mel": {"sample_rate": 16000, "f_max": 8000.0},
                        "loss": "cosine", "best_metric": "val_cos", "views": 1,
                        "min_steps_per_epoch": 0, "rounding_noise": 0.0}
# What 'ssondo distill' does by default, where it departs from BASE (the "defaults" recipe).
PRODUCT = ("loss", "target_norm", "best_metric", "min_steps_per_epoch", "max_passes", "views",
           "rounding_noise")
# The defaults before teacher-side views and the small-data passes (the "d-*" levers start
# from them; "d-views4-4pass" is today's "defaults" on this benchmark's 2800 segments).
DEFAULTS_V1: Dict[str, Any] = {"loss": "infonce", "target_norm": "none",
                               "best_metric": "knn_agree_backbone", "min_steps_per_epoch": 0}

# name -> DistillConfig overrides on top of BASE ("mel" entries merge into BASE's mel).
RECIPES: Dict[str, Dict[str, Any]] = {
    # The issue's recipe: S-SONDO's raw cosine, one pass per epoch, best.pt by raw cosine.
    "baseline": {},
    "defaults": None,  # today's 'ssondo distill' defaults (PRODUCT), filled in below
    "rkd": {"loss": "cosine:1,rkd-dist:1,rkd-angle:2"},
    "sp": {"loss": "cosine:1,sp:1"},
    "infonce": {"loss": "infonce"},
    "cos+infonce": {"loss": "cosine:1,infonce:0.5"},
    "linear-head": {"head": "linear"},
    "mixup": {"mixup": 0.4},
    "masks": {"time_mask": 16, "freq_mask": 12},
    "gain": {"gain_db": 6.0},
    "uniform": {"balance_alpha": 0.0},
    "lr2x": {"lr": 1.6e-3},
    "lr-half": {"lr": 4e-4},
    "bs32": {"batch_size": 32},
    "spe2x": {"samples_per_epoch": 6400},
    "ep2x": {"epochs": 60},
    # Targets normalised with the cache's statistics (the head learns them; inverted on export).
    "center": {"target_norm": "center"},
    "standardize": {"target_norm": "standardize"},
    "whiten": {"target_norm": "whiten"},
    "whiten-mse": {"target_norm": "whiten", "loss": "mse"},
    "center-rkd": {"target_norm": "center", "loss": "cosine:1,rkd-dist:1,rkd-angle:2"},
    "whiten-spe2x": {"target_norm": "whiten", "samples_per_epoch": 6400},
    "whiten-infonce": {"target_norm": "whiten", "loss": "cosine:1,infonce:0.5"},
    "whiten-infonce-spe2x": {"target_norm": "whiten", "loss": "cosine:1,infonce:0.5",
                             "samples_per_epoch": 6400},
    "infonce-spe2x": {"loss": "infonce", "samples_per_epoch": 6400},
    "whiten-infonce-only-spe2x": {"target_norm": "whiten", "loss": "infonce",
                                  "samples_per_epoch": 6400},
    # Teacher-side views: K augmented views per segment in the teacher cache.
    "views4": {"views": 4},
    "views8": {"views": 8},
}


def _product_defaults() -> Dict[str, Any]:
    from pyssondo.train.config import DistillConfig

    return {name: getattr(DistillConfig(), name) for name in PRODUCT}


RECIPES["defaults"] = _product_defaults()
# Robustness to int8 rounding (#17) around today's defaults (rounding noise in int8 steps).
RECIPES["defaults-noise1"] = {**RECIPES["defaults"], "rounding_noise": 1.0}  # = defaults here
RECIPES["defaults-noise0"] = {**RECIPES["defaults"], "rounding_noise": 0.0}
RECIPES["defaults-noise3"] = {**RECIPES["defaults"], "rounding_noise": 3.0}
RECIPES["defaults-wd"] = {**RECIPES["defaults"], "weight_decay": 1e-4}
# Levers on top of the defaults before views and passes.
RECIPES["defaults-v1"] = DEFAULTS_V1
RECIPES.update({
    "d-views4": {**DEFAULTS_V1, "views": 4},
    "d-views8": {**DEFAULTS_V1, "views": 8},
    "d-views4-4pass": {**DEFAULTS_V1, "views": 4, "min_steps_per_epoch": 10**6, "max_passes": 4},
    "d-views4-8pass": {**DEFAULTS_V1, "views": 4, "min_steps_per_epoch": 10**6, "max_passes": 8},
    "d-views4-ema": {**DEFAULTS_V1, "views": 4, "ema": 0.995},
    "d-hop1": {**DEFAULTS_V1, "hop_s": 1.0},
    "d-4pass": {**DEFAULTS_V1, "min_steps_per_epoch": 10**6, "max_passes": 4},
    "d-center": {**DEFAULTS_V1, "target_norm": "center"},
    "d-tau05": {**DEFAULTS_V1, "loss": "infonce@tau=0.05"},
    "d-bs256": {**DEFAULTS_V1, "batch_size": 256, "lr": 1.6e-3},
    # Rounding noise without views or passes: the cheapest int8-robust run (eres2net16, #17).
    "d-noise1": {**DEFAULTS_V1, "rounding_noise": 1.0},
})

DATA = Path(os.environ.get("SSONDO_DATA", ROOT.parent / "shared" / "data"))
TASKS = (("notes", "program"), ("notes", "family"), ("fsdd", "digit"), ("fsdd", "speaker"))
FOLDS = 4
TEACHER = "aisfx"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[-2:]))
    p.add_argument("--students", default="mn01,mn04", help="comma-separated (default mn01,mn04)")
    p.add_argument("--recipes", default="baseline", help="comma-separated names of RECIPES "
                   "(default baseline; --list shows them)")
    p.add_argument("--epochs", type=int, default=30, help="epochs unless a recipe sets its own "
                   "(default 30, the issue's)")
    p.add_argument("--threads", type=int, default=2, help="torch and C++ threads (default 2)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (default 0)")
    p.add_argument("--seed", type=int, default=0, help="distillation seed (default 0)")
    p.add_argument("--k", type=int, default=10, help="neighbours of the agreement measures")
    p.add_argument("--checkpoint", choices=("last", "best"), default="last",
                   help="checkpoint scored: last (the end of training, default) or best (by "
                        "validation cosine, what the run's student.pt holds)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "quality",
                   help="caches, the teacher file, run folders (default runs/quality)")
    p.add_argument("--results", type=Path, default=None,
                   help="JSON lines file the rows are appended to (default OUT/results.jsonl)")
    p.add_argument("--rescore", nargs="+", type=Path, default=[], metavar="RUN_DIR",
                   help="score these finished runs (rows of --results) again, e.g. with "
                        "another --checkpoint, instead of training")
    p.add_argument("--list", action="store_true", help="print the recipes and exit")
    args = p.parse_args(argv)
    args.students = [s for s in args.students.split(",") if s]
    args.recipes = [r for r in args.recipes.split(",") if r]
    args.results = args.results or args.out / "results.jsonl"
    return args


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def fsdd_rows() -> List[Dict[str, str]]:
    path = DATA / "fsdd" / "labels.csv"
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def training_audio(out: Path) -> Path:
    """OUT/train_audio/{pool,fsdd}/: symlinks to the pool clips and the FSDD train split."""
    root = out / "train_audio"
    links = [(root / "pool" / p.name, p) for p in sorted((DATA / "pool").iterdir())
             if not p.name.startswith(".")]
    links += [(root / "fsdd" / r["path"], DATA / "fsdd" / r["path"]) for r in fsdd_rows()
              if r["split"] == "train"]
    for link, target in links:
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(target.resolve())
    return root


def eval_tasks():
    """The four held-out tasks as LabeledData; FSDD keeps its test split only."""
    from pyssondo.evaluation.data import load_labeled

    train = {r["path"] for r in fsdd_rows() if r["split"] == "train"}
    tasks = []
    for source, column in TASKS:
        task = load_labeled(DATA / source / "labels.csv", name=f"{source}-{column}",
                            label_column=column, use_fold_column=False)
        if source == "fsdd":
            task = task.without(sorted(train), "distillation_train_split")
        tasks.append(task)
    return tasks


def teacher_file(out: Path) -> Path:
    from pyssondo.teachers import build_teacher_file

    path = out / f"{TEACHER}.pt"
    if not path.is_file():
        build_teacher_file(TEACHER, path)
    return path


def recipe_config(name: str, student: str, args: argparse.Namespace, teacher: Path,
                  audio: Path):
    """The DistillConfig of one student x recipe (validated)."""
    from pyssondo.train.config import DistillConfig

    settings = {**BASE, "epochs": args.epochs}
    for key, value in RECIPES[name].items():
        settings[key] = {**settings.get(key, {}), **value} if key == "mel" else value
    cfg = DistillConfig.from_dict(settings, source=f"recipe {name}")
    cfg = cfg.replace(teacher=str(teacher), audio=str(audio), student=student, seed=args.seed,
                      threads=args.threads, workers=args.workers, out=str(args.out / "runs"),
                      cache_dir=str(args.out / "cache"))
    cfg.validate()
    return cfg


# ---------------------------------------------------------------------------------------------
# Measures
# ---------------------------------------------------------------------------------------------
def mean_scores(report: Dict[str, Any], model: str) -> Dict[str, float]:
    """``task/probe`` -> primary metric (mean over folds) of one model in an eval report."""
    return {f"{r['task']}/{r['probe']}": float(r["metrics"][r["primary"]]["mean"])
            for r in report["results"] if r["model"] == model}


def reference_report(models, tasks, ecfg, eval_cache: Path) -> Dict[str, Any]:
    """The eval report of the fixed models (log-mel, the teacher), kept as
    ``eval_cache/reference-<key>.json`` keyed by the models, the files and the eval settings,
    so that later invocations do not fit their probes again."""
    from dataclasses import asdict
    import hashlib

    from pyssondo.atomic import atomic_write_text
    from pyssondo.evaluation.embed import cache_key
    from pyssondo.evaluation.evaluate import evaluate

    key = hashlib.sha256(json.dumps(
        [[cache_key(m, [e.path for e in t.examples], ecfg.window_s) for m in models]
         for t in tasks] + [asdict(ecfg)], sort_keys=True, default=str).encode()).hexdigest()
    path = eval_cache / f"reference-{key[:20]}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    report = evaluate(models, tasks, ecfg, cache_dir=eval_cache, progress=False).report
    atomic_write_text(path, json.dumps(report, default=str))
    return report


def embed_segments(embedder, segments, rows: np.ndarray, sample_rate: int, window_s: float,
                   batch: int = 64) -> np.ndarray:
    """An export's embeddings [len(rows), D] of cache segments, fed as the training did: the
    segment at the student's rate, zero-padded to the window."""
    from pyssondo.train.data import SegmentAudio

    audio = SegmentAudio(segments, sample_rate, window_s)
    out = [embedder.embed_batch(np.stack([audio(int(r)) for r in rows[i:i + batch]]))
           for i in range(0, len(rows), batch)]
    return np.concatenate(out)


def student_measures(run, cfg, cache_path: Path, eval_teacher: Dict[str, np.ndarray],
                     eval_paths: Dict[str, List[Path]], k: int, eval_cache: Path,
                     which: str = "last"):
    """(label-free measures on validation segments and on the eval audio, backbone Embedder)
    of the run's ``which`` checkpoint ("last": the end of training; "best": what the run's
    student.pt holds, chosen by validation cosine).

    The teacher's mean comes from the training rows of the cache; the backbone and projected
    (through the head) exports are written into the run folder as student-<which>[-projected].pt.
    """
    from pyssondo.cache import EmbeddingCache
    from pyssondo.evaluation.agreement import agreement
    from pyssondo.evaluation.embed import cached_embeddings, open_embedder
    from pyssondo.export import export_run
    from pyssondo.train.data import split_by_file

    paths = [run.path / f"student-{which}{'-projected' if p else ''}.pt" for p in (False, True)]
    for path, proj in zip(paths, (False, True)):
        export_run(run.path, path, projected=proj, which=which, quiet=True, measure=False)
    backbone, projected = (open_embedder(str(p)) for p in paths)
    cache = EmbeddingCache(cache_path)
    segments = cache.segments()
    targets = np.asarray(cache.embeddings(pool="mean"), dtype=np.float32)
    train_rows, val_rows = split_by_file(segments, cfg.val_fraction, cfg.seed)
    mean = targets[train_rows].mean(axis=0)
    feats = [embed_segments(m, segments, val_rows, cfg.mel.sample_rate, cfg.window_s)
             for m in (backbone, projected)]
    val = agreement(feats[0], feats[1], targets[val_rows], mean, k)
    per_model = []
    for m in (backbone, projected):
        per_model.append(np.concatenate([cached_embeddings(m, eval_paths[s], eval_cache,
                                                           progress=False)[0]
                                         for s in eval_paths]))
    ev = agreement(per_model[0], per_model[1],
                   np.concatenate([eval_teacher[s] for s in eval_paths]), mean, k)
    measures = {f"val_{k_}" if not k_.startswith("val_") else k_: v for k_, v in val.items()}
    measures.update({"eval_" + (k_[4:] if k_.startswith("val_") else k_): v
                     for k_, v in ev.items()})
    return measures, backbone


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); nan for fewer than 3 pairs."""
    def ranks(x):
        x = np.asarray(x, dtype=np.float64)
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for v in np.unique(x):  # ties share their mean rank
            r[x == v] = r[x == v].mean()
        return r
    if len(a) < 3:
        return float("nan")
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------
def append_row(path: Path, row: Dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")


def read_rows(path: Path) -> List[Dict[str, Any]]:
    """Rows of the results file; a later row with the same (name, recipe, epochs, seed,
    checkpoint) replaces an earlier one."""
    rows: Dict[tuple, Dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            rows[(r["name"], r.get("recipe"), r.get("epochs"), r.get("seed"),
                  r.get("checkpoint"))] = r
    return list(rows.values())


def print_tables(rows: List[Dict[str, Any]]) -> None:
    from pyssondo.evaluation.agreement import MEASURES

    tasks = [f"{s}-{c}" for s, c in TASKS]
    short = {"notes-program": "prog", "notes-family": "fam", "fsdd-digit": "digit",
             "fsdd-speaker": "spkr"}
    head = "".join(f"{short[t]:>12s}" for t in tasks)
    print(f"\nprobe scores (accuracy %, linear/kNN, {FOLDS}-fold) and share of the teacher's mean")
    print(f"{'model':8s} {'recipe':16s} {'ep':>3s}{head}{'mean':>7s}{'share':>7s}{'min':>6s}")
    for r in rows:
        cells = "".join(f"{100 * r['scores'][t + '/linear']:6.1f}/{100 * r['scores'][t + '/knn']:<5.1f}"
                        for t in tasks)
        share = f"{r['share']:6.1f}%" if r.get("share") is not None else "      -"
        mins = f"{r['wall_s'] / 60:6.1f}" if r.get("wall_s") else "     -"
        recipe = (r.get("recipe") or "-") + ("@best" if r.get("checkpoint") == "best" else "")
        print(f"{r['name']:8s} {recipe:16s} {r.get('epochs') or '-':>3}"
              f"{cells}{100 * r['mean']:7.1f}{share}{mins}")
    students = [r for r in rows if r.get("measures")]
    if not students:
        return
    keys = [f"val_{m[4:] if m.startswith('val_') else m}" for m in MEASURES]
    keys += [f"eval_{m[4:] if m.startswith('val_') else m}" for m in MEASURES]
    print("\nlabel-free measures at the end of training (val_: held-out segments of the training "
          "cache; eval_: the eval audio)")
    print(f"{'model':8s} {'recipe':16s} {'ep':>3s}" + "".join(f"{_abbrev(k):>10s}" for k in keys))
    for r in students:
        recipe = r["recipe"] + ("@best" if r.get("checkpoint") == "best" else "")
        print(f"{r['name']:8s} {recipe:16s} {r['epochs']:>3}"
              + "".join(f"{r['measures'].get(k, float('nan')):10.4f}" for k in keys))
    groups = {"all": students}
    for name in sorted({r["name"] for r in students}):
        groups[name] = [r for r in students if r["name"] == name]
    print("Spearman rank correlation of each measure with the mean probe score, over the rows "
          "of all students and of each student (rows in brackets):")
    for name, group in groups.items():
        rho = [spearman([r["measures"].get(k, np.nan) for r in group], [r["mean"] for r in group])
               for k in keys]
        print(f"{f'rho {name} ({len(group)})':29s}" + "".join(f"{v:10.3f}" for v in rho))


def _abbrev(key: str) -> str:
    """Column header of a measure: val_knn_agree_backbone -> v_knn_bb."""
    return (key.replace("eval_", "e_").replace("val_", "v_").replace("knn_agree_", "knn_")
            .replace("backbone", "bb").replace("projected", "pj").replace("cos_centered", "ccos"))


# ---------------------------------------------------------------------------------------------
def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if args.list:
        for name, over in RECIPES.items():
            print(f"{name:12s} {json.dumps(over)}")
        print(f"{'(base)':12s} {json.dumps(BASE)}")
        return 0
    from pyssondo.students import list_students

    unknown = [r for r in args.recipes if r not in RECIPES]
    if unknown:
        raise SystemExit(f"quality.py: unknown recipes {unknown}; known: {sorted(RECIPES)}")
    bad = [s for s in args.students if s not in list_students()]
    if bad:
        raise SystemExit(f"quality.py: unknown students {bad}; known: {sorted(list_students())}")
    for r in args.recipes:  # every setting checked before anything expensive starts
        for s in args.students:
            recipe_config(r, s, args, Path("teacher.pt"), Path("audio"))

    import torch

    from pyssondo import set_num_threads
    from pyssondo.evaluation.config import EvalConfig
    from pyssondo.evaluation.embed import LOGMEL, cached_embeddings, open_embedder
    from pyssondo.evaluation.evaluate import evaluate
    from pyssondo.train.config import DistillConfig
    from pyssondo.train.distill import distill

    torch.set_num_threads(args.threads)
    set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*upsampled.*")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    args.out.mkdir(parents=True, exist_ok=True)
    eval_cache = args.out / "eval-cache"
    teacher = teacher_file(args.out)
    audio = training_audio(args.out)
    tasks = eval_tasks()
    ecfg = replace(EvalConfig(), folds=FOLDS)

    t0 = time.time()
    report = reference_report([open_embedder(LOGMEL), open_embedder(str(teacher), role="teacher")],
                              tasks, ecfg, eval_cache)
    names = [m["name"] for m in report["models"]]
    teacher_scores = mean_scores(report, names[1])
    teacher_mean = float(np.mean(list(teacher_scores.values())))
    for name, kind in zip(names, ("logmel", "teacher")):
        scores = mean_scores(report, name)
        mean = float(np.mean(list(scores.values())))
        append_row(args.results, {"name": kind, "kind": kind, "scores": scores, "mean": mean,
                                  "share": 100 * mean / teacher_mean,
                                  "params": report["models"][names.index(name)]["params"]})
    # The eval files once per source (the notes tasks share theirs), teacher embeddings of them.
    eval_paths = {t.name.split("-")[0]: [e.path for e in t.examples] for t in tasks}
    teacher_model = open_embedder(str(teacher), role="teacher")
    eval_teacher = {s: cached_embeddings(teacher_model, paths, eval_cache, progress=False)[0]
                    for s, paths in eval_paths.items()}
    print(f"teacher and log-mel evaluated in {time.time() - t0:.0f} s", flush=True)

    def score(run, cfg, recipe: str, train_s: float, best_metric) -> None:
        """Measures, probes and the results row of one finished run."""
        t0 = time.time()
        cache_path = Path(json.loads(run.config.read_text())["cache"])
        measures, backbone = student_measures(run, cfg, cache_path, eval_teacher, eval_paths,
                                              args.k, eval_cache, args.checkpoint)
        rep = evaluate([backbone], tasks, ecfg, cache_dir=eval_cache, progress=False).report
        scores = mean_scores(rep, rep["models"][0]["name"])
        mean = float(np.mean(list(scores.values())))
        row = {"name": cfg.student, "kind": "student", "recipe": recipe, "epochs": cfg.epochs,
               "seed": cfg.seed, "overrides": RECIPES[recipe], "scores": scores, "mean": mean,
               "share": 100 * mean / teacher_mean, "measures": measures,
               "params": rep["models"][0]["params"], "run": str(run.path),
               "train_s": round(train_s, 1), "wall_s": round(train_s + time.time() - t0, 1),
               "threads": args.threads, "best_metric": best_metric,
               "checkpoint": args.checkpoint}
        append_row(args.results, row)
        print(f"{cfg.student} {recipe} ({args.checkpoint}): mean {100 * mean:.1f}, share "
              f"{row['share']:.1f}% of the teacher, {row['wall_s'] / 60:.1f} min (training "
              f"{train_s / 60:.1f})", flush=True)

    if args.rescore:
        from pyssondo.train.rundir import RunDir

        done = {r.get("run"): r for r in read_rows(args.results)}
        for path in args.rescore:
            old = done.get(str(path))
            if old is None:
                raise SystemExit(f"quality.py: {path}: no row of {args.results} names this run")
            recorded = json.loads(RunDir(path).config.read_text())
            cfg = DistillConfig.from_stored({k: v for k, v in recorded.items()
                                           if k in DistillConfig.__dataclass_fields__})
            score(RunDir(path), cfg, old["recipe"], old["train_s"],
                  old.get("best_metric", old.get("best_val_cos")))  # rows before the rename
    for recipe in [] if args.rescore else args.recipes:
        for student in args.students:
            cfg = recipe_config(recipe, student, args, teacher, audio)
            t0 = time.time()
            result = distill(cfg, progress=False)
            score(result.run, cfg, recipe, time.time() - t0, result.best_metric)
    print_tables(read_rows(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
