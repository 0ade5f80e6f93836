"""The embedding cache on real audio: contents, incremental rebuilds, torn shards, kill -9."""
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
import soundfile as sf
import torch

from pyssondo.cache import EmbeddingCache, build_cache, layout
from pyssondo.teachers.crepe import load_crepe
from tests import test_cache_helpers as helpers

ROOT = Path(__file__).resolve().parents[1]
COUNTING = "tests.test_cache_helpers:counting_crepe"
NOTES = ["p000_n048_v064.flac", "p000_n048_v112.flac", "p000_n050_v064.flac"]
WINDOW, HOP = 2.0, 1.5  # seconds: a 1.5 s note is one padded segment, a 4 s pool clip three
OPTS = dict(window_s=WINDOW, hop_s=HOP, batch_size=4, shard_rows=4, workers=2, progress=False)


def _make_audio(shared_data: Path, dest: Path, notes: int = 6, pool: int = 3) -> Path:
    """Notes (the first 3 in a subfolder) and 4 s pool clips copied from ../shared/data."""
    names = sorted(p.name for p in (shared_data / "notes").glob("*.flac"))[:notes]
    (dest / "notes").mkdir(parents=True)
    for i, name in enumerate(names):
        shutil.copy2(shared_data / "notes" / name, dest / ("notes" if i < 3 else "") / name)
    for i in range(pool):
        shutil.copy2(shared_data / "pool" / f"pool_000{i}.flac", dest / f"pool_000{i}.flac")
    return dest


def _reference_rows(path: Path, starts, window: int = 32000) -> np.ndarray:
    """CREPE tiny run directly on segments cut by hand (numpy slicing + zero padding)."""
    wav, sr = sf.read(path, dtype="float32")
    assert sr == 16000
    segs = np.stack([np.pad(wav[s:s + window], (0, window - len(wav[s:s + window])))
                     for s in starts])
    with torch.no_grad():
        return _crepe()(torch.from_numpy(segs)).numpy()


_MODEL = {}


def _crepe():
    if "m" not in _MODEL:
        _MODEL["m"] = load_crepe("tiny")
    return _MODEL["m"]


def _snapshot(folder: Path):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def _count_reset():
    helpers.CALLS.update(n=0, rows=0)


@pytest.fixture(scope="module")
def built(tmp_path_factory, shared_data):
    base = tmp_path_factory.mktemp("built")
    audio = _make_audio(shared_data, base / "audio")
    folder = build_cache(COUNTING, audio, base / "cache", **OPTS)
    return audio, base / "cache", folder


@pytest.fixture
def copy(built, tmp_path):
    """A private copy of the built audio and cache (audio mtimes kept)."""
    audio, root, _ = built
    shutil.copytree(audio, tmp_path / "audio", copy_function=shutil.copy2)
    shutil.copytree(root, tmp_path / "cache", copy_function=shutil.copy2)
    folder = next((tmp_path / "cache").iterdir())
    return tmp_path / "audio", tmp_path / "cache", folder


def test_cache_contents_match_teacher_on_hand_cut_segments(built, capsys):
    audio, _, folder = built
    cache = EmbeddingCache(folder, verify=True)
    expected = []
    for path in sorted(audio.rglob("*.flac")):
        n = sf.info(path).frames
        starts = [0] if n <= 32000 else [0, 24000, 48000]
        expected += [(path.relative_to(audio).as_posix(), s) for s in starts]
    assert cache.ids == expected and len(cache) == 15
    assert cache.meta["level"] == "frame" and cache.dim == 256 and cache.frames == 31
    assert cache.meta["teacher"]["sample_rate"] == 16000 and cache.meta["dtype"] == "float16"
    segs = cache.segments()
    # short clips: one padded segment with the true length; long clips keep their tail
    assert {s.length for s in segs if s.file_key.startswith("notes/")} == {24000}
    assert [(s.start, s.length) for s in segs if s.file_key == "pool_0001.flac"] == [
        (0, 32000), (24000, 32000), (48000, 16000)]
    assert all(s.file_sr == 16000 and s.path == audio / s.file_key for s in segs)
    frames = cache.embeddings(pool=None)
    assert frames.shape == (15, 31, 256) and frames.dtype == np.float16
    for key in ("notes/" + sorted(p.name for p in (audio / "notes").iterdir())[0],
                "pool_0002.flac"):
        idx = [i for i, (k, _) in enumerate(cache.ids) if k == key]
        ref = _reference_rows(audio / key, [cache.ids[i][1] for i in idx])
        np.testing.assert_allclose(frames[idx].astype(np.float32), ref, rtol=2e-3, atol=2e-3)
        np.testing.assert_array_equal(cache[cache.ids[idx[-1]]], frames[idx[-1]])
    # pooled: mean over the frames that hold audio (24 of 31 for a 1.5 s note in 2 s)
    pooled = cache.embeddings()
    assert pooled.shape == (15, 256)
    np.testing.assert_allclose(pooled[0], frames[0, :24].astype(np.float32).mean(0), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(pooled[-1], frames[-1, :16].astype(np.float32).mean(0),
                               rtol=1e-5, atol=1e-5)
    sid, row = next(iter(cache))
    assert sid == cache.ids[0] and row.shape == (31, 256)
    blocks = list(cache.iter_blocks(block=4))
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), pooled)

    from pyssondo.cli import main
    assert main(["cache", "--info", str(folder.parent)]) == 0  # the root holds one cache
    out = capsys.readouterr().out
    assert "segments     15" in out and "files        9" in out and "float16" in out


def test_clip_level_teacher_float32(tmp_path, shared_data):
    audio = tmp_path / "audio"
    audio.mkdir()
    for name in NOTES:
        shutil.copy2(shared_data / "notes" / name, audio / name)
    folder = build_cache("tests.test_cache_helpers:clip_crepe", audio, tmp_path / "c",
                         **dict(OPTS, dtype="float32"))
    assert folder.name.endswith("-float32")
    cache = EmbeddingCache(folder)
    emb = cache.embeddings()
    assert cache.meta["level"] == "clip" and cache.frames is None
    assert isinstance(emb, np.memmap) and emb.shape == (3, 256) and emb.dtype == np.float32
    assert cache.embeddings(pool=None).shape == (3, 256)
    ref = _reference_rows(audio / NOTES[1], [0]).mean(axis=1)
    np.testing.assert_allclose(cache[(NOTES[1], 0)], ref[0], rtol=1e-5, atol=1e-5)


def test_rerun_computes_nothing(copy):
    audio, root, folder = copy
    before = _snapshot(folder)
    _count_reset()
    assert build_cache(COUNTING, audio, root, **OPTS) == folder
    assert helpers.CALLS["n"] == 0
    after = _snapshot(folder)
    assert before.keys() == after.keys() and before["manifest.json"] == after["manifest.json"]
    assert all(before[k][1] == after[k][1] for k in before if k.startswith("shard-"))


def test_changed_touched_deleted_and_new_files(copy, shared_data):
    audio, root, folder = copy
    old = EmbeddingCache(folder)
    old_rows = {sid: np.array(old[sid]) for sid in old.ids}
    wav, sr = sf.read(audio / "pool_0001.flac", dtype="float32")
    sf.write(audio / "pool_0001.flac", wav[::-1].copy(), sr)  # changed content
    touched = next((audio / "notes").iterdir())
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    deleted = sorted(audio.glob("p0*.flac"))[0]
    deleted.unlink()
    (audio / "pool_0000.flac").unlink()  # leaves its shard mostly dead: compacted
    shutil.copy2(shared_data / "pool" / "pool_0005.flac", audio / "new.flac")
    _count_reset()
    build_cache(COUNTING, audio, root, **OPTS)
    assert helpers.CALLS["rows"] == 6  # 3 segments of the changed file + 3 of the new one
    cache = EmbeddingCache(folder, verify=True)
    keys = {k for k, _ in cache.ids}
    assert deleted.name not in keys and "new.flac" in keys and len(cache) == 14
    assert "pool_0000.flac" not in keys
    for sid in cache.ids:
        if sid[0] not in ("pool_0001.flac", "new.flac"):
            np.testing.assert_array_equal(cache[sid], old_rows[sid])
    idx = [i for i, (k, _) in enumerate(cache.ids) if k == "pool_0001.flac"]
    ref = _reference_rows(audio / "pool_0001.flac", [cache.ids[i][1] for i in idx])
    np.testing.assert_allclose(cache.rows(idx).astype(np.float32), ref, rtol=2e-3, atol=2e-3)
    manifest = json.loads((folder / "manifest.json").read_text())
    referenced = {e["shard"] for e in manifest["files"].values()}
    assert referenced == set(manifest["shards"]) == {p.name for p in folder.glob("shard-*")}
    assert "shard-000001.npy" not in manifest["shards"]  # 2 of its 5 rows were live
    for name, record in manifest["shards"].items():  # no shard is mostly dead rows
        live = sum(len(e["starts"]) for e in manifest["files"].values() if e["shard"] == name)
        assert 2 * live >= record["rows"], name


def test_torn_journal_line_is_ignored(copy):
    audio, root, folder = copy
    n = len(EmbeddingCache(folder))
    with open(folder / layout.JOURNAL, "ab") as f:  # a kill in the middle of an append
        f.write(b'{"files": {"x.flac": {"row": 0, "sha')
    assert len(EmbeddingCache(folder)) == n
    _count_reset()
    build_cache(COUNTING, audio, root, **OPTS)
    assert helpers.CALLS["n"] == 0 and not (folder / layout.JOURNAL).exists()
    assert len(EmbeddingCache(folder, verify=True)) == n


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_torn_shard_is_detected_and_recomputed(copy, damage):
    audio, root, folder = copy
    reference = EmbeddingCache(folder).embeddings(pool=None).copy()
    shard = folder / "shard-000001.npy"
    data = bytearray(shard.read_bytes())
    if damage == "truncate":
        shard.write_bytes(data[: len(data) // 2])
    else:
        data[-7] ^= 0xFF
        shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="shard-000001.npy"):
        EmbeddingCache(folder, verify=True)
    manifest = json.loads((folder / "manifest.json").read_text())
    in_shard = sum(len(e["starts"]) for e in manifest["files"].values()
                   if e["shard"] == shard.name)
    _count_reset()
    with pytest.warns(UserWarning, match="shard-000001.npy"):
        build_cache(COUNTING, audio, root, **OPTS)
    assert helpers.CALLS["rows"] == in_shard > 0
    again = EmbeddingCache(folder, verify=True).embeddings(pool=None)
    np.testing.assert_allclose(again.astype(np.float32), reference.astype(np.float32),
                               rtol=1e-3, atol=1e-3)


def test_kill_9_mid_run_then_resume_equals_uninterrupted_run(tmp_path, shared_data, monkeypatch):
    audio = _make_audio(shared_data, tmp_path / "audio", notes=4, pool=2)  # 10 segments
    spec = "tests.test_cache_helpers:slow_crepe"
    env = dict(os.environ, PYTHONPATH=str(ROOT), SSONDO_TEST_SLEEP="0.2")
    cmd = [sys.executable, "-m", "pyssondo", "cache", spec, str(audio), "--out",
           str(tmp_path / "killed"), "--window", str(WINDOW), "--hop", str(HOP),
           "--batch-size", "2", "--shard-rows", "2", "--workers", "2", "--views", "1"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    try:
        while not list((tmp_path / "killed").glob("*/shard-*.npy")):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no shard appeared within 90 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL  # it was killed mid-run, not finished
    folder = next((tmp_path / "killed").iterdir())
    partial = layout.read_manifest(folder)
    assert partial is not None and 0 < len(partial["files"]) < 6
    monkeypatch.delenv("SSONDO_TEST_SLEEP", raising=False)
    opts = dict(OPTS, batch_size=2, shard_rows=2)
    resumed = EmbeddingCache(build_cache(spec, audio, tmp_path / "killed", **opts))
    straight = EmbeddingCache(build_cache(spec, audio, tmp_path / "straight", **opts))
    assert resumed.path.name == straight.path.name
    assert resumed.ids == straight.ids and len(resumed) == 10
    assert resumed.segments() == straight.segments()
    np.testing.assert_allclose(resumed.embeddings(pool=None).astype(np.float32),
                               straight.embeddings(pool=None).astype(np.float32),
                               rtol=1e-3, atol=1e-3)


def test_unreadable_audio_is_skipped_with_warning(tmp_path, shared_data):
    audio = tmp_path / "audio"
    audio.mkdir()
    shutil.copy2(shared_data / "notes" / NOTES[0], audio / "good.flac")
    (audio / "garbage.wav").write_bytes(b"RIFF" + os.urandom(300))
    data = (shared_data / "pool" / "pool_0000.flac").read_bytes()
    (audio / "cut.flac").write_bytes(data[: len(data) // 3])
    with pytest.warns(UserWarning) as record:
        folder = build_cache(COUNTING, audio, tmp_path / "cache", **OPTS)
    text = "\n".join(str(w.message) for w in record)
    assert "garbage.wav" in text and "cut.flac" in text
    cache = EmbeddingCache(folder)
    assert set(cache.skipped) == {"garbage.wav", "cut.flac"}
    assert [k for k, _ in cache.ids] == ["good.flac"]
    assert "garbage.wav" in cache.summary()


@pytest.mark.parametrize("factory, pattern", [
    ("nan_crepe", r"NaN/inf for .*\.flac \(segment at sample \d+\); output shape \(\d+, 31, 256\)"),
    ("huge_crepe", r"beyond the float16 range \(use --dtype float32\) for .*\.flac"),
    ("shape_crepe", r"returned \(\d+,\) for a batch \[\d+, 32000\] from .*\.flac.*expected"),
    ("raising_crepe", r"failed on a batch \[\d+, 32000\] from .*\.flac.*boom from the test"),
])
def test_bad_teacher_output_stops_with_file_and_shape(tmp_path, shared_data, factory, pattern):
    audio = tmp_path / "audio"
    audio.mkdir()
    for name in NOTES[:2]:
        shutil.copy2(shared_data / "notes" / name, audio / name)
    with pytest.raises(ValueError, match=pattern):
        build_cache(f"tests.test_cache_helpers:{factory}", audio, tmp_path / "c", **OPTS)


def test_second_concurrent_build_waits_for_the_first(copy):
    import threading

    fcntl = pytest.importorskip("fcntl")
    audio, root, folder = copy
    done = threading.Event()
    with open(folder / ".lock", "a") as f:  # as a running build holds it
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        second = threading.Thread(target=lambda: (build_cache(COUNTING, audio, root, **OPTS),
                                                  done.set()))
        second.start()
        assert not done.wait(1.0)  # blocked while the lock is held
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    second.join(60)
    assert done.is_set()


def test_empty_folder_and_unknown_rate_are_errors(tmp_path, shared_data):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no audio files"):
        build_cache(COUNTING, tmp_path / "empty", tmp_path / "c", **OPTS)
    with pytest.raises(ValueError, match="--teacher-sr"):
        build_cache("tests.test_cache_helpers:rateless_crepe", shared_data / "notes",
                    tmp_path / "c", **OPTS)


def test_fsdd_8k_is_resampled_to_the_teacher_rate(tmp_path, shared_data):
    """Needs the C++ resampler (_core.resample, issue 2)."""
    try:
        from pyssondo import _core
    except ImportError:
        pytest.skip("the C++ core (pyssondo._core) is not built")
    if not hasattr(_core, "resample"):
        pytest.skip("_core.resample is not built yet (issue 2)")
    from pyssondo.audio import resample

    audio = tmp_path / "audio"
    audio.mkdir()
    names = sorted(p.name for p in (shared_data / "fsdd").glob("*.wav"))[:3]
    for name in names:
        shutil.copy2(shared_data / "fsdd" / name, audio / name)
    with pytest.warns(UserWarning, match="upsampled"):
        folder = build_cache(COUNTING, audio, tmp_path / "c", **dict(OPTS, window_s=1.0,
                                                                      hop_s=1.0))
    cache = EmbeddingCache(folder)
    seg = cache.segments()[0]
    assert seg.file_sr == 8000 and seg.length == min(8000, sf.info(audio / names[0]).frames)
    wav, _ = sf.read(audio / names[0], dtype="float32")
    x = resample(wav, 8000, 16000)[:16000]
    x = np.pad(x, (0, 16000 - x.shape[0]))
    with torch.no_grad():
        ref = _crepe()(torch.from_numpy(x)[None])[0].numpy()
    np.testing.assert_allclose(cache[0].astype(np.float32), ref, rtol=2e-3, atol=2e-3)


# -------------------------------------------------------------------------------------------
# Rank-sharded builds
# -------------------------------------------------------------------------------------------
def _rank_build(rank, audio, root, barrier):
    """One rank of a 2-rank build, in its own (spawned) process."""
    build_cache(COUNTING, audio, root, rank=rank, world_size=2, barrier=barrier.wait, **OPTS)


def test_two_ranks_build_the_same_cache_as_one_process(built, tmp_path):
    import multiprocessing

    audio, _, single = built
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_rank_build, args=(r, audio, tmp_path / "cache", barrier))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    folder = next((tmp_path / "cache").iterdir())
    assert folder.name == single.name and not list(folder.glob("journal*"))
    manifest = json.loads((folder / layout.MANIFEST).read_text())
    assert {name[-7:] for name in manifest["shards"]} == {"-r0.npy", "-r1.npy"}  # both worked
    got, want = EmbeddingCache(folder, verify=True), EmbeddingCache(single)
    assert got.ids == want.ids
    np.testing.assert_allclose(got.embeddings(), want.embeddings(), atol=1e-3)  # float16 rows


def test_a_rank_that_finished_alone_is_kept_by_the_next_build(built, tmp_path):
    audio, _, single = built
    root = tmp_path / "cache"
    # Rank 1 of 2 computes its half; rank 0 never ran (killed before it started).
    build_cache(COUNTING, audio, root, rank=1, world_size=2, barrier=lambda: None, **OPTS)
    folder = next(root.iterdir())
    assert (folder / layout.journal_name(1)).is_file() and not (folder / layout.MANIFEST).exists()
    half = EmbeddingCache(folder)  # readable from the journal alone
    assert 0 < len(half) < len(EmbeddingCache(single))
    _count_reset()
    build_cache(COUNTING, audio, root, **OPTS)
    full = EmbeddingCache(folder)
    assert full.ids == EmbeddingCache(single).ids and not list(folder.glob("journal*"))
    assert helpers.CALLS["rows"] == len(full) - len(half)  # only rank 0's share was computed


def test_journal_lines_apply_in_the_order_they_were_written(tmp_path):
    def entry(shard):
        return layout.file_entry(1, 1, "h", 16000, 1, shard, 0, [0], [1])

    record = {"rows": 1, "bytes": 1, "sha256": "0"}
    old, new = layout.shard_name(3, rank=1), layout.shard_name(4, rank=0)
    layout.append_journal(tmp_path, old, record, {"a.wav": entry(old)}, rank=1)
    layout.append_journal(tmp_path, new, record, {"a.wav": entry(new)}, rank=0)
    manifest = layout.read_manifest(tmp_path)
    assert manifest["files"]["a.wav"]["shard"] == new  # rank 0's later line wins
    assert manifest["next_shard"] == 5 and set(manifest["shards"]) == {old, new}


def test_default_shard_size_bounds_bytes_and_rows():
    from pyssondo.cache.builder import SHARD_BYTES, SHARD_ROWS, default_shard_rows

    assert default_shard_rows(512 * 2) == SHARD_ROWS  # 512-d float16: capped by rows (4096)
    assert default_shard_rows(SHARD_BYTES // 10) == 10  # large frame-level rows: by bytes
    assert default_shard_rows(4 * SHARD_BYTES) == 1
