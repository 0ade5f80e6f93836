"""The steps every training job shares: ``distill``, ``adapt`` and ``bench/train.py``.

A job opens (or resumes) its run folder, opens its teacher caches, turns their segments into
student inputs (the log-mel file or per-batch log-mel), builds the loader, trains with
:class:`.engine.Trainer` and finishes (plots, export). The commands declare only what differs:
the sampler, the loss terms and the validation. In order:

- :func:`open_job`: the run to continue (and its stored settings) or none;
- :func:`setup`: settings validated, threads applied, torch seeded, the device;
- :func:`job_cache`: the teacher cache of an audio folder (built when missing, rank-sharded
  under torchrun), with :func:`pyssondo.cache.open.open_cache`;
- :func:`student_inputs`: student audio and, when chosen, log-mel rows over several caches;
- :func:`train_loader`: the DataLoader of the keyed training batches from the current epoch;
- :func:`create_run`: the new run folder and its ``config.json`` (rank 0);
- :func:`finish`: loss plot, final checkpoint, ``student.pt`` (rank 0).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import ParameterError
from .checkpoint import load_checkpoint
from .config import DistillConfig
from .data import (Augment, Collate, DistillDataset, KeyBatches, SegmentAudio, StackedRows,
                   fixed_batches, make_loader, mel_cache, mel_cache_bytes, mel_cache_path,
                   want_mel_cache)
from .distributed import (all_gather_object, all_sum, barrier, broadcast_object, local_device,
                          main_first, on_main, world)
from .engine import open_run
from .model import StudentWithHead
from .rundir import RunDir

log = logging.getLogger("ssondo.train")


@dataclass
class RunResult:
    """What a finished (or already complete) run produced; ``best_metric`` is the best value of
    the run's ``cfg.best_metric`` (None without validation segments)."""

    run: RunDir
    epochs_done: int
    best_metric: Optional[float]
    export: Optional[Path]
    summary: Dict[str, Any] = field(default_factory=dict)


@dataclass
class OpenedJob:
    """The run a job continues: its folder, checkpoint state and ``config.json`` record (all
    None / empty for a new run)."""

    run: Optional[RunDir]
    state: Optional[Dict[str, Any]]
    recorded: Dict[str, Any] = field(default_factory=dict)

    @property
    def fresh(self) -> bool:
        return self.state is None


def open_job(out: str, config_hash: str, resume: Optional[str], command: str) -> OpenedJob:
    """The run ``resume`` names (see :func:`.engine.open_run`), checked to be a ``command``
    run ("distill" or "adapt"; each refuses the other's folders with the command to use)."""
    run, state = open_run(out, config_hash, resume)
    if state is None:
        return OpenedJob(None, None)
    is_adapt = "adapt" in state
    if command == "distill" and is_adapt:
        raise ValueError(f"{run.path}: an adapt run; continue it with 'ssondo adapt "
                         f"PARENT NEW_AUDIO --resume {run.path}'")
    if command == "adapt" and not is_adapt:
        raise ValueError(f"{run.path}: not an adapt run; continue it with "
                         f"'ssondo distill --resume {run.path}'")
    return OpenedJob(run, state, run.read_config())


def setup(cfg: DistillConfig, command: str = "distill") -> torch.device:
    """Validates ``cfg``, applies its thread count, seeds torch; returns the device."""
    cfg.validate()
    if cfg.threads:
        from ..threads import set_num_threads
        torch.set_num_threads(cfg.threads)
        set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError(f"{command}: --device {cfg.device} but torch sees no CUDA device")
    device = local_device(device)
    torch.manual_seed(cfg.seed)
    return device


def job_cache(cfg: DistillConfig, teacher: str, audio: str, root: Optional[str],
              progress: bool = True) -> Path:
    """The cache folder of ``teacher``'s embeddings of ``audio`` for ``cfg`` (window, hop,
    dtype, teacher rate).

    ``root``: a cache root or one cache folder (default ``OUT/cache/<folder>-<hash>``). Under
    torchrun every rank computes its share of the missing files with the teacher on its own
    device and rank 0 merges them.
    """
    from ..cache.open import default_cache_root, open_cache

    if root is None and not audio:
        raise ParameterError("give a teacher and an audio folder (or --cache-dir pointing at "
                             "an existing teacher cache)")
    rank, size, _ = world()
    return open_cache(root or default_cache_root(cfg.out, audio), teacher=teacher,
                      audio=audio, window_s=cfg.window_s, hop_s=cfg.hop_s, dtype=cfg.cache_dtype,
                      teacher_sr=cfg.teacher_sr, batch_size=cfg.teacher_batch_size,
                      device=str(local_device(torch.device(cfg.device))), progress=progress,
                      rank=rank, world_size=size, barrier=barrier, views=cfg.view_config)


def teacher_record(meta: Dict[str, Any], dim: int) -> Dict[str, Any]:
    """What checkpoints store of the teacher behind a cache's ``meta``: name, fingerprint,
    target dimension, sample rate and level (clip/frame)."""
    return {"name": str(meta["teacher"]["name"]), "fingerprint": str(meta["teacher"]["fingerprint"]),
            "dim": int(dim), "sample_rate": int(meta["teacher_sample_rate"]),
            "level": str(meta["level"])}


def student_inputs(cfg: DistillConfig, parts: Sequence[Tuple[Path, Any]],
                   recorded: Optional[bool] = None) -> Tuple[SegmentAudio, Optional[Any], bool]:
    """The student's view of the segments of several caches, one after another.

    ``parts``: (cache folder, :class:`pyssondo.cache.EmbeddingCache`) in row order. One cache
    brings its teacher-side views (:mod:`pyssondo.views`; log-mel rows view-major); several
    are read at view 0. ``recorded``: the log-mel choice a resumed run started with (kept,
    whatever the disk says now). Returns (student-rate audio of all segments, their float16
    log-mel rows or None when computed per batch, whether the log-mel files are used).
    """
    window = float(parts[0][1].meta["window_s"])
    pieces = []
    for folder, cache in parts:
        views = dict(views=cache.view_config, partner=cache.partner,
                     audio_root=cache.audio_root) if len(parts) == 1 else {}
        audio = SegmentAudio(cache.segments(), cfg.mel.sample_rate, window, **views)
        pieces.append((mel_cache_path(folder, audio, cfg.mel, cache.ids), audio))
    cached = choose_mel_cache(cfg, pieces, recorded)
    mel = None
    if cached:
        with main_first():
            rows = [mel_cache(path, audio, cfg.mel) for path, audio in pieces]
        mel = rows[0] if len(rows) == 1 else StackedRows(rows)
    if len(pieces) == 1:
        return pieces[0][1], mel, cached
    segments: List[Any] = [s for _, audio in pieces for s in audio.segments]
    return SegmentAudio(segments, cfg.mel.sample_rate, window), mel, cached


def choose_mel_cache(cfg: DistillConfig, files, recorded: Optional[bool] = None) -> bool:
    """Whether the students' log-mel is read from float16 files next to the teacher caches.

    ``files``: (log-mel file path, SegmentAudio) of every cache the run reads.
    ``recorded``: the choice a resumed run started with (kept, whatever the disk says now).
    With ``cache_mel="auto"`` the files are used when each exists or needs at most a quarter
    of the free disk space (:func:`want_mel_cache`); the choice is logged. Under torchrun
    rank 0's choice holds for all ranks.
    """
    sizes = [mel_cache_bytes(len(audio.segments), audio, cfg.mel) for _, audio in files]
    cached = recorded
    if cached is None:
        cached = all(want_mel_cache(cfg.cache_mel, path, size)
                     for (path, _), size in zip(files, sizes))
    where = ", ".join(str(path.parent) for path, _ in files)
    if cached:
        log.info("student log-mel: cached next to %s (%.2f GB float16)", where, sum(sizes) / 1e9)
    elif cfg.cache_mel == "auto":
        log.info("student log-mel computed per batch: %.2f GB to cache it exceeds a quarter "
                 "of the free disk space at %s", sum(sizes) / 1e9, where)
    return bool(broadcast_object(bool(cached)))


def train_loader(cfg: DistillConfig, dataset: DistillDataset, sampler: Any, rows: np.ndarray,
                 epoch: int, device: torch.device) -> torch.utils.data.DataLoader:
    """The training batches of ``rows`` drawn by ``sampler`` from ``epoch`` on (this rank's
    share of each global batch), with the run's student-side augmentation."""
    augment = Augment(cfg.gain_db, cfg.time_mask, cfg.freq_mask, cfg.mixup)
    return make_loader(dataset, KeyBatches(sampler, rows, cfg.batch_size, epoch, cfg.epochs,
                                           *world()[:2]),
                       Collate(cfg.mel, augment, cfg.seed), cfg.workers,
                       pin_memory=device.type == "cuda")


def create_run(make: Callable[[], RunDir], cfg: DistillConfig, record: Dict[str, Any]) -> RunDir:
    """A new run folder made by ``make`` with ``config.json`` = ``cfg`` + ``record`` (rank 0
    creates it; every rank gets its path)."""
    def create() -> str:
        made = make()
        made.write_config(cfg, record)
        return str(made.path)

    return RunDir(on_main(create))


@torch.no_grad()
def evaluate(model: StudentWithHead, dataset: DistillDataset, rows: np.ndarray,
             cfg: DistillConfig, device: torch.device, targets: Optional[Any] = None) -> float:
    """Mean cosine similarity between head(student(x)) and the teacher's target over ``rows``
    (frame-level outputs and targets are mean-pooled over frames first; ``targets``, a
    :class:`.targets.Targets`, maps the head's output back to the teacher's space). Under
    torchrun each rank scores a contiguous part of ``rows`` and all get the mean over all."""
    model.eval()
    rank, size, _ = world()
    mine = np.array_split(np.asarray(rows), size)[rank]
    loader = make_loader(dataset, fixed_batches(mine, cfg.batch_size), Collate(cfg.mel),
                         min(cfg.workers, 1))
    total, n = 0.0, 0
    for x, y, _ in loader:
        pred = model(x.to(device)).float()
        if targets is not None:
            pred = targets.denormalize(pred)
        y = y.to(device)
        if pred.ndim == 3:
            pred, y = pred.mean(1), y.mean(1)
        total += float(torch.nn.functional.cosine_similarity(pred, y, dim=-1).sum())
        n += x.shape[0]
    total, n = all_sum([total, n])
    return total / max(1, n)


@torch.no_grad()
def validation_embeddings(model: StudentWithHead, dataset: DistillDataset, rows: np.ndarray,
                          cfg: DistillConfig, device: torch.device, targets: Any
                          ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(backbone [N, d], projected [N, sum D] in the teacher's space, teacher [N, sum D]) of
    ``rows``, float32, frame-level outputs mean-pooled over frames; eval mode, no augmentation.
    ``targets`` (:class:`.targets.Targets`) maps the head's output back to the teacher's space.
    Under torchrun each rank embeds a contiguous part and every rank gets all of them."""
    model.eval()
    rank, size, _ = world()
    mine = np.array_split(np.asarray(rows), size)[rank]
    loader = make_loader(dataset, fixed_batches(mine, cfg.batch_size), Collate(cfg.mel),
                         min(cfg.workers, 1))
    out: List[List[np.ndarray]] = [[], [], []]
    for x, y, _ in loader:
        emb, pred = model(x.to(device), with_embedding=True)
        pred = targets.denormalize(pred.float())
        parts = (emb.float(), pred, y.float())
        for acc, t in zip(out, parts):
            acc.append((t.mean(1) if t.ndim == 3 else t).cpu().numpy())
    local = [np.concatenate(a) if a else None for a in out]
    ranks = all_gather_object(local)
    return tuple(np.concatenate([r[i] for r in ranks if r[i] is not None]) for i in range(3))


def measure(model: StudentWithHead, dataset: DistillDataset, rows: np.ndarray,
            cfg: DistillConfig, device: torch.device, targets: Any, specs: Sequence[Any],
            means: Sequence[np.ndarray]) -> Dict[str, float]:
    """The label-free measures (:func:`pyssondo.evaluation.agreement.agreement`) of the
    student on ``rows``, averaged over the targets with their weights; with several targets
    each one's are added as ``<name>/<measure>``. ``means``: each target's training mean."""
    from ..evaluation.agreement import MEASURES, agreement

    backbone, projected, teacher = validation_embeddings(model, dataset, rows, cfg, device,
                                                         targets)
    fields: Dict[str, float] = {}
    total = {m: 0.0 for m in MEASURES}
    weights = [s.weight for s in specs]
    for spec, (a, b), mean, w in zip(specs, targets.slices, means, weights):
        scores = agreement(backbone, projected[:, a:b], teacher[:, a:b], mean)
        for m in MEASURES:
            total[m] += w * scores[m] / max(1e-12, sum(weights))
            if len(specs) > 1:
                fields[f"{spec.name}/{m}"] = scores[m]
    return {**total, **fields}


def finish(run: RunDir, *, projected: bool, export: bool) -> Tuple[Dict[str, Any], Optional[Path]]:
    """After training: the loss plot, the final checkpoint, and (when ``export``) student.pt
    exported from the best checkpoint (written by rank 0 while the others wait). Returns
    (final checkpoint state, export path or None)."""
    def plot_and_export() -> Optional[str]:
        from .rundir import plot_curves

        plot_curves(run)
        if not export:
            return None
        from ..export import export_run
        return str(export_run(run.path, run.export, projected=projected, which="best",
                              quiet=True).path)

    out = on_main(plot_and_export)
    return load_checkpoint(run.last), Path(out) if out else None
