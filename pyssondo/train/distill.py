"""The distillation run: teacher cache -> clusters -> balanced sampler -> student + head training.

:func:`distill` is what ``ssondo distill`` calls. It resolves the teacher cache (building or
reusing it), clusters it for balanced sampling, trains student + mapping head on the cached
targets, checkpoints every epoch (and every ``save_every`` steps), keeps the best checkpoint by
validation cosine similarity to the teacher, and exports the student at the end. The steps it
shares with ``adapt`` live in :mod:`.job`; what is its own: one cache, the by-file validation
split, the balanced sampler and the loss.

Resuming restores model, head, optimizer, scheduler, grad scaler, RNG states and the sampler
position, so an interrupted-and-resumed run ends with the same weights as an uninterrupted one
(data order and augmentation are seeded per (epoch, position), see :mod:`.data`).

Under torchrun (``torchrun --nproc_per_node N -m pyssondo distill ...``, see
:mod:`.distributed`) the ranks share the teacher cache's files (rank 0 merges their shards);
rank 0 writes the k-means labels and the log-mel file and creates the run folder while the
other ranks wait, then every rank reads them; each rank trains on its share of every global
batch and the loss sees the gathered global batch, so N processes reach the weights of one
process on the same settings (up to float rounding) when the head has no dropout and mixup is
off.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..models import teacher_name
from .config import DistillConfig
from .data import DistillDataset, split_by_file, warn_upsampled
from .distributed import gather_batch, is_main, main_first
from .engine import Trainer
from .job import (RunResult, create_run, evaluate, finish, job_cache, open_job, setup,
                  student_inputs, teacher_record, train_loader)
from .model import build_model, load_init
from .rundir import new_run_dir


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

    job = open_job(cfg.out, cfg.hash(), resume, "distill")
    if not job.fresh:
        stored = DistillConfig.from_json(job.state["config"])
        cfg = stored.with_runtime_of(cfg).replace(
            cache_dir=cfg.cache_dir or job.recorded.get("cache") or stored.cache_dir)
    device = setup(cfg)
    progress = progress and is_main()

    cache_path = job_cache(cfg, cfg.audio, cfg.cache_dir, progress)
    cache = EmbeddingCache(cache_path)
    segments = cache.segments()
    if len(segments) == 0:
        raise ValueError(f"{cfg.audio or cache_path}: no usable audio segments (the folder is "
                         f"empty or every file failed to decode)")
    teacher_fp = str(cache.meta["teacher"]["fingerprint"])
    if not job.fresh and job.state["teacher"]["fingerprint"] != teacher_fp:
        raise ValueError(f"{job.run.path}: the run was trained on teacher "
                         f"{job.state['teacher']['fingerprint'][:12]} but the cache now holds "
                         f"{teacher_fp[:12]}; start a new run")
    loss_fn = make_loss(cfg.loss)
    frame_level = loss_fn.level == "frame"
    targets = cache.embeddings(pool=None if frame_level else "mean")
    if frame_level and targets.ndim != 3:
        raise ValueError(f"distill: loss {cfg.loss} needs frame-level teacher embeddings, but "
                         f"{cache_path} holds clip embeddings; pick a clip-level loss")
    model = build_model(cfg, targets.shape[-1], frame_level)
    if cfg.init and job.fresh:
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
    audio, mel, cached = student_inputs(cfg, [(cache_path, cache)],
                                        job.recorded.get("mel_cached"))
    dataset = DistillDataset(audio, targets, mel)

    run = job.run or create_run(
        lambda: new_run_dir(cfg.out, cfg.student,
                            teacher_name(cfg.teacher) if cfg.teacher else "cache"),
        cfg, {"teacher_fingerprint": teacher_fp, "cache": str(cache_path),
              "train_segments": int(len(train_rows)), "val_segments": int(len(val_rows)),
              "steps_per_epoch": steps_per_epoch, "mel_cached": bool(cached)})
    trainer = Trainer(run, cfg, model, sampler, steps_per_epoch, device,
                      teacher_record(cache.meta, targets.shape[-1]))
    if not job.fresh:
        trainer.restore(job.state)

    def compute_loss(x: torch.Tensor, y: torch.Tensor):
        with trainer.autocast():
            pred = trainer.net(x)
        pred, y = gather_batch(pred.float(), y)
        return loss_fn(pred, y), {}

    def validate():
        val = evaluate(model, dataset, val_rows, cfg, device) if len(val_rows) else None
        return val, {"val_cos": val}

    loader = train_loader(cfg, dataset, sampler, train_rows, trainer.epoch, device)
    batches = iter(loader)
    trainer.fit(batches, compute_loss, validate, progress)
    del batches, loader
    final, out = finish(run, projected=cfg.projected, export=export)
    best_val = final.get("best_metric") if len(val_rows) else None
    return RunResult(run, int(final["epochs_done"]), best_val, out,
                     {"steps": trainer.step, "train_segments": int(len(train_rows)),
                      "val_segments": int(len(val_rows))})
