"""The default recipe keeps more of the teacher than the raw-cosine recipe on a held-out probe.

aisfx (the quality benchmark's teacher, whose embeddings share one dominant direction) into
mn01 on 48 clips of ../shared/data/pool, the same seed and schedule for both recipes; the probe
is instrument (program) classification on ../shared/data/notes, which the distillation never
saw, with the linear probe and kNN of 'ssondo eval'. Labels are read only by the probe.
"""
from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest

from pyssondo.config import MelConfig
from pyssondo.train.config import DistillConfig
from pyssondo.train.distill import distill

N_CLIPS = 48
NOTES_PER_PROGRAM = 6


@pytest.fixture(scope="module")
def quality_work(tmp_path_factory, shared_data):
    from pyssondo.evaluation.data import load_labeled
    from pyssondo.teachers import build_teacher_file

    root = tmp_path_factory.mktemp("quality")
    build_teacher_file("aisfx", root / "aisfx.pt")
    (root / "audio").mkdir()
    for path in sorted((shared_data / "pool").glob("*.flac"))[:N_CLIPS]:
        shutil.copy(path, root / "audio" / path.name)
    notes = load_labeled(shared_data / "notes" / "labels.csv", label_column="program")
    by_program = {}
    for e in sorted(notes.examples, key=lambda e: e.key):
        by_program.setdefault(e.labels[0], []).append(e.key)
    keep = set()  # a few notes of every instrument, spread evenly over its pitches
    for keys in by_program.values():
        keep.update(keys[int(i)] for i in np.linspace(0, len(keys) - 1, NOTES_PER_PROGRAM))
    task = notes.without(sorted(set(e.key for e in notes.examples) - keep), "subset")
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
                mel=MelConfig(sample_rate=16000, f_max=8000.0, n_mels=64), window_s=2.0,
                clusters=8, batch_size=16, epochs=6, val_fraction=0.15, workers=0,
                threads=1, cache_dir=str(root / "cache"), seed=0)
    defaults = DistillConfig(**base, out=str(tmp_path / "defaults"))
    raw = DistillConfig(**base, out=str(tmp_path / "raw"), target_norm="none",
                        best_metric="val_cos")
    assert defaults.target_norm != "none"  # the defaults are the winning recipe, not raw cosine
    scores = {name: probe_mean(distill(cfg, progress=False).export, quality_work["task"])
              for name, cfg in (("defaults", defaults), ("raw", raw))}
    assert scores["defaults"] > scores["raw"] + 0.03, scores
