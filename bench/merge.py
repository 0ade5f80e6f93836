"""Task arithmetic on two complementary teachers: does one merged student keep both skills?

CREPE tiny knows pitch and nothing of timbre; aisfx (sound effects) the reverse. The bench
distills the same student (mn01 by default) from the same initialisation (``ssondo init``) once
per teacher on ../shared/data/pool (unlabeled), then scores on ../shared/data/notes
(``pitch_class`` and ``program``, the probes of ``ssondo eval``, same splits for all):

- each parent alone (its backbone, last checkpoint);
- the merge theta_0 + lambda tau_crepe + (1 - lambda) tau_aisfx at every lambda of the grid,
  once with interpolated batch-norm statistics and once with statistics recomputed on the pool
  audio (``--recalibrate``): the measurement behind ``ssondo merge``'s default;
- the choice ``ssondo merge --search`` makes (highest mean share of the best parent's score);
- the ensemble-distilled baseline: one student distilled from both teachers at once
  (``ssondo distill crepe.pt aisfx.pt AUDIO``: one backbone, one head per teacher), same
  student, initialisation, audio and epochs.

Prints a table per batch-norm mode and which wins, then the ensemble student's scores and
whether the best merge beats it on the mean share; the target is a merge that keeps >= 85% of
CREPE's pitch-class score and >= 85% of aisfx's program score at once. Every run has
distill's teacher-side views (4 per segment) and --samples-per-epoch segments per epoch
(default 1440, 4 passes over the pool's 360 training segments: with distill's one pass the
parents trained 110 steps and learned too little of their teachers to say anything). The
runs are kept under --work (default bench/.merge-work) and resumed, so a rerun only re-scores.
Cost: see the README's merge section (the teacher caches and the three runs dominate).

    python bench/merge.py [--student mn01] [--epochs 20] [--samples-per-epoch 1440]
                          [--grid 0:1:0.1] [--probe knn] [--threads 2] [--work DIR]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data"
TEACHERS = ("crepe-tiny", "aisfx")
TASKS = ("pitch_class", "program")
WINDOW_S = 4.0  # the pool clips are 4 s


def mel_config():
    from pyssondo.frontend import MelConfig

    return MelConfig(sample_rate=16000, f_max=8000.0, n_mels=64)


def train_runs(work: Path, student: str, epochs: int, samples: int, threads: int) -> list:
    """Builds both teachers and the shared init under ``work``, distills (or resumes) one
    run per teacher, then the ensemble run of both; returns the run folders: TEACHERS order,
    then the ensemble's."""
    from pyssondo.merging.task_vectors import initial_weights, save_weights
    from pyssondo.teachers import build_teacher_file
    from pyssondo.train.config import DistillConfig
    from pyssondo.train.distill import distill

    work.mkdir(parents=True, exist_ok=True)
    init = work / f"init-{student}.pt"
    if not init.is_file():
        save_weights(initial_weights(student, n_mels=mel_config().n_mels, seed=0), init)
    teachers = []
    for name in TEACHERS:
        teachers.append(work / f"{name}.pt")
        if not teachers[-1].is_file():
            build_teacher_file(name, teachers[-1])
    runs = []
    for name, teacher in [*zip(TEACHERS, map(str, teachers)),
                          ("ensemble", [str(t) for t in teachers])]:
        cfg = DistillConfig(teacher=teacher, audio=str(DATA / "pool"), student=student,
                            mel=mel_config(), window_s=WINDOW_S, epochs=epochs, batch_size=32,
                            clusters=20, lr=2e-3, val_fraction=0.1, workers=0, threads=threads,
                            seed=0, init=str(init), cache_dir=str(work / "cache"),
                            out=str(work / f"runs-{name}"), samples_per_epoch=samples)
        t0 = time.perf_counter()
        result = distill(cfg, resume="auto", progress=False, export=False)
        print(f"{name}: run {result.run.path.name}, {result.epochs_done} epochs, best "
              f"{cfg.best_metric} {result.best_metric:.3f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        runs.append(result.run.path)
    return runs


def notes_tasks():
    from pyssondo.evaluation.data import load_labeled

    csv = DATA / "notes" / "labels.csv"
    return [load_labeled(csv, name=t, label_column=t) for t in TASKS]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", default="mn01", help="student of both runs (default mn01)")
    p.add_argument("--epochs", type=int, default=20, help="epochs per run (default 20)")
    p.add_argument("--samples-per-epoch", type=int, default=1440,
                   help="segments per epoch of every run (default 1440)")
    p.add_argument("--grid", default="0:1:0.1", help="lambda grid of the CREPE run (default 0:1:0.1)")
    p.add_argument("--probe", choices=("knn", "linear", "both"), default="knn",
                   help="probes of the scores (default knn)")
    p.add_argument("--threads", type=int, default=2, help="torch and C++ threads (default 2)")
    p.add_argument("--work", type=Path, default=ROOT / "bench" / ".merge-work",
                   help="teachers, caches and runs (kept, so a rerun resumes)")
    args = p.parse_args()

    import dataclasses

    import torch

    from pyssondo import set_num_threads
    from pyssondo.evaluation.config import EvalConfig
    from pyssondo.merging.runs import load_parents, score_candidates
    from pyssondo.merging.search import (choose, column_task, format_search, objective,
                                       parse_grid, references, simplex_grid)
    from pyssondo.merging.recalibrate import audio_windows, log_mel_batches

    torch.set_num_threads(args.threads)
    set_num_threads(args.threads)
    t_start = time.perf_counter()
    *runs, ensemble_run = train_runs(args.work, args.student, args.epochs,
                                     args.samples_per_epoch, args.threads)
    t_train = time.perf_counter() - t_start
    init = str(args.work / f"init-{args.student}.pt")
    base, parents = load_parents(init, [str(r) for r in runs])
    _, (ensemble,) = load_parents(init, [str(ensemble_run)])
    ensemble.name = "ensemble"
    grid = simplex_grid(2, parse_grid(args.grid))
    tasks = notes_tasks()
    cfg = dataclasses.replace(EvalConfig(), probes=("linear", "knn") if args.probe == "both"
                              else (args.probe,))
    mel = parents[0].cfg.mel
    batches = list(log_mel_batches(audio_windows([DATA / "pool"], mel.sample_rate, WINDOW_S), mel))
    names = [p.name for p in parents]
    results = {}
    for mode, bn in (("interpolate", None), ("recalibrate", batches)):
        t0 = time.perf_counter()
        candidates, _ = score_candidates(parents, base, grid, tasks, cfg, bn_batches=bn)
        reference = references(candidates[:2])
        merges = candidates[2:]
        best = choose(merges, reference)
        results[mode] = (merges[best], objective(merges[best].scores, reference), reference)
        parents_scores = [p.scores for p in candidates[:2]]
        print(f"\n== batch-norm statistics: {mode} ({time.perf_counter() - t0:.0f} s to score "
              f"{len(candidates)} models on notes, probe {args.probe}) ==")
        print(format_search(candidates, names, reference, 2 + best))
    print("\n== summary ==")
    for mode, (c, obj, reference) in results.items():
        share = {col: c.scores[col] / ref for col, ref in reference.items()}
        print(f"{mode:<12} best lambda(crepe)={c.lambdas[0]:g}: " + ", ".join(
            f"{col} {100 * c.scores[col]:.1f} ({100 * share[col]:.0f}% of the best parent)"
            for col in reference) + f"; mean share {100 * obj:.1f}%")
    winner = max(results, key=lambda m: results[m][1])
    print(f"batch-norm statistics: {winner} wins on the mean share")
    c, _, reference = results[winner]
    # Each column's own parent: CREPE (run 0) for pitch_class, aisfx (run 1) for program.
    keeps = all(c.scores[col] >= 0.85 * parents_scores[TASKS.index(column_task(col))][col]
                for col in reference)
    print(f"target (the best merge keeps >= 85% of CREPE's pitch-class and of aisfx's program "
          f"score at once): {'met' if keeps else 'not met'}")
    # The ensemble-distilled baseline: its backbone, scored like the parents.
    (scored,), _ = score_candidates([ensemble], base, [], tasks, cfg)
    own = objective(scored.scores, reference)
    print("ensemble     one student from both teachers: " + ", ".join(
        f"{col} {100 * scored.scores[col]:.1f} ({100 * scored.scores[col] / ref:.0f}% of the "
        f"best parent)" for col, ref in reference.items()) + f"; mean share {100 * own:.1f}%")
    best_merge = results[winner][1]
    print(f"merge vs ensemble: {'the merge' if best_merge > own else 'the ensemble'} wins "
          f"({100 * best_merge:.1f}% vs {100 * own:.1f}% mean share)")
    print(f"total {time.perf_counter() - t_start:.0f} s (training {t_train:.0f} s), "
          f"{args.threads} threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
