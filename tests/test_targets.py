"""Targets: normalisation against numpy formulas, joining caches by segment id, weights, and
ensemble distillation (two teachers, one head each) end to end with resume and export."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pyssondo.train.distill import distill
from pyssondo.train.targets import (JoinedRows, TargetNorm, Targets, align_caches, cache_targets,
                                    make_specs)
from tests.run_helpers import checkpoint_weights, kill_after_first_checkpoint
from tests.test_distill import ENV, cli_args, config, work  # noqa: F401  (work: a fixture)


def anisotropic(n=400, d=6, seed=0):
    """Rows sharing one dominant direction, like aisfx's embeddings."""
    rng = np.random.default_rng(seed)
    return 5.0 + rng.normal(size=(n, d)) @ rng.normal(size=(d, d))


@pytest.mark.parametrize("kind", ["none", "center", "standardize", "whiten"])
def test_each_normalisation_equals_its_numpy_formula_and_inverts(kind):
    y = anisotropic()
    norm = TargetNorm.fit(y, kind, floor=1e-6)
    z = norm.normalize(torch.tensor(y, dtype=torch.float32)).double().numpy()
    mean, std = y.mean(0), y.std(0)
    if kind == "none":
        want = y
    elif kind == "center":
        want = y - mean
    elif kind == "standardize":
        want = (y - mean) / std
    else:  # whitened: zero mean, identity covariance, and a rotation of the centred rows
        assert np.allclose(z.mean(0), 0, atol=1e-4)
        assert np.allclose(np.cov(z, rowvar=False, bias=True), np.eye(y.shape[1]), atol=1e-3)
        lam, vec = np.linalg.eigh(np.cov(y, rowvar=False, bias=True))
        want = (y - mean) @ vec / np.sqrt(lam)
    assert np.allclose(z, want, atol=1e-3 * max(1.0, np.abs(want).max()))
    back = norm.denormalize(norm.normalize(torch.tensor(y, dtype=torch.float32))).double().numpy()
    assert np.allclose(back, y, atol=1e-4)


def test_variance_floor_keeps_degenerate_directions_finite():
    y = anisotropic()
    y[:, 0] = 3.0                                   # a constant dimension
    for kind in ("standardize", "whiten"):
        z = TargetNorm.fit(y, kind, floor=1e-3).normalize(torch.tensor(y, dtype=torch.float32))
        assert torch.isfinite(z).all() and float(z.abs().max()) < 1e4


def test_targets_normalise_each_slice_with_its_own_statistics():
    y = np.concatenate([anisotropic(d=3, seed=1), 100 + anisotropic(d=5, seed=2)], axis=1)
    norms = [TargetNorm.fit(y[:, :3], "center"), TargetNorm.fit(y[:, 3:], "standardize")]
    t = Targets([3, 5], norms)
    z = t.normalize(torch.tensor(y, dtype=torch.float32)).double().numpy()
    assert np.allclose(z[:, :3], y[:, :3] - y[:, :3].mean(0), atol=1e-4)
    assert np.allclose(z[:, 3:], (y[:, 3:] - y[:, 3:].mean(0)) / y[:, 3:].std(0), atol=1e-3)
    scripted = torch.jit.script(t)
    assert torch.allclose(scripted.denormalize(torch.tensor(z, dtype=torch.float32)),
                          torch.tensor(y, dtype=torch.float32).float(), atol=1e-3)


class _Ids:
    def __init__(self, ids):
        self.ids = ids

    def __len__(self):
        return len(self.ids)


def test_caches_are_joined_by_segment_id():
    a = _Ids([("a.wav", 0), ("a.wav", 100), ("b.wav", 0), ("c.wav", 0)])
    b = _Ids([("b.wav", 0), ("a.wav", 0), ("c.wav", 0)])      # no ("a.wav", 100), other order
    valid, maps = align_caches([a, b])
    assert valid.tolist() == [0, 2, 3]
    assert maps[1].tolist() == [1, -1, 0, 2]
    rows_a, rows_b = np.arange(8.0).reshape(4, 2), 10 + np.arange(9.0).reshape(3, 3)
    joined = JoinedRows([rows_a, rows_b], maps, [4, 3])
    assert joined.shape == (4, 5)
    assert joined[2].tolist() == [4, 5, 10, 11, 12]          # b.wav: row 2 of a, row 0 of b
    # Two views each, view-major: item 4 + 2 is view 1 of b.wav.
    views = JoinedRows([np.concatenate([rows_a, -rows_a]), np.concatenate([rows_b, -rows_b])],
                       maps, [4, 3])
    assert views.shape == (8, 5)
    assert views[4 + 2].tolist() == [-4, -5, -10, -11, -12]


def test_targets_and_weights_from_cache_meta():
    teacher = {"name": "hub", "fingerprint": "f"}
    layered = {"teacher": teacher, "dim": 6,
               "targets": [{"name": "layer4", "dim": 2}, {"name": "layer8", "dim": 4}]}
    plain = {"teacher": {"name": "aisfx", "fingerprint": "g"}, "dim": 3}
    assert cache_targets(layered) == [("layer4", 2), ("layer8", 4)]
    assert cache_targets(plain) == [("aisfx", 3)]
    specs = make_specs([layered, plain], [{"name": "hub"}, {"name": "aisfx"}], [2.0, 1.0],
                       [1.0, 0.5, 3.0])
    assert [(s.name, s.cache, s.start, s.stop, s.weight) for s in specs] == [
        ("layer4", 0, 0, 2, 2.0), ("layer8", 0, 2, 6, 1.0), ("aisfx", 1, 0, 3, 3.0)]
    with pytest.raises(ValueError, match="3 targets"):
        make_specs([layered, plain], [{}, {}], [], [1.0])
    with pytest.raises(ValueError, match="lists targets"):
        cache_targets({**layered, "dim": 7})


def write_energy_teacher(path):
    """A second TorchScript teacher at 16 kHz, unlike CREPE: log energies of 16 sub-frames
    [B, T] -> [B, 16]."""

    class Energy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.sample_rate = 16000

        def forward(self, wav: torch.Tensor) -> torch.Tensor:
            n = wav.shape[1] // 16 * 16
            frames = wav[:, :n].reshape(wav.shape[0], 16, -1)
            return torch.log(frames.pow(2).mean(-1) + 1e-4)

    torch.jit.script(Energy()).save(str(path))
    return path


@pytest.mark.slow
def test_two_teachers_train_resume_and_export(work, tmp_path, one_thread):  # noqa: F811
    second = write_energy_teacher(tmp_path / "energy.pt")
    teachers = [str(work["teacher"]), str(second)]
    cfg = config(work, tmp_path / "whole", teacher=teachers, teacher_weights=[1.0, 0.5],
                 target_norm="standardize", cache_dir=str(tmp_path / "caches"))
    whole = distill(cfg)
    state, weights = checkpoint_weights(whole.run.last)
    assert [(t["name"], t["dim"], t["weight"]) for t in state["targets"]] == [
        ("crepe-tiny", 256, 1.0), ("energy", 16, 0.5)]
    log = [json.loads(line) for line in whole.run.log.read_text().splitlines()]
    assert {"crepe-tiny", "energy"} <= set(log[0])       # each target's loss is logged
    epoch = [r for r in log if r["kind"] == "epoch"][-1]
    assert {"crepe-tiny/val_cos", "energy/val_cos", "knn_agree_backbone"} <= set(epoch)
    assert whole.export.is_file()

    # The same run through the CLI, killed after its first checkpoint and resumed.
    out = tmp_path / "killed"
    args = ["distill", *cli_args(cfg.replace(teacher=teachers[0], out=str(out)))]
    args[1:2] = teachers
    args += ["--teacher-weights", "1,0.5", "--target-norm", "standardize"]
    kill_after_first_checkpoint(args, out, ENV)
    resumed = distill(cfg.replace(out=str(out)), resume="auto")
    _, again = checkpoint_weights(resumed.run.last)
    for name, tensor in weights.items():
        assert torch.allclose(tensor, again[name], atol=1e-6), name


@pytest.mark.slow
def test_projected_export_is_in_the_teachers_space(work, tmp_path, one_thread):  # noqa: F811
    from pyssondo.audio import load_audio
    from pyssondo.loading import load_model
    from pyssondo.train.model import model_from_checkpoint

    result = distill(config(work, tmp_path / "r", target_norm="whiten", projected=True,
                            epochs=1))
    state = torch.load(result.run.best, weights_only=True)
    _, model, _ = model_from_checkpoint(state)
    norm = state["target_norm"]
    exported = load_model(result.export).module
    wav, _ = load_audio(work["held"][0], 16000)
    x = torch.from_numpy(wav[: 2 * 16000][None])
    with torch.no_grad():
        got = exported(x).numpy()[0]
        from pyssondo.frontend import LogMel

        head_out = model.head(model.student(LogMel(config(work, tmp_path).mel)(x))).numpy()[0]
    want = head_out @ norm["norms.0.inverse_map"].numpy() + norm["norms.0.mean"].numpy()
    assert np.allclose(got, want, atol=1e-3 * np.abs(want).max())
    assert not np.allclose(got, head_out, atol=1e-2 * np.abs(want).max())
