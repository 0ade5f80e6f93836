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
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..evaluation.agreement import MEASURES

from ..loading import teacher_name
from .checkpoint import weights_fingerprint
from .config import DistillConfig
from .data import DistillDataset, StackedRows, split_by_file, warn_upsampled
from .distributed import gather_batch, is_main, main_first, on_main
from .engine import Trainer
from .job import (RunResult, create_run, finish, job_cache, measure, open_job, setup,
                  student_inputs, teacher_record, train_loader)
from .model import build_model, load_init
from .rundir import RunDir, new_run_dir
from .targets import JoinedRows, TargetNorm, Targets, align_caches, make_specs


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
    from ..clustering import load_or_fit_clusters
    from ..losses import make_loss
    from ..sampling import BalancedSampler

    job = open_job(cfg.out, cfg.hash(), resume, "distill")
    if not job.fresh:
        stored = DistillConfig.from_json(job.state["config"])
        cfg = stored.with_runtime_of(cfg).replace(
            cache_dir=cfg.cache_dir or job.recorded.get("cache") or stored.cache_dir)
    device = setup(cfg)
    progress = progress and is_main()

    # One cache per teacher, joined by segment id; the first one drives sampling.
    teachers = cfg.teachers or [""]
    if len(teachers) > 1 and cfg.cache_dir and Path(cfg.cache_dir, "meta.json").is_file():
        raise ValueError(f"{cfg.cache_dir}: one cache folder, {len(teachers)} teachers; give "
                         f"--cache-dir a cache root (each teacher's cache is made there)")
    paths = [job_cache(cfg, t, cfg.audio, cfg.cache_dir, progress) for t in teachers]
    caches = [EmbeddingCache(p) for p in paths]
    segments = caches[0].segments()
    if len(segments) == 0:
        raise ValueError(f"{cfg.audio or paths[0]}: no usable audio segments (the folder is "
                         f"empty or every file failed to decode)")
    fingerprints = [str(c.meta["teacher"]["fingerprint"]) for c in caches]
    if not job.fresh and job.state["teacher"]["fingerprint"] != fingerprints[0]:
        raise ValueError(f"{job.run.path}: the run was trained on teacher "
                         f"{job.state['teacher']['fingerprint'][:12]} but the cache now holds "
                         f"{fingerprints[0][:12]}; start a new run")
    loss_fn = make_loss(cfg.loss)
    frame_level = loss_fn.level == "frame"
    pool = None if frame_level else "mean"
    arrays = [c.embeddings(pool=pool) for c in caches]  # view 0
    if frame_level and (len(arrays) > 1 or arrays[0].ndim != 3):
        raise ValueError(f"distill: loss {cfg.loss} needs one frame-level teacher, but "
                         f"{', '.join(map(str, paths))} hold"
                         f"{' clip embeddings' if arrays[0].ndim != 3 else ' several'}; pick a "
                         f"clip-level loss")
    valid, maps = align_caches(caches)
    specs = make_specs([c.meta for c in caches],
                       [teacher_record(c.meta, a.shape[-1]) for c, a in zip(caches, arrays)],
                       cfg.teacher_weights, cfg.target_weights)
    # Dataset items: view * N + row (views view-major, DistillDataset).
    with_views = [StackedRows([a] + [c.embeddings(pool, v) for v in range(1, c.views)])
                  if c.views > 1 else a for c, a in zip(caches, arrays)]
    y = with_views[0] if len(arrays) == 1 else JoinedRows(with_views, maps,
                                                          [len(c) for c in caches])
    model = build_model(cfg, [t.dim for t in specs], frame_level)
    if cfg.init and job.fresh:
        load_init(model, cfg.init)
    model.to(device)
    warn_upsampled(segments, cfg.mel.sample_rate)

    # Data: clusters over the whole cache, a by-file validation split, a balanced sampler.
    train_rows, val_rows = (np.intersect1d(r, valid) for r in
                            split_by_file(segments, cfg.val_fraction, cfg.seed))
    k = min(cfg.clusters, len(segments))
    with main_first():
        labels = load_or_fit_clusters(paths[0], k=k, metric=cfg.cluster_metric, seed=cfg.seed)
    student_params = sum(p.numel() for p in model.student.parameters())
    samples = cfg.resolved_samples_per_epoch(len(train_rows), student_params)
    steps_per_epoch = max(1, math.ceil(samples / cfg.batch_size))
    sampler = BalancedSampler(labels[train_rows], steps_per_epoch * cfg.batch_size,
                              alpha=cfg.balance_alpha, seed=cfg.seed)
    audio, mel, cached = student_inputs(cfg, [(paths[0], caches[0])],
                                        job.recorded.get("mel_cached"))
    dataset = DistillDataset(audio, y, mel, seed=cfg.seed)
    # Target statistics from the training rows, once (a resumed run reads its own).
    train_y = [np.asarray(a[m[train_rows]], np.float64) for a, m in zip(arrays, maps)]
    train_y = [t.mean(1) if t.ndim == 3 else t for t in train_y]
    columns = [train_y[s.cache][:, s.start:s.stop] for s in specs]
    means = [c.mean(axis=0) for c in columns]
    targets = Targets([s.dim for s in specs], [TargetNorm.fit(c, cfg.target_norm)
                                               for c in columns]).to(device)
    if not job.fresh and "target_norm" in job.state:
        targets.load_state_dict(job.state["target_norm"])

    noise = cfg.resolved_rounding_noise(len(train_rows))
    run = job.run or create_run(
        lambda: new_run_dir(cfg.out, cfg.student, teacher_name(teachers[0]) if teachers[0]
                            else "cache"),
        cfg, {"teacher_fingerprint": fingerprints[0], "cache": str(paths[0]),
              **({"caches": [str(p) for p in paths]} if len(paths) > 1 else {}),
              "targets": [s.to_dict() for s in specs],
              "train_segments": int(len(train_rows)), "val_segments": int(len(val_rows)),
              "steps_per_epoch": steps_per_epoch, "mel_cached": bool(cached),
              "schedule": {**dict(zip(("min_steps_per_epoch", "max_passes"),
                                      cfg.resolved_schedule(student_params))),
                           "rounding_noise": noise},
              "init_fingerprint": weights_fingerprint(model.student.state_dict())})
    extra = {"targets": [s.to_dict() for s in specs],
             **({"target_norm": targets.state_dict()} if cfg.target_norm != "none" else {})}
    trainer = Trainer(run, cfg, model, sampler, steps_per_epoch, device, specs[0].record,
                      extra=extra, rounding_noise=noise)
    if not job.fresh:
        trainer.restore(job.state)
    weights = torch.tensor([s.weight for s in specs])

    def compute_loss(x: torch.Tensor, y: torch.Tensor):
        with trainer.autocast():
            pred = trainer.net(x)
        pred, y = gather_batch(pred.float(), targets.normalize(y.float()))
        if len(specs) == 1:
            return loss_fn(pred, y), {}
        parts = {s.name: loss_fn(p, t) for s, p, t in
                 zip(specs, targets.split(pred), targets.split(y))}
        return sum(w * v for w, v in zip(weights.tolist(), parts.values())), parts

    def validate():
        if not len(val_rows):
            return None, {}
        fields = measure(model, dataset, val_rows, cfg, device, targets, specs, means)
        return fields[cfg.best_metric], fields

    loader = train_loader(cfg, dataset, sampler, train_rows, trainer.epoch, device)
    batches = iter(loader)
    trainer.fit(batches, compute_loss, validate, progress)
    del batches, loader
    final, out = finish(run, projected=cfg.projected, export=export)
    best = final.get("best_metric") if len(val_rows) else None
    summary = {"steps": trainer.step, "train_segments": int(len(train_rows)),
               "val_segments": int(len(val_rows)), "best_metric": cfg.best_metric}
    epochs = [r for r in run.read_log() if r.get("kind") == "epoch"]
    if epochs:
        summary["final"] = {m: epochs[-1].get(m) for m in MEASURES}
    if cfg.eval_data and out is not None:
        summary.update(on_main(lambda: score_export(run, out, cfg, teachers[0], progress)))
    return RunResult(run, int(final["epochs_done"]), best, out, summary)


def score_export(run: RunDir, export: Path, cfg: DistillConfig, teacher: str,
                 progress: bool) -> dict:
    """``ssondo eval --compare`` of the run's export against ``teacher`` on ``cfg.eval_data``:
    writes eval.json, records ``kept`` (the share of the teacher's probe score) in config.json
    and returns the summary entries."""
    from ..evaluation.evaluate import share_of_teacher
    from ..evaluation.report import write_json

    report = share_of_teacher(str(export), teacher, cfg.eval_data,
                              label_column=cfg.eval_label_column, teacher_sr=cfg.teacher_sr,
                              window_s=cfg.window_s, device=cfg.device, progress=progress)
    write_json(report, run.eval_report)
    run.add_to_config({"kept": report["kept"], "eval_data": cfg.eval_data})
    return {"kept": report["kept"], "eval_data": cfg.eval_data,
            "eval_report": str(run.eval_report)}
