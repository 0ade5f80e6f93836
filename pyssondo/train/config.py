"""DistillConfig: every setting of a distillation run, held once.

The same dataclass gives the library defaults, the ``ssondo distill`` argparse defaults, the
``--config`` file schema (TOML or JSON, keys = field names, the front end as a ``[mel]`` table)
and the run folder's ``config.json``. Defaults are S-SONDO's: mn10 student with the MLP head,
cosine loss, K = 50 clusters with alpha = 1 balanced sampling, Adam lr 8e-4 with warm-up and a
linear decay to 0.01x, gradient clipping at 5, 10 s segments, and a 32 kHz 128-band log-mel
front end whose rate is independent of the teacher's (each model sees its own resampled audio).

Where we depart from S-SONDO, on evidence from ``bench/quality.py`` (aisfx into mn01 / mn04 on
an hour of audio, share of the teacher's probe score on held-out instruments and voices): the
loss is InfoNCE (contrastive over the batch: each student output must pick its own segment's
teacher embedding among the batch's; cosine regression rewards the one direction all aisfx
embeddings share), and best.pt follows the validation kNN agreement with the teacher (it
ranked the students as their probe scores did; the raw validation cosine ranked them the
other way round). InfoNCE fixes directions, not the teacher's space: for ``--projected``
exports, pick a regression loss (``--loss cosine --target-norm whiten``). The teacher sees
4 views of every segment (``views``, :mod:`pyssondo.views`), and an epoch of a small set
(1000 to 12,800 segments) is raised to 200 steps, at most 4 passes, for students under 100k
parameters to 400 steps, at most 8 passes (:meth:`DistillConfig.resolved_schedule`). The README's distillation section has the
table of every recipe tried.

Warm-up: S-SONDO warms up for 8 epochs of a long run. ``warmup_epochs = None`` resolves to
``min(8, epochs // 4)`` so a short run spends at most a quarter of its steps warming up.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ..errors import ParameterError, check_known_settings
from ..frontend import MelConfig
from ..views import DEFAULT_SPEC, DEFAULT_VIEWS, ViewConfig

PRECISIONS = ("fp32", "bf16", "fp16")
CACHE_MEL = ("auto", "on", "off")
DEVICES = ("cpu", "cuda")
COMPILE_MODES = ("auto", "on", "off")  # the training step's form (.speed)

CLUSTER_METRICS = ("cosine", "euclidean")
MIN_PASS_SEGMENTS = 1000  # sets of fewer training segments keep one pass per epoch
# The small-data schedule by student size (DistillConfig.resolved_schedule): students of fewer
# parameters than SMALL_STUDENT_PARAMS get SMALL_SCHEDULE, the others SCHEDULE, each
# (min_steps_per_epoch, max_passes).
SMALL_STUDENT_PARAMS = 100_000
SMALL_SCHEDULE = (400, 8)
SCHEDULE = (200, 4)
# int8 steps of rounding noise for sets of MIN_PASS_SEGMENTS training segments or more when
# --rounding-noise is unset (DistillConfig.resolved_rounding_noise); smaller sets train without.
ROUNDING_NOISE = 1.0

# Settings that change neither the data, the model nor the numbers a run produces: two
# configs that differ only here are the same run for ``--resume auto``.
NOT_HASHED = ("out", "cache_dir", "workers", "threads", "log_every", "eval_data",
              "eval_label_column", "teacher_batch_size", "compile")
# Of those, the ones a resumed run takes from the command that resumes it.
RUNTIME = ("out", "workers", "threads", "log_every", "eval_data", "eval_label_column",
           "teacher_batch_size", "compile")
# Settings whose default changed, with the value a stored config that lacks them meant.
STORED_BEFORE: Dict[str, Any] = {"views": 1, "min_steps_per_epoch": 0, "max_passes": 4,
                                 "rounding_noise": 0.0}


@dataclass
class DistillConfig:
    """Resolved settings of one distillation run (units in the comments)."""

    # Inputs.
    teacher: Union[str, List[str]] = ""  # TorchScript file or pkg.mod:fn, or a list of them
                                         # (ensemble distillation: one head per target)
    audio: str = ""                      # folder of unlabeled audio
    teacher_sr: Optional[int] = None     # Hz; only when the teacher does not state its rate
    cache_dir: Optional[str] = None      # cache root (default: OUT/cache/<audio>-<hash>) or a
                                         # cache folder
    window_s: float = 10.0               # segment window, seconds
    hop_s: Optional[float] = None        # segment hop, seconds (None = window)
    cache_dtype: str = "float16"         # teacher embeddings on disk
    teacher_batch_size: int = 16         # segments per teacher forward when filling the cache
    # Model.
    student: str = "mn10"
    head: str = "mlp"                    # mlp | linear | identity
    init: Optional[str] = None           # student weights to start from (a checkpoint or run)
    mel: MelConfig = field(default_factory=MelConfig)
    # Objective and sampling.
    loss: str = "infonce"                # measured on bench/quality.py (module docstring)
    target_norm: str = "none"            # none | center | standardize | whiten (cache stats)
    teacher_weights: List[float] = field(default_factory=list)  # per teacher (empty = all 1)
    target_weights: List[float] = field(default_factory=list)   # per target (empty = all 1)
    best_metric: str = "knn_agree_backbone"  # validation measure best.pt follows (MEASURES)
    clusters: int = 50                   # K of the k-means behind balanced sampling
    cluster_metric: str = "cosine"
    balance_alpha: float = 1.0           # 0 = uniform sampling, 1 = every cluster equally often
    val_fraction: float = 0.1            # share of FILES held out for validation
    # Optimisation.
    epochs: int = 30
    batch_size: int = 64
    samples_per_epoch: Optional[int] = None  # None = resolved_samples_per_epoch's rule
    min_steps_per_epoch: Optional[int] = None  # small data: an epoch is at least this many
    max_passes: Optional[int] = None     # steps, but at most this many passes over the data
    #                                      (0 = 1 pass); None = by student size (SCHEDULE)
    lr: float = 8e-4
    warmup_epochs: Optional[int] = None  # None = min(8, epochs // 4)
    final_lr_scale: float = 0.01         # lr at the last step, as a fraction of lr
    weight_decay: float = 0.0
    rounding_noise: Optional[float] = None  # int8 steps of uniform noise on batch-norm
    #                                      outputs while training (0 = off; rounding_noise.py);
    #                                      None = by data size (resolved_rounding_noise)
    grad_clip: float = 5.0               # max global gradient norm (0 = off)
    ema: float = 0.0                     # decay per step of the weight average that validation,
    #                                      best.pt and the export use (0 = off; engine.py)
    seed: int = 0
    precision: str = "fp32"
    device: str = "cpu"
    # Data pipeline and augmentation (student side only; targets stay the teacher's).
    cache_mel: str = "auto"              # students' log-mel in a float16 file: auto | on | off
    workers: int = 2                     # DataLoader worker processes (0 = main process)
    threads: int = 0                     # torch and C++ core threads (0 = library default)
    compile: str = "auto"                # training step: auto | on (torch.compile) | off (speed.py)
    gain_db: float = 0.0                 # random gain in [-gain_db, +gain_db] dB
    time_mask: int = 0                   # max frames of one time mask (0 = off)
    freq_mask: int = 0                   # max bands of one frequency mask (0 = off)
    mixup: float = 0.0                   # Beta(mixup, mixup) mixing weight (0 = off)
    # Teacher-side views: K per segment in the teacher cache, view 0 clean (pyssondo.views).
    views: int = DEFAULT_VIEWS           # 1 = the clean segment only (views.DEFAULT_VIEWS)
    view_augment: str = DEFAULT_SPEC     # augmentations of views >= 1 (ViewConfig.from_spec)
    # Bookkeeping.
    out: str = "runs"
    save_every: int = 0                  # also checkpoint every N steps (0 = each epoch only)
    log_every: int = 10                  # steps between log.jsonl lines
    projected: bool = False              # the run's student.pt outputs teacher-space embeddings
    eval_data: Optional[str] = None      # labeled data scored with 'ssondo eval --compare' at
                                         # the end (a folder of class folders or a CSV)
    eval_label_column: Optional[str] = None  # the CSV's label column for eval_data

    def __post_init__(self) -> None:
        if isinstance(self.mel, dict):
            self.mel = MelConfig.from_dict(self.mel)
        if isinstance(self.cache_mel, bool):  # configs written before "auto" existed
            self.cache_mel = "on" if self.cache_mel else "off"

    # -- derived values ------------------------------------------------------------------
    @property
    def teachers(self) -> List[str]:
        """The teacher specs, in order (one for a plain run)."""
        if isinstance(self.teacher, (list, tuple)):
            return [str(t) for t in self.teacher]
        return [self.teacher] if self.teacher else []

    @property
    def resolved_warmup_epochs(self) -> int:
        return self.warmup_epochs if self.warmup_epochs is not None else min(8, self.epochs // 4)

    @property
    def view_config(self) -> ViewConfig:
        """The teacher-side view settings (ParameterError when invalid)."""
        return ViewConfig.from_spec(self.views, self.view_augment)

    def resolved_schedule(self, student_params: int) -> Tuple[int, int]:
        """(min_steps_per_epoch, max_passes) for a student of ``student_params`` parameters:
        the settings, and where one is unset SMALL_SCHEDULE below SMALL_STUDENT_PARAMS
        parameters, else SCHEDULE.

        Measured with 4 teacher-side views on bench/quality.py (2800 training segments, 30
        epochs; share of the teacher kept): 1, 4 and 8 passes (8: 400 steps at least) kept
        mn01 (43k parameters) 67.3%, 83.2% and 87.7%, but mn04 (516k) 82.5%, 94.9% and
        90.6%: the smallest students underfit with 4 passes, larger ones overfit with 8."""
        small_steps, small_passes = SMALL_SCHEDULE if student_params < SMALL_STUDENT_PARAMS \
            else SCHEDULE
        return (small_steps if self.min_steps_per_epoch is None else self.min_steps_per_epoch,
                small_passes if self.max_passes is None else self.max_passes)

    def resolved_samples_per_epoch(self, n_train: int, student_params: int) -> int:
        """Segments drawn per epoch from ``n_train`` training segments by a student of
        ``student_params`` parameters: ``samples_per_epoch`` when set, else one pass, raised
        to ``min_steps_per_epoch`` batches but never past ``max_passes`` passes (both from
        :meth:`resolved_schedule`), and one pass for sets under MIN_PASS_SEGMENTS segments.

        With 200 steps of 64 an epoch of 12,800 segments or more is one pass, of 3,200 or
        fewer 4 passes. Without views mn01 with 1 and 4 passes kept 63.4% and 66.6%; on 1080
        segments 8 epochs of 4 passes took the mean probe score on FSDD subsets from 44.4 to
        47.9; on 360 segments they lost (51.6 to 42.7; overfitting), hence MIN_PASS_SEGMENTS."""
        if self.samples_per_epoch:
            return int(self.samples_per_epoch)
        if n_train < MIN_PASS_SEGMENTS:
            return int(n_train)
        min_steps, max_passes = self.resolved_schedule(student_params)
        floor = min(min_steps * self.batch_size, max_passes * n_train)
        return max(int(n_train), int(floor))

    def resolved_rounding_noise(self, n_train: int) -> float:
        """int8 steps of rounding noise (:mod:`.rounding_noise`) for a set of ``n_train``
        training segments: the setting, or when unset ROUNDING_NOISE from MIN_PASS_SEGMENTS
        segments on and 0 below.

        Measured (share of the teacher kept, or the mean FSDD probe score, without / with one
        step): bench/quality.py (2800 segments, 30 epochs) mn01 86.5 / 88.4-90.7%, mn04 95.0 /
        95.8%, micronet-m0 91.3 / 93.4% (one seed each); 1200 FSDD clips (1090 segments, 8
        epochs, mn01) 67.2 / 67.7 over 2 seeds (spread +-4); 400 FSDD clips (360 segments,
        one pass) 48.0 / 47.3 over 4 seeds (spread +-7), and tests/test_quality.py's small
        set lost its margin over raw cosine with it. It also lets int8 exports keep 1
        float32 block instead of 4 with 32 calibration windows, none with 128 (mn04 int8
        keeps 99.7% of the float32 probe score)."""
        if self.rounding_noise is not None:
            return float(self.rounding_noise)
        return ROUNDING_NOISE if n_train >= MIN_PASS_SEGMENTS else 0.0

    @property
    def resolved_hop_s(self) -> float:
        return self.hop_s if self.hop_s is not None else self.window_s

    def validate(self) -> None:
        """Raises ParameterError naming the first invalid setting and its valid range, and
        checks the specs (teacher, student, head, loss) against their registries, so that a
        typo is found before any audio is read."""
        def bad(name: str, valid: str) -> ParameterError:
            return ParameterError(f"distill: {name}={getattr(self, name)!r} is invalid: {valid}")

        checks = [
            ("window_s", self.window_s > 0, "expected seconds > 0"),
            ("hop_s", self.hop_s is None or self.hop_s > 0, "expected seconds > 0"),
            ("cache_dtype", self.cache_dtype in ("float16", "float32"), "float16 or float32"),
            ("teacher_batch_size", self.teacher_batch_size >= 1, "expected an integer >= 1"),
            ("clusters", self.clusters >= 1, "expected an integer >= 1"),
            ("cluster_metric", self.cluster_metric in CLUSTER_METRICS,
             f"expected one of {CLUSTER_METRICS}"),
            ("balance_alpha", 0.0 <= self.balance_alpha <= 1.0, "expected 0 <= alpha <= 1"),
            ("val_fraction", 0.0 <= self.val_fraction < 1.0, "expected 0 <= fraction < 1"),
            ("epochs", self.epochs >= 1, "expected an integer >= 1"),
            ("batch_size", self.batch_size >= 2, "expected >= 2 (batch norm needs two items)"),
            ("min_steps_per_epoch", self.min_steps_per_epoch is None
             or self.min_steps_per_epoch >= 0, "expected >= 0 (0 = off) or unset"),
            ("max_passes", self.max_passes is None or self.max_passes >= 0,
             "expected >= 0 (0 or 1 = one pass) or unset"),
            ("samples_per_epoch", self.samples_per_epoch is None or self.samples_per_epoch >= 1,
             "expected >= 1 or unset"),
            ("lr", self.lr > 0, "expected > 0"),
            ("warmup_epochs", self.warmup_epochs is None or 0 <= self.warmup_epochs <= self.epochs,
             f"expected 0 <= warmup_epochs <= epochs={self.epochs}"),
            ("final_lr_scale", 0.0 <= self.final_lr_scale <= 1.0, "expected in [0, 1]"),
            ("weight_decay", self.weight_decay >= 0, "expected >= 0"),
            ("rounding_noise", self.rounding_noise is None or self.rounding_noise >= 0,
             "expected >= 0 int8 steps (0 = off) or unset"),
            ("grad_clip", self.grad_clip >= 0, "expected >= 0 (0 = off)"),
            ("ema", 0.0 <= self.ema < 1.0, "expected 0 <= decay < 1 (0 = off)"),
            ("precision", self.precision in PRECISIONS, f"expected one of {PRECISIONS}"),
            ("device", self.device.split(":")[0] in DEVICES, f"expected one of {DEVICES}"),
            ("cache_mel", self.cache_mel in CACHE_MEL, f"expected one of {CACHE_MEL}"),
            ("workers", self.workers >= 0, "expected >= 0"),
            ("threads", self.threads >= 0, "expected >= 0"),
            ("compile", self.compile in COMPILE_MODES, f"expected one of {COMPILE_MODES}"),
            ("gain_db", self.gain_db >= 0, "expected >= 0 dB"),
            ("time_mask", self.time_mask >= 0, "expected >= 0 frames"),
            ("freq_mask", 0 <= self.freq_mask <= self.mel.n_mels,
             f"expected 0 <= freq_mask <= n_mels={self.mel.n_mels}"),
            ("mixup", self.mixup >= 0, "expected >= 0 (0 = off)"),
            ("save_every", self.save_every >= 0, "expected >= 0 steps"),
            ("log_every", self.log_every >= 1, "expected >= 1 step"),
            ("views", isinstance(self.views, int) and self.views >= 1,
             "expected an integer >= 1 (1 = no teacher-side views)"),
        ]
        for name, ok, valid in checks:
            if not ok:
                raise bad(name, valid)
        try:
            self.view_config
        except ParameterError as e:
            raise ParameterError(f"distill: view_augment={self.view_augment!r} is invalid: "
                                 f"{e}") from None
        self.mel.validate()
        self.validate_specs()

    def validate_specs(self) -> None:
        """The teacher file exists (or is a ``pkg.mod:fn`` factory; a run reading an existing
        cache folder needs neither) and the student, head and loss are known; ParameterError
        (FileNotFoundError for a missing teacher) otherwise."""
        from ..evaluation.agreement import MEASURES
        from ..loading import is_factory_spec
        from ..losses import make_loss
        from ..names import HEADS
        from ..students import student_entry
        from .targets import NORMS

        for spec in self.teachers:
            if not self.cache_dir and not is_factory_spec(spec) and not Path(spec).is_file():
                raise FileNotFoundError(f"{spec}: teacher file not found (a TorchScript file "
                                        f"or pkg.module:factory)")
        student_entry(self.student)
        if self.head not in HEADS:
            raise ParameterError(f"distill: head={self.head!r} is invalid: expected one of "
                                 f"{HEADS}")
        make_loss(self.loss)  # ParameterError on a bad spec; the names: NAME[@opts][:WEIGHT]
        terms = {item.split(":")[0].split("@")[0].strip() for item in self.loss.split(",")}
        choices = {"target_norm": NORMS, "best_metric": MEASURES}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ParameterError(f"distill: {name}={getattr(self, name)!r} is invalid: "
                                     f"expected one of {valid}")
        if self.teacher_weights and len(self.teacher_weights) != len(self.teachers):
            raise ParameterError(f"distill: {len(self.teacher_weights)} teacher weights for "
                                 f"{len(self.teachers)} teachers")
        for name in ("teacher_weights", "target_weights"):
            if any(not (w >= 0) for w in getattr(self, name)):
                raise ParameterError(f"distill: {name}={getattr(self, name)!r}: weights must "
                                     f"be >= 0")
        if self.projected and not terms & {"cosine", "mse", "l1"}:
            import warnings

            warnings.warn(f"distill: --projected with loss {self.loss!r}: a contrastive or "
                          f"relational loss does not place the head's output in the teacher's "
                          f"space; add a regression term, e.g. --loss cosine:1,infonce:1",
                          stacklevel=2)
        if self.eval_data and not Path(self.eval_data).exists():
            raise FileNotFoundError(f"{self.eval_data}: --eval data not found")

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mel"] = self.mel.to_dict()
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    @classmethod
    def from_dict(cls, d: Dict[str, Any], *, source: str = "config") -> "DistillConfig":
        """Builds a config; unknown keys raise ParameterError (they are typos)."""
        check_known_settings(d, (f.name for f in fields(cls)), source)
        d = dict(d)
        hints = typing.get_type_hints(cls)
        for name, value in d.items():
            legacy = name == "cache_mel" and isinstance(value, bool)  # see __post_init__
            if name != "mel" and not legacy and not _has_type(value, hints[name]):
                raise ParameterError(f"{source}: {name}={value!r} is invalid: expected "
                                     f"{_type_name(hints[name])}")
        if "mel" in d and not isinstance(d["mel"], MelConfig):
            if not isinstance(d["mel"], dict):
                raise ParameterError(f"{source}: mel={d['mel']!r} is invalid: expected a table")
            d["mel"] = MelConfig.from_dict(dict(d["mel"]))
        return cls(**d)

    @classmethod
    def from_stored(cls, d: Dict[str, Any], *, source: str = "stored config") -> "DistillConfig":
        """:meth:`from_dict` of settings a run stored (checkpoint, config.json): settings it
        lacks take the value they had before they existed, not today's default (a run from
        before views were the default had none)."""
        return cls.from_dict({**STORED_BEFORE, **d}, source=source)

    @classmethod
    def from_json(cls, text: str) -> "DistillConfig":
        """:meth:`from_stored` of a checkpoint's JSON."""
        return cls.from_stored(json.loads(text))

    def hashed_settings(self) -> Dict[str, Any]:
        """The settings that determine the run's numbers (all but NOT_HASHED)."""
        d = self.to_dict()
        for name in NOT_HASHED:
            d.pop(name, None)
        for off in ("ema", "rounding_noise"):  # off: runs made before the setting existed
            if d.get(off) == 0.0:                # keep their hash
                d.pop(off)
        if d.get("views") == 1:  # no views: the augmentations change nothing (and runs made
            d.pop("views")       # before views existed keep their hash)
            d.pop("view_augment", None)
        return d

    def hash(self) -> str:
        """sha256 (16 hex digits) of :meth:`hashed_settings`."""
        return settings_hash(self.hashed_settings())

    def replace(self, **changes: Any) -> "DistillConfig":
        return dataclasses.replace(self, **changes)

    def with_runtime_of(self, current: "DistillConfig") -> "DistillConfig":
        """These (stored) settings with the :data:`RUNTIME` ones of ``current``: what a
        resumed run trains with."""
        return self.replace(**{name: getattr(current, name) for name in RUNTIME})


def _has_type(value: Any, hint: Any) -> bool:
    """Whether a value read from a config file fits a field's annotation (an int is a float;
    a bool is not a number)."""
    if typing.get_origin(hint) is Union:
        return any(_has_type(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return not isinstance(hint, type) or isinstance(value, hint)


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Union:
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "unset"}.get(hint, getattr(hint, "__name__", str(hint)))


def settings_hash(settings: Dict[str, Any]) -> str:
    """sha256 (16 hex digits) of a JSON-serialisable dict of settings."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def read_settings(path: "os.PathLike[str] | str") -> Dict[str, Any]:
    """Parses a TOML or JSON settings file into a dict (ParameterError on bad syntax)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:
            raise ParameterError(f"{path}: reading TOML needs Python >= 3.11; "
                                 f"write the settings as JSON instead") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ParameterError(f"{path}: invalid TOML ({e})") from None
    elif path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ParameterError(f"{path}: invalid JSON ({e})") from None
    else:
        raise ParameterError(f"{path}: config files must end in .toml or .json")
    if not isinstance(data, dict):
        raise ParameterError(f"{path}: expected a table/object of settings at the top level")
    return data
