"""The default recipe keeps more of the teacher than the raw-cosine recipe on a held-out probe.

aisfx (the quality benchmark's teacher, whose embeddings share one dominant direction) into
mn01 on 400 clips of the FSDD train split, the same seed and number of epochs for both recipes
(the defaults include their teacher-side views; the raw recipe is S-SONDO's, without); the
probe is speaker identification on clips of the FSDD test split (other recordings of the same
speakers, never distilled on), with the linear probe and kNN of 'ssondo eval'. Labels are
read only by the probe.
"""
from __future__ import annotations

import csv
import shutil
from dataclasses import replace

import numpy as np
import pytest

from pyssondo.frontend import MelConfig
from pyssondo.train.config import DistillConfig
from pyssondo.train.distill import distill

N_TRAIN, N_TEST = 400, 120


@pytest.fixture(scope="module")
def quality_work(tmp_path_factory, shared_data):
    from pyssondo.evaluation.data import load_labeled
    from pyssondo.teachers import build_teacher_file

    root = tmp_path_factory.mktemp("quality")
    build_teacher_file("aisfx", root / "aisfx.pt")
    with open(shared_data / "fsdd" / "labels.csv", newline="", encoding="utf-8") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["path"])
    train = [r["path"] for r in rows if r["split"] == "train"]
    test = [r["path"] for r in rows if r["split"] != "train"]
    (root / "audio").mkdir()
    for name in train[:: len(train) // N_TRAIN][:N_TRAIN]:
        shutil.copy(shared_data / "fsdd" / name, root / "audio" / name)
    keep = set(test[:: len(test) // N_TEST][:N_TEST])
    task = load_labeled(shared_data / "fsdd" / "labels.csv", label_column="speaker",
                        use_fold_column=False)
    task = task.without(sorted({e.key for e in task.examples} - keep), "subset")
    return {"root": root, "task": task}


def probe_mean(export, task) -> float:
    """Mean of the linear-probe and kNN accuracy of an export on the task (4-fold)."""
    from pyssondo.evaluation.config import EvalConfig
    from pyssondo.evaluation.embed import open_embedder
    from pyssondo.evaluation.evaluate import evaluate

    report = evaluate([open_embedder(str(export))], [task], replace(EvalConfig(), folds=4),
                      progress=False).report
    return float(np.mean([r["metrics"][r["primary"]]["mean"] for r in report["results"]]))


@pytest.mark.slow
def test_default_recipe_beats_raw_cosine_on_a_held_out_probe(quality_work, tmp_path, one_thread):
    root = quality_work["root"]
    base = dict(teacher=str(root / "aisfx.pt"), audio=str(root / "audio"), student="mn01",
                mel=MelConfig(sample_rate=16000, f_max=8000.0, n_mels=64), window_s=1.0,
                clusters=8, batch_size=32, epochs=8, val_fraction=0.1, workers=0,
                threads=1, cache_dir=str(root / "cache"), seed=0)
    defaults = DistillConfig(**base, out=str(tmp_path / "defaults"))
    raw = DistillConfig(**base, out=str(tmp_path / "raw"), loss="cosine", target_norm="none",
                        best_metric="val_cos", min_steps_per_epoch=0, views=1,
                        rounding_noise=0.0)
    assert (defaults.loss, defaults.views) != (raw.loss, 1)  # not S-SONDO's raw cosine
    scores = {name: probe_mean(distill(cfg, progress=False).export, quality_work["task"])
              for name, cfg in (("defaults", defaults), ("raw", raw))}
    assert scores["defaults"] > scores["raw"] + 0.05, scores
