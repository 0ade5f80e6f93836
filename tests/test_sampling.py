"""Balanced Data Sampling: draw frequencies, reproducibility, resume, sharding, cluster files, CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from pyssondo.clustering import cluster_embeddings, load_or_fit_clusters, load_or_fit_labels
from pyssondo.sampling import BalancedSampler, effective_balance

ROOT = Path(__file__).resolve().parents[1]


def unbalanced_ids(seed=0):
    sizes = [2000, 500, 120, 30, 7, 1]
    ids = np.repeat(np.arange(len(sizes)), sizes)
    return np.random.default_rng(seed).permutation(ids)


def test_alpha1_draws_every_cluster_equally_often():
    ids = unbalanced_ids()
    s = BalancedSampler(ids, num_samples=60000, alpha=1.0, seed=3)
    draws = np.fromiter(iter(s), dtype=np.int64)
    assert draws.size == 60000
    freq = np.bincount(ids[draws], minlength=6)
    chi2 = stats.chisquare(freq).statistic  # against uniform over the 6 clusters
    assert chi2 < stats.chi2.ppf(1 - 1e-4, df=5), freq
    # Within a cluster, items are drawn uniformly.
    big = np.flatnonzero(ids == 0)
    within = np.bincount(np.searchsorted(big, draws[ids[draws] == 0]), minlength=big.size)
    assert stats.chisquare(within).statistic < stats.chi2.ppf(1 - 1e-4, df=big.size - 1)


def test_alpha0_is_uniform_over_items_and_probabilities_formula():
    ids = unbalanced_ids()[:300]
    s = BalancedSampler(ids, num_samples=90000, alpha=0.0, seed=1)
    freq = np.bincount(np.fromiter(iter(s), dtype=np.int64), minlength=ids.size)
    assert stats.chisquare(freq).statistic < stats.chi2.ppf(1 - 1e-4, df=ids.size - 1)
    sizes = np.bincount(ids)
    for alpha in (0.0, 0.5, 1.0):
        w = sizes[ids].astype(float) ** -alpha
        np.testing.assert_allclose(BalancedSampler(ids, 10, alpha).probabilities, w / w.sum(),
                                   rtol=1e-9, atol=1e-15)


def test_effective_balance():
    ids = unbalanced_ids()
    sizes = np.bincount(ids)
    b1 = effective_balance(ids, 1.0)
    np.testing.assert_allclose(b1["share"], np.full(6, 1 / 6))
    assert b1["entropy_ratio"] == pytest.approx(1.0)
    assert b1["effective_clusters"] == pytest.approx(6.0)
    b0 = effective_balance(ids, 0.0)
    np.testing.assert_allclose(b0["share"], sizes / sizes.sum())
    p = sizes / sizes.sum()
    assert b0["entropy_ratio"] == pytest.approx(-(p * np.log(p)).sum() / np.log(6))
    assert b0["max_over_min"] == pytest.approx(2000.0)


def test_reproducible_and_epochs_differ():
    ids = unbalanced_ids()
    a = list(BalancedSampler(ids, 500, seed=7))
    b = list(BalancedSampler(ids, 500, seed=7))
    c = list(BalancedSampler(ids, 500, seed=8))
    assert a == b and a != c
    s = BalancedSampler(ids, 500, seed=7)
    e0, e1 = list(s), list(s)  # the second iter() moves to epoch 1
    assert e0 == a and e1 != e0 and s.epoch == 1
    s.set_epoch(0)
    assert list(s) == a


@pytest.mark.parametrize("num_samples,cut", [(1000, 37), (70000, 65600)])
def test_resume_from_state_dict_continues_the_stream(num_samples, cut):
    ids = unbalanced_ids()
    full = BalancedSampler(ids, num_samples, seed=2)
    expected = list(full) + list(full)  # epochs 0 and 1
    s = BalancedSampler(ids, num_samples, seed=2)
    it = iter(s)
    head = [next(it) for _ in range(cut)]
    state = json.loads(json.dumps(s.state_dict()))  # survives a JSON/torch checkpoint
    assert state["position"] == cut and state["epoch"] == 0
    resumed = BalancedSampler(ids, num_samples, seed=2)
    resumed.load_state_dict(state)
    resumed.set_epoch(0)  # a trainer calls this at the start of each epoch: keeps the position
    rest = list(resumed)
    resumed.set_epoch(1)
    assert head + rest + list(resumed) == expected
    with pytest.raises(ValueError, match="seed=2 but this sampler has seed=3"):
        BalancedSampler(ids, num_samples, seed=3).load_state_dict(state)


@pytest.mark.parametrize("num_samples,world", [(100, 3), (70001, 4)])
def test_ranks_draw_disjoint_parts_of_the_global_stream(num_samples, world):
    ids = unbalanced_ids()
    ranks = [BalancedSampler(ids, num_samples, seed=4, rank=r, world_size=world)
             for r in range(world)]
    streams = [np.fromiter(iter(s), dtype=np.int64) for s in ranks]
    per_rank = -(-num_samples // world)
    assert all(len(s) == per_rank and st.size == per_rank for s, st in zip(ranks, streams))
    glob = ranks[0].global_stream(0)
    assert glob.size == per_rank * world
    interleaved = np.stack(streams, axis=1).reshape(-1)  # positions r, r+W, ... of each rank
    np.testing.assert_array_equal(interleaved, glob)
    one = BalancedSampler(ids, per_rank * world, seed=4)
    np.testing.assert_array_equal(np.fromiter(iter(one), dtype=np.int64), glob)


def test_dataloader_and_no_torch_import():
    code = ("import sys; import pyssondo.sampling as s; "
            "s.BalancedSampler([0, 1, 1], 4); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT)}, check=True)
    assert out.stdout.strip() == "False"
    import torch

    ids = unbalanced_ids()
    s = BalancedSampler(ids, 64, seed=0)
    data = torch.arange(ids.size)
    loader = torch.utils.data.DataLoader(data, batch_size=16, sampler=s)
    got = torch.cat(list(loader)).tolist()
    s.set_epoch(0)
    assert len(loader) == 4 and got == list(s)


def test_bad_sampler_arguments():
    with pytest.raises(ValueError, match="cluster_ids must be >= 0, got -1 at index 2"):
        BalancedSampler([0, 1, -1], 5)
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0"):
        BalancedSampler([0, 1], 5, alpha=-1)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 1\], got 2"):
        BalancedSampler([0, 1], 5, rank=2, world_size=2)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        BalancedSampler([0, 1], 0)


def blobs(n=400, d=16, seed=0):
    rng = np.random.default_rng(seed)
    means = 4 * rng.standard_normal((5, d))
    return (means[rng.integers(0, 5, n)] + rng.standard_normal((n, d))).astype(np.float32)


def test_load_or_fit_labels_caches_and_refits_on_change(tmp_path):
    X = blobs()
    labels, info = load_or_fit_labels(X, tmp_path, k=5, metric="cosine", seed=0)
    assert labels.dtype == np.int32 and labels.shape == (400,) and not info["reused"]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["clusters-k5-cosine-s0.centers.npy", "clusters-k5-cosine-s0.json",
                     "clusters-k5-cosine-s0.npy"]
    summary = json.loads((tmp_path / "clusters-k5-cosine-s0.json").read_text())
    assert summary["fingerprint"]["n"] == 400 and sum(summary["sizes"]) == 400
    again, info2 = load_or_fit_labels(X, tmp_path, k=5, metric="cosine", seed=0)
    assert info2["reused"]
    np.testing.assert_array_equal(again, labels)
    Y = X.copy()
    Y[-1] += 1.0  # the last row is always part of the fingerprint
    _, info3 = load_or_fit_labels(Y, tmp_path, k=5, metric="cosine", seed=0)
    assert not info3["reused"]
    _, info4 = load_or_fit_labels(np.vstack([Y, Y[:3]]), tmp_path, k=5, metric="cosine", seed=0)
    assert not info4["reused"]


def test_load_or_fit_clusters_on_a_real_teacher_cache(tmp_path, shared_data, capsys):
    """CREPE tiny embeddings of real clips: ids fitted once, reused, refitted when the cache
    changes, and `ssondo cluster` on the cache folder agrees with the library."""
    import shutil

    from pyssondo import cli
    from pyssondo.cache import EmbeddingCache, build_cache
    from pyssondo.teachers import build_teacher_file

    audio = tmp_path / "audio"
    audio.mkdir()
    pool = sorted((shared_data / "pool").glob("*.flac"))
    for path in pool[:6]:
        shutil.copy(path, audio / path.name)
    teacher = tmp_path / "crepe-tiny.pt"
    build_teacher_file("crepe-tiny", teacher)
    cache_dir = build_cache(str(teacher), audio, tmp_path / "cache", window_s=1.0, progress=False)
    X = EmbeddingCache(cache_dir).embeddings(pool="mean")
    assert X.shape[0] == 24  # 6 clips x 4 one-second segments

    labels = load_or_fit_clusters(cache_dir, k=3)
    ref, _ = cluster_embeddings(np.asarray(X, np.float32), 3, "cosine", 0)
    np.testing.assert_array_equal(labels, ref)
    ids_file = cache_dir / "clusters-k3-cosine-s0.npy"
    mtime = ids_file.stat().st_mtime_ns
    np.testing.assert_array_equal(load_or_fit_clusters(cache_dir, k=3), labels)
    assert ids_file.stat().st_mtime_ns == mtime  # reused, not refitted

    shutil.copy(pool[6], audio / pool[6].name)  # the cache grows: the ids must follow
    build_cache(str(teacher), audio, tmp_path / "cache", window_s=1.0, progress=False)
    assert load_or_fit_clusters(cache_dir, k=3).shape == (28,)

    assert cli.main(["cluster", str(cache_dir), "-k", "3"]) == 0
    assert "28 rows x 256 dims -> 3 clusters" in capsys.readouterr().out


def test_cli_cluster_on_npy(tmp_path, capsys, monkeypatch):
    from pyssondo import cli

    path = tmp_path / "emb.npy"
    np.save(path, blobs(n=300))
    assert cli.main(["cluster", str(path), "-k", "5", "--metric", "euclidean",
                     "--plot", str(tmp_path / "sizes.png")]) == 0
    out = capsys.readouterr().out
    assert "300 rows x 16 dims -> 5 clusters" in out and "balanced sampling (alpha 1): balance 1.000" in out
    labels = np.load(tmp_path / "emb.clusters-k5-euclidean-s0.npy")
    assert labels.shape == (300,) and (tmp_path / "sizes.png").stat().st_size > 1000
    assert cli.main(["cluster", str(path), "-k", "5", "--metric", "euclidean"]) == 0
    assert "reused" in capsys.readouterr().out
    assert cli.main(["cluster", str(path), "-k", "301"]) == 1
    assert "k = 301 clusters need at least k rows" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli.main(["cluster", str(path), "-k", "5", "--plot", str(tmp_path / "x.png")]) == 1
    assert "--plot needs matplotlib" in capsys.readouterr().err
