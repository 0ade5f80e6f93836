"""Choosing the lambdas of a merge without labels: how well each candidate keeps each parent's
teacher on unlabeled audio (``ssondo merge --search-unlabeled AUDIO_DIR``).

The teacher: the file(s) a parent run's ``config.json`` names. That name is untrusted: it must
be an existing file (a ``pkg.mod:fn`` factory is refused, never imported) whose sha256 is the
fingerprint the run's checkpoint recorded for that teacher (:func:`teacher_files`). A user
whose teacher moved fixes the path in ``config.json``; nothing is guessed.

The teacher's embeddings of the audio's segments come from the teacher cache the run would
use (:func:`pyssondo.cache.open.open_cache` with the run's window, hop, dtype, teacher rate and
views), so an existing cache is read, not recomputed (:func:`parent_targets`).

The score of a candidate against a parent is the label-free measure best.pt follows by default
(``knn_agree_backbone``, :mod:`pyssondo.evaluation.agreement`): the share of each segment's
:data:`K` nearest teacher neighbours (cosine, itself excluded) that are also among its nearest
neighbours under the candidate's backbone embedding (what a merged export outputs), in [0, 1];
frame-level teacher outputs are mean-pooled over their real frames. A run with several targets
(teachers or layers) scores their mean weighted by its teacher and target weights. The table
has one column per parent, ``<parent name>/knn_agree_backbone``, and goes through the labeled
search's choice rule (:mod:`pyssondo.merging.search`): the task of a column is the parent's name.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

MEASURE = "knn_agree_backbone"
K = 10  # neighbours per segment, as in the validation of training (agreement's default)


@dataclass
class TeacherRows:
    """A parent's teacher side of the audio: the segments every one of its caches holds (the
    first cache's :class:`pyssondo.cache.reader.Segment` records, in its order) and, per target,
    (weight, teacher embeddings float32 [N, D] of those segments)."""

    segments: List[Any]
    targets: List[Tuple[float, np.ndarray]]


def teacher_files(parent) -> List[str]:
    """The teacher files of a :class:`pyssondo.merging.runs.Parent`, from its ``config.json``,
    checked as the module docstring says (reads only the files, no audio).

    Raises:
        FileNotFoundError: a named teacher does not exist. ValueError: a factory teacher, a
        file that is not the teacher the run was distilled from, or a teacher list that does
        not match the run's checkpoint (one line each, naming the run and the file).
    """
    from ..loading import file_sha256, is_factory_spec
    from ..train.rundir import RunDir

    where = f"{Path(parent.spec) / 'config.json'}"
    named = RunDir(parent.spec).read_config().get("teacher", "")
    specs = named if isinstance(named, list) else [named]
    if not specs or not all(isinstance(t, str) and t for t in specs):
        raise ValueError(f"{where}: no teacher file recorded ({named!r}); --search-unlabeled "
                         f"needs the run's teacher")
    recorded = {int(t["cache"]): str(t["teacher"]["fingerprint"])
                for t in parent.state.get("targets") or []}
    recorded = recorded or {0: str(parent.teacher.get("fingerprint", ""))}
    if len(recorded) != len(specs):
        raise ValueError(f"{where}: names {len(specs)} teacher(s), but the run's checkpoint was "
                         f"distilled from {len(recorded)}")
    for i, spec in enumerate(specs):
        if is_factory_spec(spec):
            raise ValueError(f"{where}: teacher {spec!r} is a Python factory, not a file; "
                             f"--search-unlabeled loads only teacher files (make one with "
                             f"'ssondo teacher build' and put its path in config.json)")
        if not Path(spec).is_file():
            raise FileNotFoundError(f"{where}: teacher {spec} does not exist; --search-unlabeled "
                                    f"needs the run's teacher file (fix its path in config.json)")
        mine = file_sha256(spec)
        if mine != recorded[i]:
            raise ValueError(f"{where}: teacher {spec} has sha256 {mine[:12]}, but the run was "
                             f"distilled from teacher {recorded[i][:12]}; give the run's own "
                             f"teacher file")
    return [str(s) for s in specs]


def parent_targets(parent, teachers: Sequence[str], audio: str, root, *,
                   progress: bool = False) -> TeacherRows:
    """The teacher embeddings of ``audio`` for one parent, from its caches under ``root`` (a
    cache root, where missing rows are computed, or one cache folder, which must match).

    Raises:
        ValueError: fewer than 2 segments of audio (nothing to find neighbours among), or a
        cache folder at ``root`` that does not match the run's teacher and settings.
    """
    from ..cache import EmbeddingCache
    from ..cache.open import open_cache
    from ..train.job import teacher_record
    from ..train.targets import align_caches, make_specs

    cfg = parent.cfg
    paths = [open_cache(root, teacher=t, audio=audio, window_s=cfg.window_s, hop_s=cfg.hop_s,
                        dtype=cfg.cache_dtype, teacher_sr=cfg.teacher_sr,
                        batch_size=cfg.teacher_batch_size, progress=progress,
                        views=cfg.view_config) for t in teachers]
    caches = [EmbeddingCache(p) for p in paths]
    valid, maps = align_caches(caches)
    if len(valid) < 2:
        raise ValueError(f"{audio}: {len(valid)} segment(s) of {cfg.window_s:g} s; the "
                         f"label-free search needs at least 2")
    arrays = [c.embeddings(pool="mean") for c in caches]
    specs = make_specs([c.meta for c in caches],
                       [teacher_record(c.meta, a.shape[-1]) for c, a in zip(caches, arrays)],
                       cfg.teacher_weights, cfg.target_weights)
    segments = caches[0].segments()
    rows = [np.asarray(a[m[valid]], dtype=np.float32) for a, m in zip(arrays, maps)]
    return TeacherRows([segments[i] for i in valid],
                       [(s.weight, rows[s.cache][:, s.start:s.stop]) for s in specs])


@torch.no_grad()
def backbone_embeddings(students: Sequence[torch.nn.Module], segments: Sequence[Any], mel,
                        window_s: float, batch_size: int = 32) -> List[np.ndarray]:
    """Each student's backbone embedding of each segment, float32 [N, d] per student: the
    segment's audio at the student's rate (:class:`pyssondo.train.data.SegmentAudio`, as in
    training), log-mel by the C++ core once per batch, then every student in eval mode."""
    from ..frontend import log_mel
    from ..train.data import SegmentAudio

    audio = SegmentAudio(segments, mel.sample_rate, window_s)
    out: List[List[np.ndarray]] = [[] for _ in students]
    for start in range(0, len(segments), batch_size):
        stop = min(len(segments), start + batch_size)
        x = torch.from_numpy(log_mel(np.stack([audio(i) for i in range(start, stop)]), mel))
        for acc, student in zip(out, students):
            acc.append(student(x).float().numpy())
    return [np.concatenate(a) for a in out]


def agreement_candidates(parents: Sequence[Any], base, grid: Sequence[Sequence[float]],
                         teachers: Sequence[Sequence[str]], audio: str, root, *,
                         bn_batches: Optional[Sequence[torch.Tensor]] = None,
                         progress: bool = False):
    """Every parent alone and the merge at every lambda tuple of ``grid``, scored against every
    parent's teacher(s) (``teachers``: :func:`teacher_files` of each parent) on ``audio``.

    Returns:
        ([Candidate] (parents first, then the grid in order), scores keyed
        ``<parent name>/knn_agree_backbone``; {column: the score of random embeddings,
        k / (N - 1) for N segments}).
    """
    from ..evaluation.agreement import knn_indices, neighbour_overlap
    from .runs import candidate_students

    cfg = parents[0].cfg
    candidates, students = candidate_students(parents, base, grid, bn_batches)
    neighbours: Dict[tuple, List[np.ndarray]] = {}  # segment ids -> each candidate's kNN
    chance: Dict[str, float] = {}
    for p, files in zip(parents, teachers):
        side = parent_targets(p, files, audio, root, progress=progress)
        ids = tuple((s.file_key, s.start) for s in side.segments)
        k = min(K, len(ids) - 1)
        if ids not in neighbours:  # parents with the same window and hop share segments
            embeddings = backbone_embeddings(students, side.segments, cfg.mel, cfg.window_s)
            neighbours[ids] = [knn_indices(e, k) for e in embeddings]
        near = [(w, knn_indices(t, k)) for w, t in side.targets]
        total = sum(w for w, _ in near)
        chance[f"{p.name}/{MEASURE}"] = k / (len(ids) - 1)
        for c, mine in zip(candidates, neighbours[ids]):
            c.scores[f"{p.name}/{MEASURE}"] = sum(
                w * neighbour_overlap(mine, n) for w, n in near) / max(total, 1e-12)
    return candidates, chance
