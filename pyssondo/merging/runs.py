"""The runs behind ``ssondo merge``: loading and checking them, building merged students, and
scoring candidate merges with the probes of ``ssondo eval``.

A run may be merged with BASE only if it started from BASE's weights: a run records the
:func:`pyssondo.train.checkpoint.weights_fingerprint` of the student weights it started from
(``init_fingerprint`` in its ``config.json``); a run written before that field existed passes
when its ``init`` setting names BASE's file (the path is compared, never opened: names read
from a run are untrusted). All runs need the same student, front end
and window.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..train.checkpoint import load_checkpoint, load_student_weights, weights_fingerprint
from .recalibrate import recalibrate_bn
from .task_vectors import State, merge_task_vectors


@dataclass
class Parent:
    """One distilled run: where it is, its settings, and its weights.

    Attributes:
        spec: the path it was given as.
        name: short label (its teacher's name; when two runs share a teacher, the shortest
            trailing part of their paths that tells them apart, see :func:`distinct_labels`).
        cfg: its DistillConfig.
        student: backbone state dict; head: mapping-head state dict.
        teacher: the checkpoint's teacher record (name, fingerprint, dim, sample_rate, level).
        state: the whole checkpoint (its head and target normalisation give --projected).
    """

    spec: str
    name: str
    cfg: Any
    student: State
    head: State
    teacher: Dict[str, Any] = field(default_factory=dict)
    state: Dict[str, Any] = field(default_factory=dict)


def load_parents(base_spec: str, run_specs: Sequence[str], checkpoint: str = "last"):
    """(BASE weights, [Parent]) after the checks in the module docstring.

    Raises:
        FileNotFoundError: a run or BASE is missing. ValueError: a run did not start from BASE,
        or its student, front end or window differs from the first run's (one line each).
    """
    from ..train.config import DistillConfig
    from ..train.rundir import RunDir

    base = load_student_weights(base_spec)
    base_fp = weights_fingerprint(base)
    parents: List[Parent] = []
    for spec in run_specs:
        run = RunDir(spec)
        if not run.config.is_file():
            raise FileNotFoundError(f"{spec}: not a run folder (no config.json)")
        recorded = run.read_config()
        path = run.best if checkpoint == "best" and run.best.is_file() else run.last
        state = load_checkpoint(path)
        cfg = DistillConfig.from_json(state["config"])
        start = recorded.get("init_fingerprint")
        if start is None and cfg.init and _same_path(cfg.init, base_spec):
            start = base_fp  # a run from before the field: its --init names BASE's file
        if start != base_fp:
            where = f"--init {cfg.init}" if cfg.init else "random weights (no --init)"
            raise ValueError(f"{spec}: started from {where}"
                             f"{f' (fingerprint {start[:12]})' if start else ''}, not from BASE "
                             f"{base_spec} ({base_fp[:12]}); merge needs runs distilled with "
                             f"--init {base_spec}")
        parents.append(Parent(str(spec), str(state["teacher"]["name"]), cfg, state["student"],
                              state["head"], dict(state["teacher"]), state))
    first = parents[0]
    for p in parents[1:]:
        if (p.cfg.student, p.cfg.mel, p.cfg.window_s) != (first.cfg.student, first.cfg.mel,
                                                          first.cfg.window_s):
            raise ValueError(f"{p.spec}: student {p.cfg.student}, {p.cfg.mel.n_mels} mels at "
                             f"{p.cfg.mel.sample_rate} Hz, window {p.cfg.window_s:g} s differ "
                             f"from {first.spec}'s ({first.cfg.student}, {first.cfg.mel.n_mels} "
                             f"mels at {first.cfg.mel.sample_rate} Hz, window "
                             f"{first.cfg.window_s:g} s); merge needs the same student")
    if len({p.name for p in parents}) < len(parents):
        for p, label in zip(parents, distinct_labels([p.spec for p in parents])):
            p.name = label
    return base, parents


def distinct_labels(specs: Sequence[str]) -> List[str]:
    """One label per run path, all different: the folder's name, or as many trailing path parts
    as tell the runs apart (``runs1/20261202-mn01-crepe``); a run given again gets ``#2``."""
    paths = [Path(s).expanduser().resolve().parts for s in specs]
    distinct = sorted(set(paths))
    depth = next(d for d in range(1, max(map(len, distinct)) + 1)
                 if len({p[-d:] for p in distinct}) == len(distinct))
    seen: Dict[tuple, int] = {}
    labels = []
    for p in paths:
        seen[p] = seen.get(p, 0) + 1
        label = "/".join(p[-depth:])
        labels.append(label if seen[p] == 1 else f"{label}#{seen[p]}")
    return labels


def merged_student(parents: Sequence[Parent], base: State, lambdas: Sequence[float],
                   bn_batches: Optional[Sequence[torch.Tensor]] = None) -> torch.nn.Module:
    """The student with weights merged by :func:`pyssondo.merging.task_vectors.merge_task_vectors` (batch-norm
    statistics interpolated), recomputed on ``bn_batches`` (log-mel [B, M, F]) when given;
    in eval mode."""
    from ..students import create_student

    cfg = parents[0].cfg
    state = merge_task_vectors(base, [p.student for p in parents], lambdas,
                               [p.spec for p in parents])
    student = create_student(cfg.student, n_mels=cfg.mel.n_mels)
    student.load_state_dict(state)
    if bn_batches is not None:
        recalibrate_bn(student, bn_batches)
    return student.eval()


def module_embedder(name: str, module: torch.nn.Module, sample_rate: int):
    """An :class:`pyssondo.evaluation.embed.Embedder` around an eager waveform -> [B, D]
    module (an :class:`pyssondo.export.ExportedStudent`), fingerprinted by its weights; its
    windows of all files share calls (:mod:`pyssondo.window_batches`)."""
    from ..evaluation.embed import Embedder
    from ..window_batches import student_segments

    def embed_batch(x: np.ndarray, names: str = "the given audio") -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()

    params = sum(p.numel() for p in module.parameters())
    return Embedder(name=name, source=name, fingerprint=weights_fingerprint(module.state_dict()),
                    sample_rate=int(sample_rate), params=params, embed_batch=embed_batch,
                    window=int(module.window),
                    embed_windows=student_segments(module, f"merged student {name}"))


def candidate_students(parents: Sequence[Parent], base: State,
                       grid: Sequence[Sequence[float]],
                       bn_batches: Optional[Sequence[torch.Tensor]] = None):
    """([Candidate] without scores, [student in eval mode]): every parent alone, then the
    merge (:func:`merged_student`) at every lambda tuple of ``grid``, in order."""
    from .search import Candidate
    from ..students import create_student

    pcfg = parents[0].cfg
    n = len(parents)
    candidates, students = [], []
    for i, p in enumerate(parents):
        student = create_student(pcfg.student, n_mels=pcfg.mel.n_mels)
        student.load_state_dict(p.student)
        candidates.append(Candidate(p.name, tuple(float(j == i) for j in range(n)), parent=True))
        students.append(student.eval())
    for lambdas in grid:
        candidates.append(Candidate("lambda=" + ",".join(f"{v:g}" for v in lambdas),
                                    tuple(float(v) for v in lambdas)))
        students.append(merged_student(parents, base, lambdas, bn_batches))
    return candidates, students


def score_candidates(parents: Sequence[Parent], base: State, grid: Sequence[Sequence[float]],
                     tasks, cfg, *, bn_batches: Optional[Sequence[torch.Tensor]] = None,
                     progress: bool = False):
    """Every parent alone and the merge at every lambda tuple of ``grid``, scored on ``tasks``
    (:class:`pyssondo.evaluation.data.LabeledData`) with the evaluation settings ``cfg``:
    [Candidate] (parents first, then the grid in order) and the evaluation report."""
    from ..evaluation.evaluate import evaluate
    from ..export import wrap
    from .search import score_table

    pcfg = parents[0].cfg
    candidates, students = candidate_students(parents, base, grid, bn_batches)
    models = [wrap(s, None, pcfg.mel, pcfg.window_s) for s in students]
    embedders = [module_embedder(c.name, m, pcfg.mel.sample_rate)
                 for c, m in zip(candidates, models)]
    result = evaluate(embedders, tasks, cfg, cache_dir=None, progress=progress)
    for c, scores in zip(candidates, score_table(result.report, [c.name for c in candidates])):
        c.scores = scores
    return candidates, result.report


def _same_path(a: str, b: str) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
