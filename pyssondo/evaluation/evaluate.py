"""The evaluation run: embeddings of every task for every model, the same splits for all models,
each probe fitted per round, metrics aggregated over rounds into a JSON-ready report.

A file that any model fails to decode is dropped for all models (counted as unreadable), so
every model is scored on the same files and the same splits.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .data import LabeledData
from .embed import Embedder, cache_key, cached_embeddings
from .metrics import classification_metrics, mean_ci95, primary_metric
from .config import PROBES, EvalConfig
from .probes import fit_predict
from .protocol import make_splits


@dataclass
class EvalResult:
    """The report (JSON-ready dict), the final tasks, and each task's embeddings per model."""

    report: Dict[str, Any]
    tasks: List[LabeledData]
    embeddings: Dict[str, Dict[str, np.ndarray]]


def evaluate(models: Sequence[Embedder], tasks: Sequence[LabeledData], cfg: EvalConfig = EvalConfig(),
             *, cache_dir: Optional[Path] = None, progress: bool = True) -> EvalResult:
    """Scores every model on every task with every probe. See the module docstring."""
    from .. import __version__

    bad = [p for p in cfg.probes if p not in PROBES]
    if bad or not cfg.probes:
        raise ValueError(f"probes {list(cfg.probes)}: expected some of {PROBES}")
    names = _unique_names([m.name for m in models])
    memo: Dict[tuple, tuple] = {}
    final_tasks, results, embeddings, task_rows = [], [], {}, []
    dims: Dict[str, int] = {}
    for task, task_name in zip(tasks, _unique_names([t.name for t in tasks])):
        task = replace(task, name=task_name)
        paths = [e.path for e in task.examples]
        per_model, failed = {}, set()
        for name, model in zip(names, models):
            key = (model.fingerprint, model.sample_rate, cache_key(model, paths, cfg.window_s))
            if key not in memo:
                memo[key] = cached_embeddings(model, paths, cache_dir, window_s=cfg.window_s,
                                              batch_size=cfg.batch_size, progress=progress)
            emb, ok = memo[key]
            per_model[name] = emb
            dims[name] = int(emb.shape[1])
            failed.update(task.examples[i].key for i in np.flatnonzero(~ok))
        final = task.without(sorted(failed), "unreadable") if failed else task
        if failed:
            row_of = {e.key: i for i, e in enumerate(task.examples)}
            rows = np.array([row_of[e.key] for e in final.examples])
            per_model = {n: e[rows] for n, e in per_model.items()}
        y = final.label_matrix() if final.multilabel else final.label_indices()
        splits = make_splits(y, folds=final.folds(), k=cfg.folds, seed=cfg.seed,
                             val_fraction=cfg.val_fraction)
        final_tasks.append(final)
        embeddings[final.name] = per_model
        task_rows.append(_task_entry(final, splits, y, cfg))
        for name in names:
            x = per_model[name]
            for probe in cfg.probes:
                fold_metrics, chosen = [], []
                for r, s in enumerate(splits):
                    scores, settings = fit_predict(
                        probe, x[s.train], y[s.train], x[s.val], y[s.val], x[s.test],
                        multilabel=final.multilabel, n_classes=len(final.classes),
                        seed=cfg.seed * 1000 + r, cfg=cfg.probe)
                    fold_metrics.append(classification_metrics(y[s.test], scores, final.multilabel))
                    chosen.append(settings)
                metrics = {m: {**mean_ci95([f[m] for f in fold_metrics]),
                               "folds": [f[m] for f in fold_metrics]} for m in fold_metrics[0]}
                results.append({"model": name, "task": final.name, "probe": probe,
                                "primary": primary_metric(final.multilabel),
                                "metrics": metrics, "chosen": chosen})
    model_rows = [{"name": n, "source": m.source, "fingerprint": m.fingerprint,
                   "sample_rate": m.sample_rate, "params": m.params, "embed_dim": dims.get(n)}
                  for n, m in zip(names, models)]
    settings = asdict(cfg)
    settings["probes"] = list(cfg.probes)
    report = {"ssondo": __version__, "settings": settings, "models": model_rows,
              "tasks": task_rows, "results": results}
    return EvalResult(report, final_tasks, embeddings)


def _task_entry(task: LabeledData, splits, y: np.ndarray, cfg: EvalConfig) -> Dict[str, Any]:
    if task.split_column is None:
        protocol = f"stratified {cfg.folds}-fold, seed {cfg.seed}"
    else:
        protocol = f"fixed {'split' if len(splits) == 1 else 'folds'} from column {task.split_column!r}"
    if task.multilabel:
        majority = None
    else:
        majority = float(np.bincount(y).max() / len(y))
    return {"name": task.name, "source": task.source, "label_column": task.label_column,
            "split_column": task.split_column, "multilabel": task.multilabel,
            "files": len(task), "classes": len(task.classes), "class_names": list(task.classes),
            "majority_share": majority, "skipped": dict(task.skipped),
            "skipped_total": int(sum(task.skipped.values())),
            "skipped_classes": list(task.skipped_classes), "protocol": protocol,
            "rounds": [{"name": s.name, "train": len(s.train), "val": len(s.val),
                        "test": len(s.test)} for s in splits]}


def _unique_names(names: Sequence[str]) -> List[str]:
    out, seen = [], {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


def share_of_teacher(student: str, teacher: str, data: str, *, label_column: Optional[str] = None,
                     teacher_sr: Optional[int] = None, window_s: float = 10.0,
                     device: str = "cpu", cache_dir: Optional[Path] = None,
                     progress: bool = True) -> Dict[str, Any]:
    """``ssondo eval STUDENT DATA --compare STUDENT --teacher TEACHER`` as a function: the
    report (with its ``compare`` entry) and ``kept``, the student's share of the teacher's
    average probe score, averaged over the probes (a fraction; 0.9 = 90%)."""
    from .data import load_labeled
    from .embed import open_embedder
    from .report import compare

    task = load_labeled(Path(data), label_column=label_column)
    models = [open_embedder(student, None, device=device, role="model"),
              open_embedder(teacher, teacher_sr, device=device, role="teacher")]
    report = evaluate(models, [task], replace(EvalConfig(), window_s=window_s),
                      cache_dir=cache_dir, progress=progress).report
    names = [m["name"] for m in report["models"]]
    report["compare"] = compare(report, names[0], names[1])
    percents = [p["average"]["percent"] for p in report["compare"]["probes"].values()]
    report["kept"] = float(np.mean(percents)) / 100.0
    return report
