"""Continual adaptation of a distilled student to a new domain without forgetting (SONAR).

:func:`adapt` is what ``ssondo adapt`` calls. It starts from a finished run (the *parent*: its
settings, its teacher cache of the old domain, its best checkpoint's student + head) and
trains on the new domain's unlabeled audio with three guards against forgetting:

- **Stratified replay.** Every batch of B segments holds ``round(replay_fraction * B)``
  segments of the old domain (the parent's training files) and the rest from the new one
  (:class:`pyssondo.sampling.StratifiedSampler`), each part balanced over its clusters.
- **A grown codebook.** The parent's cosine k-means centroids are kept and new clusters are
  added for new-domain patterns far from all of them (:mod:`pyssondo.clustering.codebook`); old
  and new segments are balanced over the grown codebook.
- **Self-distillation.** The loss is ``loss(head(student(x)), teacher(x)) + self_weight *
  (1 - cos(student(x), previous(x)))`` where ``previous`` is the parent's student, frozen. As
  it is frozen and the segments are fixed, its embeddings of all old and new segments are
  computed once (eval mode, no augmentation) and stored in the run folder
  (``previous-<key>.npy``, written atomically): one forward pass per segment instead of a
  second model's forward pass at every step of every epoch, and no second model in memory.
  With mixup, the stored embeddings are mixed with the same weights as the teacher targets.

Validation: the parent's held-out old files (the same by-file split, so the parent never
trained on them) and held-out new files, scored separately as cosine to the teacher before
training (epoch 0) and after every epoch; best.pt follows their mean. The run folder has the
distill layout, so ``ssondo export``, ``merge``, ``embed`` and ``distill --init`` read it.

Under torchrun it runs like ``distill`` (:mod:`pyssondo.train.distributed`): rank 0 writes the
caches, codebook, previous embeddings and run folder while the others wait; each rank trains
on its share of every global batch and both loss terms see the gathered global batch.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

import numpy as np

from ..errors import ParameterError
from .config import DistillConfig, settings_hash
from .rundir import RunDir

if TYPE_CHECKING:  # torch is imported by the functions that train, so --help stays instant
    import torch

log = logging.getLogger("ssondo.adapt")

# DistillConfig settings an adaptation may change; the rest (student, head, front end, window,
# loss, clusters) are the parent's. Unset ones are the parent's too, except ``out`` (the folder
# holding the parent) and ``cache_dir`` (see :func:`adapt_config`).
OVERRIDABLE = ("teacher", "cache_dir", "balance_alpha", "val_fraction", "epochs", "batch_size",
               "samples_per_epoch", "lr", "warmup_epochs", "final_lr_scale", "weight_decay",
               "grad_clip", "seed", "precision", "device", "cache_mel", "workers", "threads",
               "compile", "gain_db", "time_mask", "freq_mask", "mixup", "out", "save_every",
               "log_every", "projected")


@dataclass
class AdaptConfig:
    """Resolved settings of one adaptation run (units in the comments)."""

    parent: str = ""                        # the finished run folder adapted
    new_audio: str = ""                     # folder of the new domain's unlabeled audio
    replay_fraction: float = 0.5            # share of every batch drawn from the old data
    self_weight: float = 1.0                # weight of 1 - cos(student, previous student)
    grow_threshold: Optional[float] = None  # cosine; None = codebook.GROW_PERCENTILE rule
    train: DistillConfig = field(default_factory=DistillConfig)  # the parent's, overridden

    def __post_init__(self) -> None:
        if isinstance(self.train, dict):
            self.train = DistillConfig.from_stored(self.train, source="adapt config")

    def validate(self) -> None:
        """Raises ParameterError naming the first invalid setting and its valid range."""
        checks = [
            ("replay_fraction", 0.0 <= self.replay_fraction < 1.0, "expected 0 <= fraction < 1"),
            ("self_weight", math.isfinite(self.self_weight) and self.self_weight >= 0,
             "expected >= 0 (0 = off)"),
            ("grow_threshold", self.grow_threshold is None or -1 <= self.grow_threshold <= 1,
             "expected a cosine similarity in [-1, 1] or unset"),
        ]
        for name, ok, valid in checks:
            if not ok:
                raise ParameterError(f"adapt: {name}={getattr(self, name)!r} is invalid: {valid}")
        self.train.validate()
        if self.replay_per_batch >= self.train.batch_size:
            raise ParameterError(f"adapt: replay_fraction={self.replay_fraction!r} fills every "
                                 f"batch of {self.train.batch_size} with old segments; lower "
                                 f"it or raise the batch size")

    @property
    def replay_per_batch(self) -> int:
        """Old segments per batch: round(replay_fraction * batch_size), halves rounded up."""
        return int(math.floor(self.replay_fraction * self.train.batch_size + 0.5))

    def to_dict(self) -> Dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                   if f.name != "train"}, "train": self.train.to_dict()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "AdaptConfig":
        return cls(**json.loads(text))

    def hash(self) -> str:
        """sha256 (16 hex digits) of the settings that determine the run's numbers."""
        return settings_hash({**self.to_dict(), "train": self.train.hashed_settings()})

    def replace(self, **changes: Any) -> "AdaptConfig":
        return dataclasses.replace(self, **changes)


class Parent:
    """A finished run folder: its settings, its record and its best (else last) checkpoint.

    Raises:
        FileNotFoundError: not a run folder, or no checkpoint. ValueError: unreadable.
    """

    def __init__(self, path: "str | Path") -> None:
        from .checkpoint import load_checkpoint

        self.run = RunDir(Path(path).expanduser().resolve())
        if not self.run.config.is_file():
            raise FileNotFoundError(f"{path}: not a run folder (no config.json); give the "
                                    f"folder 'ssondo distill' wrote")
        self.checkpoint = self.run.best if self.run.best.is_file() else self.run.last
        if not self.checkpoint.is_file():
            raise FileNotFoundError(f"{path}: the run has no checkpoint yet (checkpoints/"
                                    f"best.pt or last.pt); finish it with --resume first")
        self.record: Dict[str, Any] = self.run.read_config()
        self.state = load_checkpoint(self.checkpoint)
        self.cfg = DistillConfig.from_json(self.state["config"])
        if "cache" not in self.record:
            raise ValueError(f"{self.run.config}: records no teacher cache ('cache'); adapt "
                             f"needs a run made by 'ssondo distill'")
        self.cache = Path(self.record["cache"])


def adapt_config(parent: "str | Path", new_audio: "str | Path", *,
                 replay_fraction: float = 0.5, self_weight: float = 1.0,
                 grow_threshold: Optional[float] = None, **overrides: Any) -> AdaptConfig:
    """Resolves the settings of adapting run ``parent`` to the audio in ``new_audio``.

    ``overrides`` are DistillConfig settings named in :data:`OVERRIDABLE`; the others are the
    parent's. Defaults that differ from the parent's: ``out`` is the folder holding the parent
    run; ``cache_dir`` (the cache root of the new audio) is
    ``<parent cache root>/<audio folder name>-<8 hex of its path>``
    (:func:`pyssondo.cache.open.audio_cache_root`), never the parent's root itself, whose
    cache of the old domain it would replace.
    """
    from ..cache.open import audio_cache_root

    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise ParameterError(f"adapt: {unknown} cannot be changed when adapting (they are the "
                             f"parent run's); changeable: {list(OVERRIDABLE)}")
    p = Parent(parent)
    audio = Path(new_audio).expanduser().resolve()
    defaults = {"out": str(p.run.path.parent),
                "cache_dir": str(audio_cache_root(p.cache.parent, str(audio)))}
    train = p.cfg.replace(**{**defaults, **overrides}, init=str(p.checkpoint))
    return AdaptConfig(parent=str(p.run.path), new_audio=str(audio),
                       replay_fraction=float(replay_fraction), self_weight=float(self_weight),
                       grow_threshold=grow_threshold, train=train)


def adapt(cfg: AdaptConfig, *, resume: Optional[str] = None, progress: bool = True,
          export: bool = True):
    """Runs (or resumes) an adaptation and returns a :class:`pyssondo.train.job.RunResult`
    whose ``summary`` holds the codebook and the validation before and after.

    Args:
        cfg: resolved settings (:func:`adapt_config`).
        resume: None, "auto" (newest run under ``cfg.train.out`` with the same settings, else
            a new run) or a run folder / checkpoint; a resumed run keeps its stored settings
            (only out/workers/threads/log_every may differ).
        progress: draw progress bars. export: write student.pt when training finishes.

    Raises:
        ValueError: bad settings or inputs (not a run, another teacher, no usable new audio);
            TrainingDiverged when the loss becomes NaN/inf. OSError: a checkpoint write failed.
    """
    import torch

    from ..cache import EmbeddingCache
    from ..clustering import GROW_PERCENTILE, grow_codebook, load_or_fit_codebook, nearest, \
        similarity_percentile
    from ..evaluation.agreement import agreement
    from ..losses import make_loss
    from ..sampling import StratifiedSampler
    from .data import DistillDataset, JoinedTargets, StackedRows, split_by_file, warn_upsampled
    from .distributed import gather_batch, is_main, main_first, on_main
    from .engine import Trainer
    from .job import (RunResult, create_run, evaluate, finish, job_cache, open_job, setup,
                      student_inputs, teacher_record, train_loader, validation_embeddings)
    from .model import build_model
    from .rundir import new_run_dir, plot_epoch_metrics
    from .targets import TargetNorm, Targets

    job = open_job(cfg.train.out, cfg.hash(), resume, "adapt")
    if not job.fresh:
        stored = AdaptConfig.from_json(job.state["adapt"])
        cfg = stored.replace(train=stored.train.with_runtime_of(cfg.train))
    cfg.validate()
    train = cfg.train
    parent = Parent(cfg.parent)
    if len(parent.cfg.teachers) > 1 or len(parent.state.get("targets") or [0]) > 1:
        raise ValueError(f"{parent.run.path}: a run with several targets; adapt continues "
                         f"single-target runs only")
    device = setup(train, "adapt")
    progress = progress and is_main()

    # Caches: the parent's (old domain) and the new audio's, by the same teacher.
    if not parent.cache.joinpath("meta.json").is_file():
        raise FileNotFoundError(f"{parent.cache}: the teacher cache of run {parent.run.path} "
                                f"is gone; rebuild it with 'ssondo cache'")
    old = EmbeddingCache(parent.cache)
    old_fp = str(old.meta["teacher"]["fingerprint"])
    _check_teacher(train.teacher, old_fp, parent)
    if train.cache_dir and Path(train.cache_dir).resolve() in (parent.cache, parent.cache.parent):
        raise ValueError(f"--cache-dir {train.cache_dir} holds the teacher cache of the old audio "
                         f"({parent.cache}); caching the new audio there would replace it; give "
                         f"another folder")
    new_path = job_cache(train, train.teacher, cfg.new_audio, train.cache_dir, progress)
    new = EmbeddingCache(new_path)
    if len(new) == 0:
        raise ValueError(f"{cfg.new_audio}: no usable audio segments (the folder is empty or "
                         f"every file failed to decode)")
    loss_fn = make_loss(train.loss)
    if loss_fn.level == "frame":
        raise ValueError(f"adapt: the parent's loss {train.loss} is frame-level; adapt trains "
                         f"clip-level losses only")
    old_x, new_x = old.embeddings(pool="mean"), new.embeddings(pool="mean")
    dim = int(old_x.shape[1])
    model = build_model(train, dim, frame_level=False)
    model.student.load_state_dict(parent.state["student"])
    model.head.load_state_dict(parent.state["head"])
    model.to(device)
    old_segs, new_segs = old.segments(), new.segments()
    warn_upsampled(new_segs, train.mel.sample_rate)

    # Splits: the parent's held-out old files, and held-out new files.
    old_train, old_val = split_by_file(old_segs, parent.cfg.val_fraction, parent.cfg.seed)
    new_train, new_val = split_by_file(new_segs, train.val_fraction, train.seed)
    n_old = len(old_segs)
    if cfg.replay_fraction > 0 and len(old_train) == 0:
        raise ValueError(f"{parent.cache}: no old training segments to replay; use "
                         f"--replay-fraction 0")

    # The grown codebook and the stratified sampler over it.
    k = min(parent.cfg.clusters, n_old)
    with main_first():
        _, centers = load_or_fit_codebook(parent.cache, k, parent.cfg.cluster_metric,
                                          parent.cfg.seed)
    threshold = (cfg.grow_threshold if cfg.grow_threshold is not None
                 else similarity_percentile(old_x, centers, GROW_PERCENTILE))
    codebook = on_main(lambda: grow_codebook(centers, np.asarray(new_x[new_train]), threshold,
                                             train.seed))
    old_labels, _ = nearest(old_x, codebook)
    new_labels, _ = nearest(new_x, codebook)
    per_new = train.batch_size - cfg.replay_per_batch
    samples = train.samples_per_epoch or math.ceil(len(new_train) * train.batch_size / per_new)
    steps_per_epoch = max(1, math.ceil(samples / train.batch_size))
    sampler = StratifiedSampler(old_labels[old_train], new_labels[new_train], train.batch_size,
                                steps_per_epoch, cfg.replay_fraction, train.balance_alpha,
                                train.seed)
    rows = np.concatenate([old_train, n_old + new_train])

    # Inputs (log-mel files when chosen) and targets over the rows [old | new].
    audio, mel, cached = student_inputs(train, [(parent.cache, old), (new_path, new)],
                                        job.recorded.get("mel_cached"))
    teacher_rows = StackedRows([old_x, new_x])
    plain = DistillDataset(audio, teacher_rows, mel)

    growth = {"old_clusters": int(k), "new_clusters": int(codebook.shape[0] - k),
              "threshold": float(threshold),
              "threshold_rule": ("given" if cfg.grow_threshold is not None else
                                 f"{GROW_PERCENTILE:g}th percentile of the old embeddings' "
                                 f"cosine to their centroid")}
    noise = train.resolved_rounding_noise(len(rows))
    run = job.run or create_run(
        lambda: new_run_dir(train.out, train.student, f"adapt-{Path(cfg.new_audio).name}"),
        train, {"config_hash": cfg.hash(), "adapt": json.loads(cfg.to_json()),
                "parent": str(parent.run.path), "parent_checkpoint": str(parent.checkpoint),
                "teacher_fingerprint": old_fp, "cache": str(parent.cache),
                "new_cache": str(new_path), "codebook": growth,
                "train_segments_old": int(len(old_train)), "val_segments_old": int(len(old_val)),
                "train_segments_new": int(len(new_train)), "val_segments_new": int(len(new_val)),
                "replay_per_batch": sampler.n_a, "new_per_batch": sampler.n_b,
                "steps_per_epoch": steps_per_epoch, "mel_cached": bool(cached),
                "rounding_noise": noise})
    targets: Any = teacher_rows
    if cfg.self_weight:
        key = hashlib.sha256(f"{parent.checkpoint}:{old.digest}:{new.digest}:"
                             f"{train.mel.to_dict()}".encode()).hexdigest()[:16]
        with main_first():
            prev = previous_embeddings(run.path / f"previous-{key}.npy", model, plain,
                                       n_old + len(new), train, device, progress)
        targets = JoinedTargets(teacher_rows, prev)
    dataset = DistillDataset(audio, targets, mel)

    # With self-distillation, batch norm keeps the parent's statistics: the student at step 0
    # is then the frozen previous model and the self term measures only how far the weights
    # moved. (In train mode the statistics of mixed old/new batches would differ from those
    # the previous embeddings were computed with, and the term would pull at that gap.)
    frozen = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    # The parent's head predicts normalised targets: keep its normalisation (and record it).
    norm = Targets([dim], [TargetNorm(dim)]).to(device)
    if "target_norm" in parent.state:
        norm.load_state_dict(parent.state["target_norm"])
    kept = {k: parent.state[k] for k in ("targets", "target_norm") if k in parent.state}
    trainer = Trainer(run, train, model, sampler, steps_per_epoch, device,
                      teacher_record(old.meta, dim),
                      config_hash=cfg.hash(), extra={"adapt": cfg.to_json(), **kept},
                      frozen=frozen if cfg.self_weight else (), command="adapt",
                      rounding_noise=noise)

    # The label-free measures of distill on each domain's held-out files; best.pt follows
    # the parent's --best-metric, averaged over the two domains.
    mean = np.mean(np.concatenate([old_x[old_train], new_x[new_train]]), axis=0)
    metric = train.best_metric

    def domain(val: np.ndarray) -> Dict[str, float]:
        if len(val) < 2:  # one segment has no neighbours: the cosine alone
            return {"val_cos": evaluate(model, plain, val, train, device, norm)} if len(val) else {}
        return agreement(*validation_embeddings(model, plain, val, train, device, norm), mean)

    def validate() -> Tuple[Optional[float], Dict[str, Any]]:
        scores = {"old": domain(old_val), "new": domain(n_old + new_val)}
        fields: Dict[str, Any] = {f"{k}_{d}": v for d, m in scores.items() for k, v in m.items()}
        fields.update({f"val_cos_{d}": m.get("val_cos") for d, m in scores.items()})
        for name in {"val_cos", metric}:
            have = [m[name] for m in scores.values() if name in m]
            fields[name] = float(np.mean(have)) if have else None
        return fields[metric], fields

    if job.fresh:
        _, before = validate()
        if is_main():
            run.append_log({"kind": "epoch", "epoch": 0, "step": 0, **before})
        log.info("before adapting: validation cosine old %s, new %s",
                 _fmt(before["val_cos_old"]), _fmt(before["val_cos_new"]))
    else:
        trainer.restore(job.state)

    def compute_loss(x: torch.Tensor, y: torch.Tensor):
        with trainer.autocast():
            emb, pred = trainer.net(x, with_embedding=True)
        emb, pred, y = gather_batch(emb.float(), pred.float(), y)
        teacher_loss = loss_fn(pred, norm.normalize(y[:, :dim]))
        if not cfg.self_weight:
            return teacher_loss, {"teacher_loss": teacher_loss}
        self_loss = 1.0 - torch.nn.functional.cosine_similarity(
            emb, y[:, dim:], dim=-1).mean()
        return (teacher_loss + cfg.self_weight * self_loss,
                {"teacher_loss": teacher_loss, "self_loss": self_loss})

    loader = train_loader(train, dataset, sampler, rows, trainer.epoch, device)
    batches = iter(loader)
    trainer.fit(batches, compute_loss, validate, progress)
    del batches, loader
    if is_main():
        plot_epoch_metrics(run, {"val_cos_old": "cosine, old domain (held-out files)",
                                 "val_cos_new": "cosine, new domain (held-out files)",
                                 "knn_agree_backbone_old": "kNN agreement, old domain",
                                 "knn_agree_backbone_new": "kNN agreement, new domain"},
                           run.validation_plot, ylabel="agreement with the teacher")
    final, out = finish(run, projected=train.projected, export=export)
    epochs = [r for r in run.read_log() if r.get("kind") == "epoch"]
    shown = [f"{m}_{d}" for m in ("val_cos", "knn_agree_backbone") for d in ("old", "new")]
    summary = {"steps": trainer.step, "codebook": growth, "parent": str(parent.run.path),
               "before": {k: epochs[0].get(k) for k in shown},
               "after": {k: epochs[-1].get(k) for k in shown},
               "train_segments": {"old": int(len(old_train)), "new": int(len(new_train))},
               "val_segments": {"old": int(len(old_val)), "new": int(len(new_val))}}
    best = final.get("best_metric") if len(old_val) or len(new_val) else None
    return RunResult(run, int(final["epochs_done"]), best, out, summary)


def previous_embeddings(path: Path, model, dataset, n: int, cfg: DistillConfig,
                        device: torch.device, progress: bool = True) -> np.ndarray:
    """The backbone embeddings ``model.student(x)`` of rows ``0 .. n - 1`` of ``dataset``,
    float32 [n, d], computed once in eval mode without augmentation and stored at ``path``
    (atomically; memory-mapped when read back). Reused when ``path`` holds [n, d] rows."""
    import torch

    from ..atomic import atomic_open
    from ..progress import Progress
    from .data import Collate, fixed_batches, make_loader

    if path.is_file():
        rows = np.load(path, mmap_mode="r")
        if rows.shape[0] == n and rows.dtype == np.float32:
            return rows
    model.eval()
    loader = make_loader(dataset, fixed_batches(np.arange(n), cfg.batch_size),
                         Collate(cfg.mel), min(cfg.workers, 1))
    out = []
    with Progress(n, desc="previous student", unit="seg",
                  enabled=None if progress else False) as bar, torch.no_grad():
        for x, _, _ in loader:
            out.append(model.student(x.to(device)).float().cpu().numpy())
            bar.update(x.shape[0])
    rows = np.concatenate(out)
    with atomic_open(path) as f:
        np.save(f, rows)
    return np.load(path, mmap_mode="r")


def _check_teacher(teacher: str, fingerprint: str, parent: Parent) -> None:
    """The teacher must be the one that built the parent's cache (compared by sha256)."""
    from ..loading import file_sha256, is_factory_spec

    if not teacher or is_factory_spec(teacher):
        return
    if not Path(teacher).is_file():
        raise FileNotFoundError(f"{teacher}: the teacher of run {parent.run.path} is not there; "
                                f"give its file with --teacher")
    mine = file_sha256(teacher)
    if mine != fingerprint:
        raise ValueError(f"{teacher}: teacher sha256 {mine[:12]} differs from {fingerprint[:12]}, "
                         f"the teacher of run {parent.run.path} (cache {parent.cache}); adapt "
                         f"with the run's own teacher")


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.4f}"
