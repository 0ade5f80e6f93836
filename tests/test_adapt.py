"""`ssondo adapt` on real audio (a CREPE tiny -> mn01 run on notes/ adapted to fsdd/ speech),
resume after a real kill, bad input, and the codebook growth and stratified sampler against
hand-made cases and plain references."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pyssondo import cli
from pyssondo.train.adapt import adapt, adapt_config
from pyssondo.clustering import grow_codebook, nearest, similarity_percentile
from pyssondo.frontend import MelConfig
from pyssondo.sampling import StratifiedSampler
from pyssondo.train.config import DistillConfig
from pyssondo.train.distill import distill
from tests.run_helpers import (checkpoint_weights, kill_after_first_checkpoint,
                                write_other_teacher)

ROOT = Path(__file__).resolve().parents[1]
ENV = {"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
       "SSONDO_PROGRESS": "0"}
MEL = MelConfig(sample_rate=16000, f_max=8000.0, n_mels=64)


def _link(files, folder: Path) -> Path:
    folder.mkdir()
    for path in files:
        (folder / path.name).symlink_to(path)
    return folder


@pytest.fixture(scope="module")
def work(tmp_path_factory, shared_data):
    """A CREPE tiny teacher, a short mn01 run distilled on 32 notes (old domain), and 32
    spoken digits (new domain)."""
    from pyssondo.teachers import build_teacher_file

    root = tmp_path_factory.mktemp("adapt")
    build_teacher_file("crepe-tiny", root / "crepe-tiny.pt")
    notes = sorted((shared_data / "notes").glob("*.flac"))[::24][:32]
    digits = sorted((shared_data / "fsdd").glob("*.wav"))[::90][:32]
    old, new = _link(notes, root / "notes"), _link(digits, root / "speech")
    cfg = DistillConfig(teacher=str(root / "crepe-tiny.pt"), audio=str(old), student="mn01",
                        mel=MEL, window_s=1.0, clusters=4, batch_size=8, epochs=4, lr=3e-3,
                        val_fraction=0.25, workers=0, threads=1, out=str(root / "runs"),
                        log_every=1, loss="cosine", target_norm="none", min_steps_per_epoch=0,
                        views=1)
    parent = distill(cfg, progress=False, export=False).run.path
    return {"root": root, "teacher": root / "crepe-tiny.pt", "parent": parent, "new": new}


def small(work, out, **kw):
    base = dict(epochs=2, lr=1e-3, workers=0, threads=1, out=str(out), log_every=1)
    adapt_kw = {k: kw.pop(k) for k in ("replay_fraction", "self_weight", "grow_threshold")
                if k in kw}
    return adapt_config(work["parent"], work["new"], **adapt_kw, **{**base, **kw})




# -------------------------------------------------------------------------------------------
# End to end
# -------------------------------------------------------------------------------------------
def test_adapt_cli_learns_the_new_domain_and_writes_a_run_folder(work, tmp_path, capsys,
                                                                 one_thread):
    out = tmp_path / "runs"
    assert cli.main(["adapt", str(work["parent"]), str(work["new"]), "--epochs", "3",
                     "--lr", "1e-3", "--workers", "0", "--threads", "1", "--out", str(out),
                     "--log-every", "1"]) == 0
    printed = capsys.readouterr().out
    run = next(out.glob("*-mn01-adapt-speech"))
    assert f"adapted from {work['parent']}" in printed and "grown" in printed
    stored = json.loads((run / "config.json").read_text())
    assert set(DistillConfig().to_dict()) <= set(stored)
    assert stored["parent"] == str(work["parent"])
    assert stored["adapt"]["replay_fraction"] == 0.5 and stored["adapt"]["self_weight"] == 1.0
    assert stored["replay_per_batch"] == 4 and stored["new_per_batch"] == 4
    assert stored["codebook"]["old_clusters"] == 4
    assert stored["mel"] == MEL.to_dict() and stored["epochs"] == 3  # the parent's front end
    assert len(list(run.glob("previous-*.npy"))) == 1
    epochs = [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())
              if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1, 2, 3]
    assert all(r["val_cos_old"] is not None and r["val_cos_new"] is not None for r in epochs)
    assert epochs[-1]["val_cos_new"] > epochs[0]["val_cos_new"] + 0.05, epochs
    # best.pt follows the parent's best metric, the mean of its two domains' values.
    metric = stored["best_metric"]
    for r in epochs:
        assert r[metric] == pytest.approx((r[f"{metric}_old"] + r[f"{metric}_new"]) / 2)
    best, _ = checkpoint_weights(run / "checkpoints" / "best.pt")
    assert best["best_metric"] == pytest.approx(max(r[metric] for r in epochs[1:]))
    assert "self_loss" in epochs[-1] and "teacher_loss" in epochs[-1]
    for name in ("last.pt", "best.pt"):
        ckpt, _ = checkpoint_weights(run / "checkpoints" / name)  # weights_only=True
        assert ckpt["format"] == "ssondo-checkpoint" and "adapt" in ckpt
    for name in ("loss.png", "validation.png", "student.pt"):
        assert (run / name).is_file(), name
    assert "validation   new: cosine to the teacher" in printed


def test_start_equals_the_parent_and_self_distillation_holds_it(work, tmp_path, one_thread):
    """At lr ~ 0 the adapted student is the parent: the self term starts at 0 (batch-norm
    statistics are the parent's) and the validation of the parent's old files is the
    parent's own score."""
    parent_log = [json.loads(line) for line in (work["parent"] / "log.jsonl").read_text()
                  .splitlines()]
    metric = json.loads((work["parent"] / "config.json").read_text())["best_metric"]
    best_epoch = max((r for r in parent_log if r["kind"] == "epoch"), key=lambda r: r[metric])
    best_parent = best_epoch["val_cos"]  # best.pt's own validation cosine
    result = adapt(small(work, tmp_path / "r", epochs=1, lr=1e-12, samples_per_epoch=8),
                   progress=False, export=False)
    log = result.run.read_log()
    assert log[0]["epoch"] == 0
    assert log[0]["val_cos_old"] == pytest.approx(best_parent, abs=1e-5)
    steps = [r for r in log if r["kind"] == "step"]
    assert steps[0]["self_loss"] == pytest.approx(0.0, abs=1e-5)


def test_resume_after_kill_reaches_the_same_weights(work, tmp_path, one_thread):
    ref = adapt(small(work, tmp_path / "a", save_every=1), progress=False, export=False)
    _, want = checkpoint_weights(ref.run.last)
    out_b = tmp_path / "b"
    args = ["adapt", str(work["parent"]), str(work["new"]), "--epochs", "2", "--lr", "1e-3",
            "--workers", "0", "--threads", "1", "--out", str(out_b), "--log-every", "1",
            "--save-every", "1"]
    killed = kill_after_first_checkpoint(args, out_b, ENV)
    assert killed["step"] < ref.summary["steps"]
    resumed = subprocess.run([sys.executable, "-m", "pyssondo", *args, "--resume", "auto"],
                             capture_output=True, text=True, env=ENV)
    assert resumed.returncode == 0, resumed.stderr
    assert len(list(out_b.glob("*-adapt-*"))) == 1  # continued the same run folder
    done, got = checkpoint_weights(next(out_b.glob("*/checkpoints/last.pt")))
    assert done["step"] == ref.summary["steps"]
    worst = max(float((got[k].double() - want[k].double()).abs().max()) for k in want)
    assert worst <= 1e-6, worst


# -------------------------------------------------------------------------------------------
# Failures
# -------------------------------------------------------------------------------------------
def test_bad_inputs_give_one_line_errors(work, tmp_path, capsys):
    def error(*args):
        assert cli.main(["adapt", *map(str, args), "--out", str(tmp_path / "r")]) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        return err

    assert "not a run folder" in error(tmp_path, work["new"])
    other = write_other_teacher(tmp_path / "other.pt")
    assert "differs from" in error(work["parent"], work["new"], "--teacher", other)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no audio files" in error(work["parent"], empty).lower()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "bad.wav").write_bytes(b"RIFF not really a wav file")
    assert "could be read" in error(work["parent"], corrupt)
    parent_root = Path(json.loads((work["parent"] / "config.json").read_text())["cache"]).parent
    assert "would replace it" in error(work["parent"], work["new"], "--cache-dir", parent_root)
    assert "replay_fraction" in error(work["parent"], work["new"], "--replay-fraction", "1")


# -------------------------------------------------------------------------------------------
# Codebook growth and stratified sampling against hand-made cases
# -------------------------------------------------------------------------------------------
def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_far_points_grow_new_clusters_and_near_ones_do_not():
    old = np.eye(4)[:2] * 3.0                    # centroids along e1 and e2 (any length)
    near = _unit([[1, 0.1, 0, 0], [0.1, 1, 0, 0.1], [1, 0, 0.2, 0]])  # cos > 0.97 to one
    e3_pair = _unit([[0, 0, 1, 0.1], [0, 0.1, 1, 0]])                 # cos ~0.99 to each other
    minus_e1 = _unit([[-1, 0, 0, 0.05]])
    X = np.concatenate([near, e3_pair, minus_e1]).astype(np.float32)
    grown = grow_codebook(old, X, threshold=0.8, seed=0)
    assert grown.shape == (4, 4) and grown.dtype == np.float32
    np.testing.assert_allclose(grown[:2], np.eye(4)[:2], atol=1e-6)  # old ones kept (unit)
    for want in (_unit(e3_pair.sum(0)), minus_e1[0]):  # the normalised means of the groups
        assert np.abs(grown[2:] - want).max(axis=1).min() < 1e-5, (grown, want)
    labels, sims = nearest(X, grown)
    assert labels.tolist() == [0, 1, 0] + [int(np.argmax(grown[2:] @ e3_pair[0])) + 2] * 2 \
        + [int(np.argmax(grown[2:] @ minus_e1[0])) + 2]
    np.testing.assert_allclose(sims, np.max(_unit(X) @ _unit(grown).T, axis=1), atol=1e-5)
    # Below every similarity nothing grows; the rule is deterministic for a seed.
    assert grow_codebook(old, X, threshold=-1.0).shape == (2, 4)
    rng = np.random.default_rng(0)
    Y = rng.standard_normal((300, 4)).astype(np.float32)
    a, b = grow_codebook(old, Y, 0.6, seed=3), grow_codebook(old, Y, 0.6, seed=3)
    np.testing.assert_array_equal(a, b)
    # Every novel row ends within reach of a grown centroid or started one itself.
    novel = _unit(Y)[np.max(_unit(Y) @ np.eye(4)[:2].T, axis=1) < 0.6]
    assert len(novel) and np.all(np.max(novel @ a[2:].T.astype(np.float64), axis=1) > 0.3)


def test_default_threshold_is_a_percentile_of_the_within_cluster_similarity():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((500, 8)).astype(np.float32)
    C = rng.standard_normal((5, 8)).astype(np.float32)
    best = np.max(_unit(X) @ _unit(C).T, axis=1)
    for p in (0.0, 5.0, 50.0):
        assert similarity_percentile(X, C, p) == pytest.approx(np.percentile(best, p), abs=1e-5)


def test_stratified_batches_have_exact_counts_and_resume():
    ids_a = np.array([0] * 6 + [1] * 3 + [2])    # old: clusters of 6, 3 and 1 segments
    ids_b = np.array([0, 0, 1, 1, 1, 1])         # new
    sampler = StratifiedSampler(ids_a, ids_b, batch_size=8, batches=500, fraction_a=0.3,
                                seed=7)
    assert (sampler.n_a, sampler.n_b, len(sampler)) == (2, 6, 4000)  # round(2.4) = 2
    order = np.fromiter(iter(sampler), dtype=np.int64).reshape(500, 8)
    assert (order[:, :2] < 10).all() and (order[:, 2:] >= 10).all() and order.max() < 16
    # Each part is balanced over its own clusters (BDS, alpha = 1).
    share_a = np.bincount(ids_a[order[:, :2].ravel()], minlength=3) / order[:, :2].size
    share_b = np.bincount(ids_b[order[:, 2:].ravel() - 10], minlength=2) / order[:, 2:].size
    np.testing.assert_allclose(share_a, 1 / 3, atol=0.03)
    np.testing.assert_allclose(share_b, 1 / 2, atol=0.03)
    # Same (seed, epoch) -> same stream; another epoch differs; resume at any position.
    again = StratifiedSampler(ids_a, ids_b, 8, 500, 0.3, seed=7)
    np.testing.assert_array_equal(again.epoch_order(0), order.ravel())
    assert not np.array_equal(again.epoch_order(1), order.ravel())
    for position in (16, 13):
        resumed = StratifiedSampler(ids_a, ids_b, 8, 500, 0.3, seed=7)
        resumed.load_state_dict({**sampler.state_dict(), "epoch": 0, "position": position})
        rest = np.fromiter(iter(resumed), dtype=np.int64)
        np.testing.assert_array_equal(rest, order.ravel()[position:])
    # Halves round up; no replay draws only new items; bad settings are refused.
    assert StratifiedSampler(ids_a, ids_b, 5, 1, 0.5).n_a == 3
    only_new = StratifiedSampler(ids_a, ids_b, 4, 3, 0.0)
    assert (np.fromiter(iter(only_new), dtype=np.int64) >= 10).all()
    with pytest.raises(ValueError, match="empty"):
        StratifiedSampler(np.array([], dtype=np.int64), ids_b, 4, 3, 0.5)
    with pytest.raises(ValueError, match="n_a"):
        StratifiedSampler(ids_a, ids_b, 8, 500, 0.5, seed=7).load_state_dict(sampler.state_dict())
