"""ssondo eval: labeled data, splits, probes, metrics, the log-mel baseline, reports and CLI.

Real audio comes from ../shared/data (subsets, to keep the file under a minute on 2 cores).
Models are tiny TorchScript modules defined here: a log power spectrum (torch.stft) averaged
per frame through a fixed random projection, with ``sample_rate`` as an attribute. Tests of
the ``logmel`` baseline need the C++ front end (``pyssondo.mel.log_mel``, ``_core.resample``)
and are skipped until it is merged.
"""

import csv
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from pyssondo.evaluation import data as data_mod
from pyssondo.evaluation.config import EvalConfig, ProbeConfig
from pyssondo.evaluation.embed import LOGMEL, compute_embeddings, open_embedder
from pyssondo.evaluation.evaluate import evaluate
from pyssondo.evaluation.metrics import (accuracy, average_precision, macro_f1,
                                         mean_average_precision, mean_ci95, t_quantile_975)
from pyssondo.evaluation.probes import fit_predict
from pyssondo.evaluation.protocol import make_splits, stratified_folds
from pyssondo.evaluation.report import compare

ROOT = Path(__file__).resolve().parents[1]


def _frontend_available() -> bool:
    try:
        from pyssondo import _core
        from pyssondo.mel import log_mel

        log_mel(np.zeros(2048, np.float32))
        return hasattr(_core, "resample")
    except (ImportError, AttributeError):
        return False


needs_frontend = pytest.mark.skipif(not _frontend_available(),
                                    reason="needs the C++ front end (log_mel, resample) of issue 2")


class SpecModel(torch.nn.Module):
    """Frame embeddings [B, F, dim]: fixed random projection of the log power spectrum."""

    sample_rate: int
    n_fft: int

    def __init__(self, sample_rate: int, n_fft: int = 256, dim: int = 32, seed: int = 0):
        super().__init__()
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.nn.Linear(n_fft // 2 + 1, dim)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(dim, n_fft // 2 + 1, generator=g) / 10)
            self.proj.bias.zero_()
        self.register_buffer("window", torch.hann_window(n_fft))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(x, self.n_fft, self.n_fft // 2, window=self.window, return_complex=True)
        return self.proj(torch.log(spec.abs().pow(2) + 1e-6).transpose(1, 2))


def save_model(path: Path, sample_rate: int, **kw) -> Path:
    torch.jit.script(SpecModel(sample_rate, **kw)).save(str(path))
    return path


def param_count(**kw) -> int:
    return sum(p.numel() for p in SpecModel(8000, **kw).parameters())


def link_subset(src_dir: Path, dst_dir: Path, rows, label_col: str, extra_cols=()) -> Path:
    """A CSV in dst_dir over symlinks to the shared files (the data is never copied)."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    with open(dst_dir / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", label_col, *extra_cols])
        for r in rows:
            link = dst_dir / r["path"]
            if not link.exists():
                link.symlink_to(src_dir / r["path"])
            w.writerow([r["path"], r[label_col], *[r[c] for c in extra_cols]])
    return dst_dir / "labels.csv"


@pytest.fixture(scope="module")
def fsdd_csv(shared_data, tmp_path_factory) -> Path:
    """3 speakers x 10 digits x 8 takes = 240 files, columns path,digit,speaker."""
    rows = list(csv.DictReader(open(shared_data / "fsdd" / "labels.csv")))
    keep = [r for r in rows if r["speaker"] in ("george", "jackson", "lucas")
            and int(Path(r["path"]).stem.split("_")[2]) < 8]
    assert len(keep) == 240
    return link_subset(shared_data / "fsdd", tmp_path_factory.mktemp("fsdd"), keep, "digit",
                       ("speaker",))


@pytest.fixture(scope="module")
def notes_csv(shared_data, tmp_path_factory) -> Path:
    """Velocity-64 notes: 16 programs x 24 pitches = 384 files, columns path,family,pitch_class."""
    rows = list(csv.DictReader(open(shared_data / "notes" / "labels.csv")))
    keep = [r for r in rows if r["velocity"] == "64"]
    return link_subset(shared_data / "notes", tmp_path_factory.mktemp("notes"), keep, "family",
                       ("pitch_class",))


@pytest.fixture(scope="module")
def model8k(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("m") / "spec8k.pt", 8000)


@pytest.fixture(scope="module")
def model16k(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("m") / "spec16k.pt", 16000)
