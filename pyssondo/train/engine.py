"""The training loop shared by ``distill`` and ``adapt``: optimisation, NaN checks, checkpoints
and resuming.

:class:`Trainer` owns everything a checkpoint restores: student + head, Adam with the S-SONDO
schedule (:func:`lr_lambda`, per step), the grad scaler, the RNG states, the sampler position
(epoch, samples consumed), the step counter, the best validation metric, the losses of the
epoch in progress and, with ``ema``, the weight average (:mod:`.averaging`): checkpoints then
hold the average as "student"/"head" (what export, merge, adapt and ``--init`` read) and the
trained weights under "trained". :meth:`Trainer.fit` runs the remaining epochs over key batches; the caller
supplies the loss of a batch and the validation of an epoch, which is all that differs between
the commands. A resumed run therefore ends with the same weights as an uninterrupted one.

Under torchrun (:mod:`.distributed`) the model is wrapped in DistributedDataParallel with batch
norm over the global batch; each rank trains on its contiguous share of every global batch
(:class:`pyssondo.train.data.KeyBatches` with ``rank``/``world_size``), the losses logged are
the means over ranks, and rank 0 alone writes the log, the checkpoints (holding every rank's
RNG state) and the export.
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..progress import Progress
from .averaging import WeightAverage
from .checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from .config import DistillConfig
from .distributed import (all_gather_object, is_main, mean_floats, on_main, sync_batchnorm,
                          world, wrap)
from .rundir import RunDir, find_resumable
from .rounding_noise import add_rounding_noise
from .speed import StepVariants

log = logging.getLogger("ssondo.train")

# compute_loss(x, y) -> (loss to minimise, named parts of it for the log)
LossFn = Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, Dict[str, torch.Tensor]]]
# validate() -> (metric to maximise or None, fields for the epoch's log record)
ValidateFn = Callable[[], Tuple[Optional[float], Dict[str, Any]]]


class TrainingDiverged(ValueError):
    """The loss or the gradient became NaN/inf; the last good checkpoint is kept."""


def lr_lambda(step: int, total: int, warmup: int, final: float) -> float:
    """S-SONDO schedule per step: linear warm-up to 1, then linear decay to ``final``."""
    if step < warmup:
        return (step + 1) / warmup
    return 1.0 + (final - 1.0) * min(1.0, (step - warmup) / max(1, total - 1 - warmup))


def open_run(out: str, config_hash: str, resume: Optional[str]
             ) -> Tuple[Optional[RunDir], Optional[Dict[str, Any]]]:
    """The run folder and checkpoint to continue from, or (None, None) for a new run.

    ``resume``: None (new run), "auto" (the newest run under ``out`` whose config.json has
    ``config_hash`` and a last checkpoint, else a new run), or a run folder or checkpoint path.
    Under torchrun rank 0 chooses and every rank loads that checkpoint.
    """
    if resume is None:
        return None, None
    found = on_main(lambda: _locate(out, config_hash, resume))
    if found is None:
        return None, None
    run, checkpoint = found
    return RunDir(run), load_checkpoint(checkpoint)


def _locate(out: str, config_hash: str, resume: str) -> Optional[Tuple[str, str]]:
    """(run folder, checkpoint) that ``resume`` names, or None for a new run."""
    if resume == "auto":
        run = find_resumable(out, config_hash)
        if run is None:
            log.info("no run with this config under %s: starting a new one", out)
            return None
        checkpoint = run.last
    elif Path(resume).is_dir():
        run, checkpoint = RunDir(resume), RunDir(resume).last
    else:
        run, checkpoint = RunDir(Path(resume).parent.parent), Path(resume)
    load_checkpoint(checkpoint)  # a bad file fails here, on rank 0, with its message
    return str(run.path), str(checkpoint)


class Trainer:
    """Optimisation state and loop of one run.

    Args:
        run: the run folder (checkpoints and log.jsonl are written there).
        cfg: the run's training settings; ``cfg.to_json()`` is stored as the checkpoint's
            "config" (what export, merge and ``--init`` read).
        model: student + head (``model.student``, ``model.head``), on ``device``.
        sampler: the training sampler (``state_dict``/``load_state_dict``; its position is
            stored with each checkpoint).
        steps_per_epoch: optimiser steps per epoch, each of ``cfg.batch_size`` segments.
        teacher: the teacher's record stored in checkpoints (name, fingerprint, dim, ...).
        config_hash: the hash ``--resume auto`` matches (default ``cfg.hash()``).
        extra: more entries for every checkpoint (e.g. the adaptation settings).
        frozen: sub-modules kept in eval mode while the rest trains (e.g. batch-norm layers
            that keep their running statistics).
        command: the command named in error messages.
        rounding_noise: int8 steps of noise on the student's batch-norm outputs while
            training (:func:`.rounding_noise.add_rounding_noise`; 0 = none), as the caller
            resolved it (:meth:`DistillConfig.resolved_rounding_noise`).

    ``net`` is the model to call in the loss (DistributedDataParallel under torchrun, else
    ``model``; compiled or with channels-last weights as ``cfg.compile`` decides,
    :mod:`.speed`); with several processes batch norm in ``model`` is replaced by its
    global-batch version first (:func:`.distributed.sync_batchnorm`).
    """

    def __init__(self, run: RunDir, cfg: DistillConfig, model: nn.Module, sampler: Any,
                 steps_per_epoch: int, device: torch.device, teacher: Dict[str, Any], *,
                 config_hash: Optional[str] = None, extra: Optional[Dict[str, Any]] = None,
                 frozen: Sequence[nn.Module] = (), command: str = "distill",
                 rounding_noise: float = 0.0) -> None:
        self.world = world()
        names = {id(m): name for name, m in model.named_modules()}
        frozen_names = [names[id(m)] for m in frozen]
        model = sync_batchnorm(model, device)
        if rounding_noise > 0:
            add_rounding_noise(model.student, rounding_noise)
        self.run, self.cfg, self.model, self.sampler = run, cfg, model, sampler
        self.variants = StepVariants(model, wrap(model, device), cfg.compile,
                                     tune=device.type == "cpu" and self.world.size == 1)
        self.steps_per_epoch, self.device, self.teacher = steps_per_epoch, device, teacher
        self.config_hash = config_hash or cfg.hash()
        self.extra = dict(extra or {})
        self.frozen = [model.get_submodule(name) for name in frozen_names]
        self.command = command
        if self.world.rank > 0:  # dropout masks differ between ranks
            torch.manual_seed(_rank_seed(cfg.seed, self.world.rank, 0))
        total_steps = cfg.epochs * steps_per_epoch
        warmup = cfg.resolved_warmup_epochs * steps_per_epoch
        self.params = list(model.parameters())
        self.opt = torch.optim.Adam(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_lambda(s, total_steps, warmup, cfg.final_lr_scale))
        self.use_scaler = cfg.precision == "fp16" and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_scaler)
        self.amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[
            cfg.precision]
        self.epoch, self.position, self.step = 0, 0, 0
        self.best: Optional[float] = None
        self.average = WeightAverage(model, cfg.ema) if cfg.ema > 0 else None
        self.losses: List[float] = []             # per step of the epoch in progress
        self.parts: Dict[str, List[float]] = {}   # named loss parts, per step, same epoch

    @property
    def net(self) -> nn.Module:
        """The network the loss calls (see the class docstring)."""
        return self.variants.net

    # -- state -----------------------------------------------------------------------------
    def autocast(self) -> AbstractContextManager:
        """The mixed-precision context for the model's forward pass (a no-op for fp32)."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def restore(self, state: Dict[str, Any]) -> None:
        """Continues from checkpoint ``state``: weights, optimiser, schedule, scaler, RNG,
        sampler position and counters; drops log lines written after it."""
        trained = state.get("trained") or state
        self.model.student.load_state_dict(trained["student"])
        self.model.head.load_state_dict(trained["head"])
        if self.average is not None:
            self.average.load_parts({"student": state["student"], "head": state["head"]})
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        ranks = state.get("rng_ranks") or [state["rng"]]
        rank, size = self.world.rank, self.world.size
        restore_rng(ranks[rank] if len(ranks) == size else state["rng"])
        if rank > 0 and len(ranks) != size:  # another number of processes than before
            torch.manual_seed(_rank_seed(self.cfg.seed, rank, int(state["step"])))
        self.epoch = int(state["sampler"]["epoch"])
        self.position = int(state["sampler"]["position"])
        self.step, self.best = int(state["step"]), state.get("best_metric")
        self.losses = [float(v) for v in state["epoch_losses"]]
        self.parts = {k: [float(v) for v in vs] for k, vs in state.get("epoch_parts", {}).items()}
        self.sampler.load_state_dict(state["sampler"])
        if is_main():
            self.run.truncate_log(self.step)
        log.info("resuming %s at epoch %d, step %d", self.run.path, self.epoch + 1, self.step)

    def save(self, metric: Optional[float], is_best: bool) -> None:
        """Writes checkpoints/last.pt (and best.pt when ``is_best``) atomically (rank 0; every
        rank calls it, as it collects the ranks' RNG states)."""
        rngs = all_gather_object(capture_rng())
        if not is_main():
            return
        mid_epoch = bool(self.position)
        trained = {"student": self.model.student.state_dict(),
                   "head": self.model.head.state_dict()}
        kept = trained if self.average is None else {
            "student": self.average.part("student"), "head": self.average.part("head")}
        state = {"config": self.cfg.to_json(), "config_hash": self.config_hash,
                 "teacher": self.teacher, "student_name": self.cfg.student, **kept,
                 **({"trained": trained} if self.average is not None else {}),
                 "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                 "scaler": self.scaler.state_dict(), "rng": rngs[0],
                 **({"rng_ranks": rngs} if len(rngs) > 1 else {}),
                 "sampler": {**self.sampler.state_dict(), "epoch": self.epoch,
                             "position": self.position},
                 "step": self.step, "best_metric": self.best, "metric": metric,
                 "epochs_done": self.epoch,
                 "epoch_losses": list(self.losses) if mid_epoch else [],
                 "epoch_parts": {k: list(v) for k, v in self.parts.items()} if mid_epoch else {},
                 **self.extra}
        save_checkpoint(self.run.last, state)
        if is_best:
            save_checkpoint(self.run.best, state)

    # -- the loop --------------------------------------------------------------------------
    def _diverged(self, what: str) -> TrainingDiverged:
        kept = self.run.last if self.run.last.is_file() else None
        return TrainingDiverged(
            f"{self.command}: {what} became NaN/inf at epoch {self.epoch + 1}, step "
            f"{self.step + 1}; "
            + (f"the last good checkpoint is kept at {kept}" if kept
               else "no checkpoint was written yet")
            + f"; lower --lr (now {self.cfg.lr:g}) or use --precision fp32 "
              f"(now {self.cfg.precision})")

    def _update(self, loss: torch.Tensor, mean_loss: float) -> None:
        """One optimiser step on ``loss`` (clipped; raises TrainingDiverged on NaN/inf).
        ``mean_loss``: the loss's mean over ranks, so every rank takes the same decision."""
        if not math.isfinite(mean_loss):
            raise self._diverged("the loss")
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip or float("inf"))
        if not torch.isfinite(norm) and not self.use_scaler:
            raise self._diverged("the gradient")
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()

    def _step(self, compute_loss: LossFn, x: torch.Tensor, y: torch.Tensor,
              total_steps: int) -> Tuple[List[float], Dict[str, torch.Tensor]]:
        """One optimiser step on batch (x, y): the means over ranks of the loss and its parts,
        and the parts. Times it for :class:`.speed.StepVariants`; a variant on trial that
        fails is replaced by eager and the step taken again."""
        while True:
            t0 = time.perf_counter()
            try:
                loss, parts = compute_loss(x, y)
                means = mean_floats([float(loss.detach())]
                                    + [float(v.detach()) for v in parts.values()])
                self._update(loss, means[0])
            except TrainingDiverged:
                raise
            except Exception as e:  # noqa: BLE001 - only a variant on trial is retried
                if not self.variants.failed(e):
                    raise
                continue
            settled = self.variants.settled
            self.variants.observe(time.perf_counter() - t0, total_steps - self.step - 1)
            if not settled and self.variants.settled and is_main():
                self.run.append_log({"kind": "speed", "step": self.step + 1,
                                     "choice": self.variants.choice,
                                     "step_seconds": self.variants.seconds})
            return means, parts

    def fit(self, batches: Iterator, compute_loss: LossFn, validate: ValidateFn,
            progress: bool = True) -> None:
        """Trains from the current position to the end of the last epoch.

        ``batches`` yields ``(x, y, rows)`` in training order from the current position (see
        :class:`pyssondo.train.data.KeyBatches`; this rank's share of each global batch).
        Each epoch ends with ``validate()`` (called on every rank; its metric must be the same
        on all), a log record (train loss, the parts' means, the validation fields, time) and
        a checkpoint; best.pt follows the validation metric (or minus the train loss when
        there is none).
        """
        cfg, run = self.cfg, self.run
        main, size = is_main(), self.world.size
        per_epoch = self.steps_per_epoch * cfg.batch_size
        total_steps = cfg.epochs * self.steps_per_epoch
        while self.epoch < cfg.epochs:
            self.net.train()
            for module in self.frozen:
                module.eval()
            t0 = time.perf_counter()
            with Progress(per_epoch, desc=f"epoch {self.epoch + 1}/{cfg.epochs}", unit="seg",
                          enabled=None if progress and main else False) as bar:
                bar.done = self.position
                while self.position < per_epoch:
                    x, y, _ = next(batches)
                    x = x.to(self.device, non_blocking=True)
                    y = y.to(self.device, non_blocking=True)
                    means, parts = self._step(compute_loss, x, y, total_steps)
                    self.step += 1
                    if self.average is not None:
                        self.average.update(self.model, self.step)
                    self.position += x.shape[0] * size
                    self.losses.append(means[0])
                    for name, value in zip(parts, means[1:]):
                        self.parts.setdefault(name, []).append(value)
                    bar.update(x.shape[0] * size, loss=self.losses[-1])
                    if main and self.step % cfg.log_every == 0:
                        recent = {k: float(np.mean(v[-cfg.log_every:]))
                                  for k, v in self.parts.items()}
                        run.append_log({"kind": "step", "epoch": self.epoch + 1,
                                        "step": self.step,
                                        "loss": float(np.mean(self.losses[-cfg.log_every:])),
                                        "lr": self.sched.get_last_lr()[0], **recent})
                    if cfg.save_every and self.step % cfg.save_every == 0 \
                            and self.position < per_epoch:
                        self.save(None, False)
            with self.average.applied(self.model) if self.average else nullcontext():
                metric, fields = validate()
            train_loss = float(np.mean(self.losses)) if self.losses else float("nan")
            metric = metric if metric is not None else -train_loss
            is_best = self.best is None or metric > self.best
            self.best = metric if is_best else self.best
            seconds = time.perf_counter() - t0
            record = {"kind": "epoch", "epoch": self.epoch + 1, "step": self.step,
                      "train_loss": train_loss, **fields,
                      **{k: float(np.mean(v)) for k, v in self.parts.items()},
                      "seconds": round(seconds, 3),
                      "samples_per_s": round(len(self.losses) * cfg.batch_size
                                             / max(1e-9, seconds), 1)}
            self.epoch, self.position = self.epoch + 1, 0
            self.losses, self.parts = [], {}
            if main:
                run.append_log(record)
            self.save(metric, is_best)
            shown = "".join(f", {k.replace('_', ' ')} {v:.4f}" for k, v in sorted(fields.items())
                            if v is not None)
            log.info("epoch %d/%d: train loss %.4f%s", self.epoch, cfg.epochs, train_loss, shown)


def _rank_seed(seed: int, rank: int, step: int) -> int:
    """The torch seed of rank ``rank`` > 0 (its own dropout masks), from (seed, rank, step)."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])
