"""The distillation run: teacher cache -> clusters -> balanced sampler -> student + head training.

:func:`distill` is what ``ssondo distill`` calls. It resolves the teacher cache (building or
reusing it), clusters it for balanced sampling, trains student + mapping head on the cached
targets, checkpoints every epoch (and every ``save_every`` steps), keeps the best checkpoint by
validation cosine similarity to the teacher, and exports the student at the end.

Resuming restores model, head, optimizer, scheduler, grad scaler, RNG states and the sampler
position, so an interrupted-and-resumed run ends with the same weights as an uninterrupted one
(data order and augmentation are seeded per (epoch, position), see :mod:`.data`).

Under torchrun (``torchrun --nproc_per_node N -m pyssondo distill ...``, see
:mod:`.distributed`) the ranks share the teacher cache's files (rank 0 merges their shards);
rank 0 writes the k-means labels and the log-mel file and creates the run folder while the
other ranks wait, then every rank reads them; each rank
trains on its share of every global batch and the loss sees the gathered global batch, so N
processes reach the weights of one process on the same settings (up to float rounding) when
the head has no dropout and mixup is off.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import nn

from ..errors import ParameterError
from .checkpoint import load_student_weights, weights_fingerprint
from .config import DistillConfig
from .data import (Augment, Collate, DistillDataset, KeyBatches, SegmentAudio, fixed_batches,
                   make_loader, mel_cache, mel_cache_bytes, mel_cache_path, split_by_file,
                   want_mel_cache, warn_upsampled)
from .distributed import (all_sum, barrier, broadcast_object, gather_batch, is_main,
                          local_device, main_first, on_main, world)
from .engine import Trainer, finish, open_run
from .rundir import RunDir, new_run_dir

log = logging.getLogger("ssondo.distill")


class StudentWithHead(nn.Module):
    """Student backbone + mapping head: log-mel [B, M, F] -> teacher space [B, D] (or
    [B, F', D] per student frame when ``frame_level``)."""

    def __init__(self, student: nn.Module, head: nn.Module, frame_level: bool = False) -> None:
        super().__init__()
        self.student = student
        self.head = head
        self.frame_level = frame_level

    def forward(self, x: torch.Tensor, with_embedding: bool = False):
        """head(student(x)); with ``with_embedding``, (student(x), head(student(x)))."""
        emb = self.student.forward_frames(x) if self.frame_level else self.student(x)
        return (emb, self.head(emb)) if with_embedding else self.head(emb)


@dataclass
class RunResult:
    """What a finished (or already complete) run produced."""

    run: RunDir
    epochs_done: int
    best_val_cos: Optional[float]
    export: Optional[Path]
    summary: Dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Resolving inputs
# ---------------------------------------------------------------------------------------------
def teacher_name(spec: str) -> str:
    """Short id of a teacher spec: file stem or factory function name."""
    return spec.split(":", 1)[1] if ":" in spec and not Path(spec).exists() else Path(spec).stem


def audio_cache_root(base: Path, audio: str) -> Path:
    """``base/<audio folder name>-<8 hex of its absolute path>``: the cache root of one audio
    folder. A cache folder is keyed by teacher, rate, window and hop only (DESIGN), so two
    audio folders cached under one root would replace each other's rows."""
    path = Path(audio).expanduser().resolve()
    return Path(base) / f"{path.name}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


def resolve_cache(cfg: DistillConfig, progress: bool = True) -> Path:
    """Builds or reuses the teacher cache for ``cfg`` and checks it matches the run.

    ``cfg.cache_dir`` is a cache root (default :func:`audio_cache_root` under ``OUT/cache``)
    in which :func:`build_cache` keeps one folder per teacher/rate/window/hop, or one such
    folder itself (holding meta.json), which is then used as is after checking it was built by
    this teacher with this window and hop.
    """
    root = Path(cfg.cache_dir) if cfg.cache_dir else (
        audio_cache_root(Path(cfg.out) / "cache", cfg.audio) if cfg.audio
        else Path(cfg.out) / "cache")
    if (root / "meta.json").is_file():
        check_cache_matches(root, cfg)
        return root
    if not cfg.teacher or not cfg.audio:
        raise ParameterError("distill: give a teacher and an audio folder "
                             "(or --cache-dir pointing at an existing teacher cache)")
    path = build_teacher_cache(cfg, root, progress)
    check_cache_matches(path, cfg)
    return path


def build_teacher_cache(cfg: DistillConfig, root: Path, progress: bool = True) -> Path:
    """Fills the teacher cache of ``cfg.audio`` under ``root``; returns its folder.

    Under torchrun every rank computes its share of the missing files, with the teacher on
    its own device, and rank 0 merges them (:func:`pyssondo.cache.build_cache`).
    """
    from ..cache import build_cache

    rank, size, _ = world()
    return Path(build_cache(cfg.teacher, cfg.audio, root, window_s=cfg.window_s, hop_s=cfg.hop_s,
                            dtype=cfg.cache_dtype, teacher_sr=cfg.teacher_sr,
                            device=str(local_device(torch.device(cfg.device))),
                            progress=progress, rank=rank, world_size=size, barrier=barrier))


def check_cache_matches(path: Path, cfg: DistillConfig) -> None:
    """Raises ValueError when the cache at ``path`` was built for another teacher or setup."""
    from ..models import file_sha256, is_factory_spec

    meta = json.loads((path / "meta.json").read_text())
    problems = []
    fp = meta["teacher"]["fingerprint"]
    if cfg.teacher and not is_factory_spec(cfg.teacher) and Path(cfg.teacher).is_file():
        mine = file_sha256(cfg.teacher)
        if fp != mine:
            problems.append(f"built by teacher {meta['teacher']['name']} (sha256 {fp[:12]}), "
                            f"not {Path(cfg.teacher).name} (sha256 {mine[:12]})")
    if not math.isclose(float(meta["window_s"]), cfg.window_s):
        problems.append(f"window {meta['window_s']:g} s, not --window {cfg.window_s:g} s")
    if not math.isclose(float(meta["hop_s"]), cfg.resolved_hop_s):
        problems.append(f"hop {meta['hop_s']:g} s, not --hop {cfg.resolved_hop_s:g} s")
    if cfg.teacher_sr and int(meta["teacher_sample_rate"]) != cfg.teacher_sr:
        problems.append(f"teacher rate {meta['teacher_sample_rate']} Hz, not --teacher-sr "
                        f"{cfg.teacher_sr} Hz")
    if problems:
        raise ValueError(f"{path}: this teacher cache does not match the run: "
                         f"{'; '.join(problems)}; point --cache-dir at a cache root (a matching "
                         f"cache is made there) or at the matching cache folder")


def build_model(cfg: DistillConfig, target_dim: int, frame_level: bool) -> StudentWithHead:
    """Student + head for ``cfg``, checked to map log-mel to ``target_dim`` dimensions."""
    from ..heads import make_head
    from ..students import create_student

    student = create_student(cfg.student, n_mels=cfg.mel.n_mels)
    head = make_head(cfg.head, int(student.embed_dim), int(target_dim))
    model = StudentWithHead(student, head, frame_level)
    frames = cfg.mel.num_frames(int(round(cfg.window_s * cfg.mel.sample_rate)))
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(2, cfg.mel.n_mels, frames))
    if out.shape[-1] != target_dim:
        raise ValueError(f"distill: student {cfg.student} (dim {student.embed_dim}) with head "
                         f"{cfg.head} outputs {out.shape[-1]} dims but the teacher's embeddings "
                         f"have {target_dim}; use --head mlp or --head linear")
    return model


def load_init(model: StudentWithHead, spec: str) -> None:
    """Loads student weights from a run folder, a checkpoint, or a saved state dict."""
    state = load_student_weights(spec)
    own = model.student.state_dict()
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            raise ValueError(f"{spec}: --init weight {k} has shape {tuple(v.shape)}, the "
                             f"{model.student.__class__.__name__} here needs {tuple(own[k].shape)}")
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{spec}: --init weights do not fit this student "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.student.load_state_dict(state)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def distill(cfg: DistillConfig, *, resume: Optional[str] = None, progress: bool = True,
            export: bool = True) -> RunResult:
    """Runs (or resumes) a distillation and returns where everything is.

    Args:
        cfg: resolved settings (:class:`DistillConfig`).
        resume: None (new run), "auto" (newest run under ``cfg.out`` with the same config hash,
            else a new run) or the path of a run folder or checkpoint to continue; a resumed
            run keeps its stored settings (only out/workers/threads/log_every may differ).
        progress: draw progress bars.
        export: write ``student.pt`` into the run folder when training finishes.

    Raises:
        ValueError: bad settings or inputs; TrainingDiverged when the loss becomes NaN/inf.
        OSError: a checkpoint could not be written (the previous one is intact).
    """
    from ..cache import EmbeddingCache
    from ..losses import make_loss
    from ..sampling import BalancedSampler, load_or_fit_clusters

    run, state = open_run(cfg.out, cfg.hash(), resume)
    recorded: Dict[str, Any] = {}
    if state is not None:
        if "adapt" in state:
            raise ValueError(f"{run.path}: an adapt run; continue it with 'ssondo adapt "
                             f"PARENT NEW_AUDIO --resume {run.path}'")
        stored = DistillConfig.from_json(state["config"])
        recorded = json.loads(run.config.read_text()) if run.config.is_file() else {}
        cfg = stored.replace(out=cfg.out, workers=cfg.workers, threads=cfg.threads,
                             log_every=cfg.log_every,
                             cache_dir=cfg.cache_dir or recorded.get("cache") or stored.cache_dir)
    device = setup(cfg)
    progress = progress and is_main()

    cache_path = resolve_cache(cfg, progress)
    cache = EmbeddingCache(cache_path)
    segments = cache.segments()
    if len(segments) == 0:
        raise ValueError(f"{cfg.audio or cache_path}: no usable audio segments (the folder is "
                         f"empty or every file failed to decode)")
    meta = cache.meta
    teacher_fp = str(meta["teacher"]["fingerprint"])
    if run is not None and state["teacher"]["fingerprint"] != teacher_fp:
        raise ValueError(f"{run.path}: the run was trained on teacher "
                         f"{state['teacher']['fingerprint'][:12]} but the cache now holds "
                         f"{teacher_fp[:12]}; start a new run")
    loss_fn = make_loss(cfg.loss)
    frame_level = loss_fn.level == "frame"
    targets = cache.embeddings(pool=None if frame_level else "mean")
    if frame_level and targets.ndim != 3:
        raise ValueError(f"distill: loss {cfg.loss} needs frame-level teacher embeddings, but "
                         f"{cache_path} holds clip embeddings; pick a clip-level loss")
    model = build_model(cfg, targets.shape[-1], frame_level)
    if cfg.init and state is None:
        load_init(model, cfg.init)
    model.to(device)
    warn_upsampled(segments, cfg.mel.sample_rate)

    # Data: clusters over the whole cache, a by-file validation split, a balanced sampler.
    train_rows, val_rows = split_by_file(segments, cfg.val_fraction, cfg.seed)
    k = min(cfg.clusters, len(segments))
    with main_first():
        labels = load_or_fit_clusters(cache_path, k=k, metric=cfg.cluster_metric, seed=cfg.seed)
    samples = cfg.samples_per_epoch or len(train_rows)
    steps_per_epoch = max(1, math.ceil(samples / cfg.batch_size))
    sampler = BalancedSampler(labels[train_rows], steps_per_epoch * cfg.batch_size,
                              alpha=cfg.balance_alpha, seed=cfg.seed)
    audio = SegmentAudio(segments, cfg.mel.sample_rate, float(meta["window_s"]))
    # A resumed run keeps the choice it started with, whatever the disk says now.
    mel_path = mel_cache_path(cache_path, audio, cfg.mel, cache.ids)
    cached = choose_mel_cache(cfg, [(mel_path, audio)], recorded.get("mel_cached"))
    with main_first():
        mel = mel_cache(mel_path, audio, cfg.mel) if cached else None
    dataset = DistillDataset(audio, targets, mel)
    augment = Augment(cfg.gain_db, cfg.time_mask, cfg.freq_mask, cfg.mixup)

    if state is None:
        def create() -> str:
            made = _fresh(cfg)
            made.write_config(cfg, {"teacher_fingerprint": teacher_fp, "cache": str(cache_path),
                                    "train_segments": int(len(train_rows)),
                                    "val_segments": int(len(val_rows)),
                                    "steps_per_epoch": steps_per_epoch,
                                    "mel_cached": bool(cached),
                                    "init_fingerprint":
                                        weights_fingerprint(model.student.state_dict())})
            return str(made.path)
        run = RunDir(on_main(create))
    teacher = {"name": str(meta["teacher"]["name"]), "fingerprint": teacher_fp,
               "dim": int(targets.shape[-1]), "sample_rate": int(meta["teacher_sample_rate"]),
               "level": str(meta["level"])}
    trainer = Trainer(run, cfg, model, sampler, steps_per_epoch, device, teacher)
    if state is not None:
        trainer.restore(state)

    def compute_loss(x: torch.Tensor, y: torch.Tensor):
        with trainer.autocast():
            pred = trainer.net(x)
        pred, y = gather_batch(pred.float(), y)
        return loss_fn(pred, y), {}

    def validate():
        val = evaluate(model, dataset, val_rows, cfg, device) if len(val_rows) else None
        return val, {"val_cos": val}

    loader = make_loader(dataset, KeyBatches(sampler, train_rows, cfg.batch_size,
                                             trainer.epoch, cfg.epochs, *world()[:2]),
                         Collate(cfg.mel, augment, cfg.seed), cfg.workers,
                         pin_memory=device.type == "cuda")
    batches = iter(loader)
    trainer.fit(batches, compute_loss, validate, progress)
    del batches, loader
    final, out = finish(run, projected=cfg.projected, export=export)
    best_val = final.get("best_metric") if len(val_rows) else None
    return RunResult(run, int(final["epochs_done"]), best_val, out,
                     {"steps": trainer.step, "train_segments": int(len(train_rows)),
                      "val_segments": int(len(val_rows))})


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


@torch.no_grad()
def evaluate(model: StudentWithHead, dataset: DistillDataset, rows: np.ndarray,
             cfg: DistillConfig, device: torch.device) -> float:
    """Mean cosine similarity between head(student(x)) and the teacher's target over ``rows``
    (frame-level outputs and targets are mean-pooled over frames first). Under torchrun each
    rank scores a contiguous part of ``rows`` and all get the mean over all of them."""
    model.eval()
    rank, size, _ = world()
    mine = np.array_split(np.asarray(rows), size)[rank]
    loader = make_loader(dataset, fixed_batches(mine, cfg.batch_size), Collate(cfg.mel),
                         min(cfg.workers, 1))
    total, n = 0.0, 0
    for x, y, _ in loader:
        pred = model(x.to(device)).float()
        y = y.to(device)
        if pred.ndim == 3:
            pred, y = pred.mean(1), y.mean(1)
        total += float(torch.nn.functional.cosine_similarity(pred, y, dim=-1).sum())
        n += x.shape[0]
    total, n = all_sum([total, n])
    return total / max(1, n)


def _fresh(cfg: DistillConfig) -> RunDir:
    cfg.validate()
    return new_run_dir(cfg.out, cfg.student, teacher_name(cfg.teacher) if cfg.teacher else "cache")
