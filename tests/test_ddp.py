"""`torchrun --nproc_per_node 2 -m pyssondo distill` on real audio reaches the weights of one
process on the same settings, writes one normal run folder, and resumes; the pieces of
pyssondo.train.distributed against single-process references."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pyssondo.frontend import MelConfig
from pyssondo.errors import ParameterError
from pyssondo.sampling import BalancedSampler
from pyssondo.train.config import DistillConfig
from pyssondo.train.data import KeyBatches
from pyssondo.train.distill import distill
from tests.run_helpers import checkpoint_weights

ROOT = Path(__file__).resolve().parents[1]
MEL = MelConfig(sample_rate=16000, f_max=8000.0, n_mels=64)
TORCHRUN = Path(sys.executable).with_name("torchrun")
N_CLIPS = 8
TOL = 1e-4  # max |w_2 ranks - w_1 process|, and of the outputs


def env() -> dict:
    return {"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "SSONDO_PROGRESS": "0", "OMP_NUM_THREADS": "1", "HOME": os.environ.get("HOME", "/")}


@pytest.fixture(scope="module")
def work(tmp_path_factory, shared_data):
    from pyssondo.teachers import build_teacher_file

    root = tmp_path_factory.mktemp("ddp")
    build_teacher_file("crepe-tiny", root / "crepe-tiny.pt")
    (root / "audio").mkdir()
    for path in sorted((shared_data / "pool").glob("*.flac"))[:N_CLIPS]:
        shutil.copy(path, root / "audio" / path.name)
    return root


def config(root: Path, out: Path, **kw) -> DistillConfig:
    """Small settings as in test_distill: mn01, 2 s windows, 16 kHz 64 mels; a linear head (no
    dropout) and no rounding noise, whose draws cannot match across process counts; cosine +
    a relational term, so the gathered global batch is exercised."""
    base = dict(teacher=str(root / "crepe-tiny.pt"), audio=str(root / "audio"), student="mn01",
                head="linear", loss="cosine:1,rkd-dist:1", mel=MEL, window_s=2.0, clusters=4,
                batch_size=8, epochs=2, samples_per_epoch=16, lr=3e-3, val_fraction=0.25,
                workers=0, threads=1, cache_dir=str(root / "cache"), out=str(out), log_every=1,
                views=1, rounding_noise=0.0)
    base.update(kw)
    return DistillConfig(**base)


def torchrun_args(cfg: DistillConfig, n: int = 2):
    return [str(TORCHRUN), "--standalone", "--nproc_per_node", str(n), "-m", "pyssondo",
            "distill", cfg.teacher, cfg.audio, "--student", cfg.student, "--head", cfg.head,
            "--loss", cfg.loss, "--student-sr", "16000", "--n-mels", "64",
            "--window", str(cfg.window_s), "--clusters", str(cfg.clusters),
            "--batch-size", str(cfg.batch_size), "--epochs", str(cfg.epochs),
            "--samples-per-epoch", str(cfg.samples_per_epoch), "--lr", str(cfg.lr),
            "--val-fraction", str(cfg.val_fraction), "--workers", "0", "--threads", "1",
            "--cache-dir", cfg.cache_dir, "--out", cfg.out, "--log-every", "1", "--views", "1",
            "--rounding-noise", "0"]



def rebuild(ckpt):
    from pyssondo.train.model import build_model

    model = build_model(DistillConfig.from_json(ckpt["config"]), ckpt["head"]["weight"].shape[0],
                        False)
    model.student.load_state_dict(ckpt["student"])
    model.head.load_state_dict(ckpt["head"])
    return model


@pytest.fixture(scope="module")
def two_ranks(work, tmp_path_factory):
    """The same small run in one process and under torchrun with 2 ranks, uninterrupted."""
    tmp_path = tmp_path_factory.mktemp("runs")
    cfg = config(work, tmp_path / "one")
    one = distill(cfg, progress=False, export=False)  # also fills the teacher cache
    t0 = time.perf_counter()
    res = subprocess.run(torchrun_args(cfg.replace(out=str(tmp_path / "two"))), env=env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    print(f"torchrun 2 ranks: {time.perf_counter() - t0:.1f} s")
    return cfg, one, tmp_path / "two", res.stdout


def test_two_ranks_match_one_process(two_ranks):
    cfg, one, out, stdout = two_ranks
    runs = [p for p in out.iterdir() if p.is_dir() and p.name != "cache"]
    assert len(runs) == 1, runs
    run = runs[0]
    for name in ("config.json", "log.jsonl", "checkpoints/last.pt", "checkpoints/best.pt",
                 "student.pt"):
        assert (run / name).is_file(), name
    assert stdout.count("run folder") == 1  # rank 0 alone reports

    ckpt1, w1 = checkpoint_weights(one.run.last)
    ckpt2, w2 = checkpoint_weights(run / "checkpoints" / "last.pt")
    assert ckpt2["step"] == ckpt1["step"] == 4
    assert len(ckpt2["rng_ranks"]) == 2
    # Batch-norm biases feeding another batch norm through a linear map have a zero gradient
    # in exact arithmetic; Adam turns their float-noise gradients into steps of about lr, so
    # they (and the running means after them) differ by up to ~lr between 1 and 2 processes
    # without changing what the network computes in training mode. Every other parameter
    # must match, and so must the training-mode outputs.
    model1, model2 = rebuild(ckpt1), rebuild(ckpt2)
    bn = {f"s.{name}.{p}" for name, m in model1.student.named_modules()
          if isinstance(m, torch.nn.BatchNorm2d)
          for p in ("bias", "running_mean", "running_var", "num_batches_tracked")}
    diff = {k: float((w1[k].double() - w2[k].double()).abs().max()) for k in w1}
    worst = max((k for k in diff if k not in bn), key=diff.get)
    print(f"max |w_2 ranks - w_1 process|: {diff[worst]:.2e} ({worst}) over weights; "
          f"{max(diff.values()):.2e} over all (batch-norm biases and running statistics)")
    assert diff[worst] <= TOL, (worst, diff[worst])
    x = torch.randn(8, 64, MEL.num_frames(32000), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out1, out2 = model1.train()(x * 2 - 4), model2.train()(x * 2 - 4)
    print(f"max |f_2 ranks(x) - f_1 process(x)| in train mode: "
          f"{float((out1 - out2).abs().max()):.2e} (outputs up to {float(out1.abs().max()):.2f})")
    assert torch.allclose(out1, out2, atol=TOL, rtol=0)
    assert set(w1) == set(w2)
    log1 = [json.loads(line) for line in one.run.log.read_text().splitlines()]
    log2 = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in log1] == [r["kind"] for r in log2]
    for a, b in zip(log1, log2):
        assert a.get("loss", 0) == pytest.approx(b.get("loss", 0), abs=1e-4)
        # eval mode uses running statistics, which follow the batch-norm biases above
        assert a.get("val_cos", 0) == pytest.approx(b.get("val_cos", 0), abs=1e-3)

    # Resume a finished run with --resume auto on 2 ranks: nothing left to do, same folder.
    res = subprocess.run(torchrun_args(cfg.replace(out=str(out))) + ["--resume", "auto"],
                         env=env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert [p for p in out.iterdir() if p.is_dir()] == [run]
    _, again = checkpoint_weights(run / "checkpoints" / "last.pt")
    assert all(torch.equal(again[k], w2[k]) for k in w2)


def test_two_ranks_killed_then_resumed_reach_the_same_weights(two_ranks, tmp_path):
    cfg, _, out, _ = two_ranks
    _, want = checkpoint_weights(next(out.glob("*/checkpoints/last.pt")))
    args = torchrun_args(cfg.replace(out=str(tmp_path / "b"))) + ["--save-every", "1"]
    # SIGKILL to torchrun and both ranks right after the first checkpoint.
    proc = subprocess.Popen(args, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 240
    while not list((tmp_path / "b").glob("*/checkpoints/last.pt")):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed, _ = checkpoint_weights(next((tmp_path / "b").glob("*/checkpoints/last.pt")))
    assert killed["step"] < 4  # the kill interrupted the run
    res = subprocess.run(args + ["--resume", "auto"], env=env(), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    done, got = checkpoint_weights(next((tmp_path / "b").glob("*/checkpoints/last.pt")))
    assert done["step"] == 4 and got.keys() == want.keys()
    worst = max(float((got[k].double() - want[k].double()).abs().max()) for k in want)
    assert worst <= 1e-6, worst


def test_key_batches_split_the_global_batch():
    sampler = BalancedSampler(np.arange(20) % 4, 24, seed=3)
    rows = np.arange(100, 120)
    whole = list(KeyBatches(sampler, rows, 8, 0, 2))
    shares = [list(KeyBatches(BalancedSampler(np.arange(20) % 4, 24, seed=3), rows, 8, 0, 2,
                              rank=r, world_size=2)) for r in range(2)]
    assert len(whole) == len(shares[0]) == len(shares[1]) == 6
    for full, a, b in zip(whole, *shares):
        assert a + b == full and len(a) == 4
    with pytest.raises(ParameterError, match="multiple of 3"):
        KeyBatches(sampler, rows, 8, 0, 2, rank=0, world_size=3)


def test_ssondo_cache_under_torchrun_shares_the_files(work, tmp_path):
    from pyssondo.cache import EmbeddingCache, build_cache

    args = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "pyssondo", "cache",
            str(work / "crepe-tiny.pt"), str(work / "audio"), "--window", "2",
            "--shard-rows", "4", "--threads", "1", "--out", str(tmp_path / "two")]
    res = subprocess.run(args, env=env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("size ") == 1  # rank 0 alone prints the summary
    folder = next((tmp_path / "two").iterdir())
    shards = json.loads((folder / "manifest.json").read_text())["shards"]
    assert {name[-7:] for name in shards} == {"-r0.npy", "-r1.npy"}  # both ranks computed
    one = EmbeddingCache(build_cache(work / "crepe-tiny.pt", work / "audio", tmp_path / "one",
                                     window_s=2.0, progress=False))
    two = EmbeddingCache(folder, verify=True)
    assert two.ids == one.ids
    np.testing.assert_allclose(two.embeddings(), one.embeddings(), atol=1e-3)
