"""The run folder ``OUT/<YYYYmmdd-HHMMSS>-<student>-<teacher>/`` and finding runs to resume.

Layout (../shared/DESIGN.md, "Run folder")::

    config.json            every resolved setting, plus its hash
    log.jsonl              one JSON object per logged step and per epoch
    checkpoints/last.pt    the newest checkpoint (every epoch and every --save-every steps)
    checkpoints/best.pt    the checkpoint with the best validation cosine so far
    loss.png               loss and validation curves (when matplotlib is installed)
    validation.png         adapt runs: validation cosine on old and new data per epoch
    previous-<key>.npy     adapt runs: the previous student's embeddings (self-distillation)
    student.pt             the exported student
    eval.json              with --eval: 'ssondo eval --compare' of student.pt vs the teacher
"""
from __future__ import annotations

import json
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Union

from ..atomic import atomic_write_text
from .config import DistillConfig

PathLike = Union[str, "os.PathLike[str]"]


class RunDir:
    """Paths of one run folder."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)

    config = property(lambda self: self.path / "config.json")
    log = property(lambda self: self.path / "log.jsonl")
    checkpoints = property(lambda self: self.path / "checkpoints")
    last = property(lambda self: self.path / "checkpoints" / "last.pt")
    best = property(lambda self: self.path / "checkpoints" / "best.pt")
    plot = property(lambda self: self.path / "loss.png")
    validation_plot = property(lambda self: self.path / "validation.png")
    export = property(lambda self: self.path / "student.pt")
    eval_report = property(lambda self: self.path / "eval.json")

    def read_config(self) -> Dict[str, Any]:
        """config.json as a dict ({} when there is none).

        A run folder may come from someone else, so its recorded "cache" is used only while
        it is an existing teacher cache folder (holding meta.json); otherwise it is dropped
        with a warning and the run's own settings decide where the cache is (a resume never
        creates a cache at a path read from this file).

        Raises:
            ValueError: the file is not a JSON object (the message names it).
        """
        if not self.config.is_file():
            return {}
        try:
            d = json.loads(self.config.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{self.config}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ValueError(f"{self.config}: not a run configuration (expected a JSON object)")
        cache = d.get("cache")
        if cache is not None and not (isinstance(cache, str) and cache
                                      and (Path(cache) / "meta.json").is_file()):
            warnings.warn(f"{self.config}: the recorded cache {cache!r} is not a teacher cache "
                          f"folder; ignoring it")
            d.pop("cache")
        return d

    def write_config(self, cfg: DistillConfig, extra: Optional[Dict[str, Any]] = None) -> None:
        d = {**cfg.to_dict(), "config_hash": cfg.hash(), **(extra or {})}
        atomic_write_text(self.config, json.dumps(d, indent=2, sort_keys=True) + "\n")

    def add_to_config(self, fields: Dict[str, Any]) -> None:
        """Adds ``fields`` to config.json (results known at the end, e.g. the eval score)."""
        d = json.loads(self.config.read_text(encoding="utf-8"))
        atomic_write_text(self.config, json.dumps({**d, **fields}, indent=2, sort_keys=True)
                          + "\n")

    def append_log(self, record: Dict[str, Any]) -> None:
        """Appends one JSON line (a torn last line after a kill is skipped by :meth:`read_log`)."""
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def read_log(self) -> List[Dict[str, Any]]:
        if not self.log.is_file():
            return []
        out = []
        for line in self.log.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def truncate_log(self, step: int) -> None:
        """Drops log lines written after global step ``step`` (work lost by an interruption)."""
        kept = [r for r in self.read_log() if r.get("step", 0) <= step]
        atomic_write_text(self.log, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))


def new_run_dir(out: PathLike, student: str, teacher: str) -> RunDir:
    """Creates ``OUT/<YYYYmmdd-HHMMSS>-<student>-<teacher>`` (suffix -2, -3... on collisions)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    base = f"{stamp}-{_slug(student)}-{_slug(teacher)}"
    Path(out).mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = Path(out) / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        (path / "checkpoints").mkdir()
        return RunDir(path)
    raise FileExistsError(f"{out}: could not create a new run folder named {base}-N")


def iter_runs(out: PathLike) -> Iterator[RunDir]:
    """Run folders under ``out`` (those holding a config.json), newest name first."""
    root = Path(out)
    if not root.is_dir():
        return
    for path in sorted((p for p in root.iterdir() if (p / "config.json").is_file()),
                       key=lambda p: p.name, reverse=True):
        yield RunDir(path)


def find_resumable(out: PathLike, config_hash: str) -> Optional[RunDir]:
    """The newest run under ``out`` with the same config hash and a last checkpoint."""
    for run in iter_runs(out):
        try:
            same = run.read_config().get("config_hash") == config_hash
        except ValueError:
            continue
        if same and run.last.is_file():
            return run
    return None


def plot_curves(run: RunDir) -> Optional[Path]:
    """Draws train loss per logged step and validation cosine per epoch to loss.png.

    Returns the path, or None when matplotlib is missing or nothing was logged yet.
    """
    plt = _pyplot()
    records = run.read_log()
    steps = [(r["step"], r["loss"]) for r in records if r.get("kind") == "step"]
    epochs = [(r["step"], r["val_cos"]) for r in records
              if r.get("kind") == "epoch" and r.get("val_cos") is not None]
    if plt is None or not steps:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*steps), label="train loss", color="tab:blue")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if epochs:
        ax2 = ax.twinx()
        ax2.plot(*zip(*epochs), "o-", label="validation cosine", color="tab:orange")
        ax2.set_ylabel("validation cosine to teacher")
    ax.set_title(run.path.name)
    return _save(plt, fig, run.plot)


def plot_epoch_metrics(run: RunDir, series: Dict[str, str], path: Path,
                       ylabel: str = "validation cosine to teacher") -> Optional[Path]:
    """Draws per-epoch log fields (``series``: log key -> legend label) against the epoch
    number (epoch 0 = before training, when logged) to ``path``.

    Returns the path, or None when matplotlib is missing or no epoch logged these fields.
    """
    plt = _pyplot()
    records = [r for r in run.read_log() if r.get("kind") == "epoch"]
    lines = {label: [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
             for key, label in series.items()}
    if plt is None or not any(lines.values()):
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, points in lines.items():
        if points:
            ax.plot(*zip(*points), "o-", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.set_title(run.path.name)
    return _save(plt, fig, path)


def _pyplot():
    """matplotlib.pyplot with the file-only backend, or None when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(plt, fig, path: Path) -> Path:
    """Saves ``fig`` to ``path`` through a temporary file (never a torn image)."""
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:40] or "model"
