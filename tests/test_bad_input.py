"""Bad input and faults met through the CLI (issue 13), each run as a user runs it.

Every case runs ``python -m pyssondo`` in a subprocess and asserts the exit code, one error
line naming the file and the problem, no traceback, and (the ``box`` fixture, checked after
every test) that no file outside the working folder changed: a victim file, a victim folder
and a stray .npy sit next to the working folder, and their bytes and mtimes are compared.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
       "SSONDO_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
HELPERS = "tests.bad_input_helpers"
TINY = f"{HELPERS}:tiny"  # [B, T] at 16 kHz -> [B, 8]
WINDOW = "1"  # seconds: a 1.5 s note is two segments
DISTILL = ["--student", "mn01", "--student-sr", "16000", "--n-mels", "32", "--window", WINDOW,
           "--clusters", "2", "--batch-size", "4", "--val-fraction", "0.25", "--workers", "0",
           "--threads", "1", "--cache-mel", "off", "--views", "1"]


def ssondo(*args, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyssondo", *map(str, args)], cwd=cwd,
                          env=ENV, capture_output=True, text=True, timeout=timeout)


def assert_error(proc: subprocess.CompletedProcess, *needles: str, code: int = 1) -> str:
    """The run failed with ``code`` and exactly one error line holding every needle."""
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert str(needle) in errors[0], errors[0]
    return errors[0]


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def _snapshot(base: Path, skip: Path):
    out = {}
    for p in sorted(base.rglob("*")):
        if p == skip or skip in p.parents:
            continue
        st = p.lstat()
        data = p.read_bytes() if p.is_file() and not p.is_symlink() else None
        out[str(p.relative_to(base))] = (data, st.st_mtime_ns, st.st_size)
    return out


@pytest.fixture
def box(tmp_path, shared_data):
    """work/ (the working folder: audio/ with 4 notes, cache, runs) next to victims."""
    work = tmp_path / "work"
    audio = work / "audio"
    audio.mkdir(parents=True)
    for path in sorted((shared_data / "notes").glob("*.flac"))[:4]:
        shutil.copy2(path, audio / path.name)
    victim = tmp_path / "victim.txt"
    victim.write_text("do not touch\n")
    (tmp_path / "victim_dir").mkdir()
    (tmp_path / "victim_dir" / "keep.txt").write_text("keep\n")
    stray = tmp_path / "outside.npy"
    np.save(stray, np.ones((2, 8), dtype=np.float16))
    before = _snapshot(tmp_path, work)
    yield SimpleNamespace(base=tmp_path, work=work, audio=audio, victim=victim, stray=stray)
    assert _snapshot(tmp_path, work) == before, "a file outside the working folder changed"


def build(box, root: Path) -> Path:
    """A cache of box.audio under ``root``, built in this process; returns its folder."""
    from pyssondo.cache import build_cache

    return Path(build_cache(TINY, box.audio, root, window_s=float(WINDOW), progress=False))


def edit_manifest(folder: Path, edit) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def rename_shard(manifest, new: str, record=None) -> None:
    """Points every file of the first shard at ``new`` (and the shard record, optionally
    replaced by ``record``)."""
    old = sorted(manifest["shards"])[0]
    manifest["shards"][new] = record or manifest["shards"].pop(old)
    manifest["shards"].pop(old, None)
    for entry in manifest["files"].values():
        if entry["shard"] == old:
            entry["shard"] = new


def npy_record(path: Path):
    data = path.read_bytes()
    return {"rows": 2, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def bad_names(box, folder: Path):
    """Shard names that leave the cache folder: relative, absolute, with a separator."""
    return {"relative": os.path.relpath(box.victim, folder), "absolute": str(box.victim),
            "subfolder": "sub/shard-000000.npy", "dotdot": ".."}


# -------------------------------------------------------------------------------------------
# 1, 2: names read from a cache stay inside it
# -------------------------------------------------------------------------------------------
def test_safe_member_and_safe_key(tmp_path):
    from pyssondo.cache.layout import safe_key, safe_member

    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "inside.npy").write_bytes(b"x")
    (folder / "link.npy").symlink_to(folder / "inside.npy")
    (folder / "escape.npy").symlink_to(tmp_path)
    (folder / "loop.npy").symlink_to("loop.npy")
    src = folder / "manifest.json"
    for name in ("shard-000000.npy", "link.npy", "not-there-yet.npy", "..x", "a b"):
        assert safe_member(folder, name, src) == folder / name
    for name in ("", ".", "..", "../x", "a/b", "a\\b", "/etc/passwd", "x\0", 3, None,
                 "escape.npy", "loop.npy"):
        with pytest.raises(ValueError, match="manifest.json: refusing"):
            safe_member(folder, name, src)
    for key in ("a.wav", "sub/dir/a.flac", "..a/b..", "a b/c"):
        assert safe_key(key, src) == key
    for key in ("", "/abs.wav", "../a.wav", "a/../../b.wav", "a//b.wav", "./a.wav", "a\\b",
                "a/", 7):
        with pytest.raises(ValueError, match="manifest.json: refusing the unsafe file key"):
            safe_key(key, src)


@pytest.mark.parametrize("kind", ["relative", "absolute", "subfolder", "dotdot"])
def test_cache_refuses_a_manifest_shard_name_outside_the_folder(box, kind):
    root = box.work / "cache"
    folder = build(box, root)
    name = bad_names(box, folder)[kind]
    edit_manifest(folder, lambda m: rename_shard(m, name))  # a "bad shard" to delete
    proc = ssondo("cache", TINY, box.audio, "--out", root, "--window", WINDOW, "--views", "1",
                  cwd=box.work)
    assert_error(proc, str(folder / "manifest.json"), repr(name))


def test_cache_refuses_a_journal_shard_name_outside_the_folder(box):
    root = box.work / "cache"
    folder = build(box, root)
    name = os.path.relpath(box.victim, folder)
    line = {"shard": name, "record": {"rows": 1, "bytes": 1, "sha256": "0"}, "files": {},
            "t": time.time_ns()}
    (folder / "journal.jsonl").write_text(json.dumps(line) + "\n")
    proc = ssondo("cache", TINY, box.audio, "--out", root, "--window", WINDOW, "--views", "1",
                  cwd=box.work)
    assert_error(proc, str(folder / "journal.jsonl"), repr(name))


def test_cache_refuses_a_shard_that_is_a_symlink_out_of_the_folder(box):
    root = box.work / "cache"
    folder = build(box, root)
    shard = sorted(folder.glob("shard-*.npy"))[0]
    shard.unlink()
    shard.symlink_to(box.victim)
    proc = ssondo("cache", TINY, box.audio, "--out", root, "--window", WINDOW, "--views", "1",
                  cwd=box.work)
    assert_error(proc, str(folder / "manifest.json"), shard.name, "outside")


def test_distill_refuses_an_edited_cache_under_out(box):
    from pyssondo.cache.open import audio_cache_root

    out = box.work / "runs"
    folder = build(box, audio_cache_root(out / "cache", str(box.audio)))
    name = os.path.relpath(box.victim, folder)
    edit_manifest(folder, lambda m: rename_shard(m, name))
    proc = ssondo("distill", TINY, box.audio, *DISTILL, "--epochs", "1", "--out", out,
                  cwd=box.work)
    assert_error(proc, "manifest.json", repr(name))


@pytest.mark.parametrize("command", ["cluster", "info"])
def test_rows_outside_the_cache_are_not_read(box, command):
    root = box.work / "cache"
    folder = build(box, root)
    name = os.path.relpath(box.stray, folder)  # size and sha256 match: only the name is wrong
    edit_manifest(folder, lambda m: rename_shard(m, name, npy_record(box.stray)))
    args = ("cluster", folder, "-k", "2") if command == "cluster" else ("cache", "--info", folder)
    assert_error(ssondo(*args, cwd=box.work), "manifest.json", repr(name))


def test_a_file_key_leaving_the_audio_folder_is_refused(box):
    root = box.work / "cache"
    folder = build(box, root)

    def edit(m):
        key = sorted(m["files"])[0]
        m["files"]["../../victim.txt"] = m["files"].pop(key)

    edit_manifest(folder, edit)
    assert_error(ssondo("cache", "--info", folder, cwd=box.work), "manifest.json",
                 "'../../victim.txt'")


def test_a_cache_folder_linked_out_of_the_root_is_refused(box):
    root = box.work / "cache"
    folder = build(box, box.work / "elsewhere")
    root.mkdir()
    (root / folder.name).symlink_to(box.base / "victim_dir", target_is_directory=True)
    proc = ssondo("cache", TINY, box.audio, "--out", root, "--window", WINDOW, "--views", "1",
                  cwd=box.work)
    assert_error(proc, str(root), repr(folder.name), "outside")


# -------------------------------------------------------------------------------------------
# 3, 11: broken symlinks among the audio are skipped like corrupt files
# -------------------------------------------------------------------------------------------
def test_looping_and_dangling_symlinks_are_skipped_with_a_warning(box):
    (box.audio / "loop.wav").symlink_to("loop.wav")
    (box.audio / "gone.wav").symlink_to(box.audio / "missing.wav")
    proc = ssondo("cache", TINY, box.audio, "--out", box.work / "cache", "--window", WINDOW,
                  "--views", "1", cwd=box.work)
    assert_ok(proc)
    assert "loop.wav" in proc.stderr and "gone.wav" in proc.stderr
    assert "files        4" in proc.stdout and "skipped      2 files" in proc.stdout


# -------------------------------------------------------------------------------------------
# 5-8: models that fail or return the wrong thing
# -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model, problem", [
    ("raising", "RuntimeError: boom in forward"),
    ("nan", "NaN"),
    ("four_dims", "(1, 3, 8, 2)"),
    ("one_dim", "(1,)"),
])
def test_embed_checks_what_the_model_returns(box, model, problem):
    out = box.work / "emb.npy"
    proc = ssondo("embed", f"{HELPERS}:{model}", box.audio, "-o", out, cwd=box.work)
    first = sorted(box.audio.glob("*.flac"))[0]
    assert_error(proc, f"{HELPERS}:{model}", problem, first.name)
    assert not out.exists()


@pytest.fixture
def labeled(box, shared_data):
    """A labeled folder: 2 classes x 3 spoken digits."""
    data = box.work / "digits"
    for digit in ("0", "1"):
        (data / digit).mkdir(parents=True)
        for i in range(3):
            shutil.copy2(shared_data / "fsdd" / f"{digit}_george_{i}.wav", data / digit)
    return data


@pytest.mark.parametrize("model, problem", [("raising", "boom in forward"), ("nan", "NaN")])
def test_eval_checks_what_the_model_returns(box, labeled, model, problem):
    proc = ssondo("eval", f"{HELPERS}:{model}", labeled, "--folds", "3", "--no-cache",
                  cwd=box.work)
    assert_error(proc, f"{HELPERS}:{model}", problem, "george")


def test_a_factory_that_raises_is_one_line(box):
    spec = f"{HELPERS}:broken_factory"
    for proc in (ssondo("cache", spec, box.audio, "--out", box.work / "cache", cwd=box.work),
                 ssondo("distill", spec, box.audio, *DISTILL, "--out", box.work / "runs",
                        cwd=box.work)):
        assert_error(proc, spec, "the factory could not build its model")


# -------------------------------------------------------------------------------------------
# 9, 10, 13: settings
# -------------------------------------------------------------------------------------------
def test_zero_settings_are_rejected_up_front(box, labeled):
    assert_error(ssondo("eval", "logmel", labeled, "--folds", "0", cwd=box.work), "--folds 0")
    assert_error(ssondo("embed", TINY, box.audio, "-o", box.work / "e.npy", "--sr", "0",
                        cwd=box.work), "sample rate 0")
    assert_error(ssondo("embed", TINY, box.audio, "-o", box.work / "e.npy", "--batch", "0",
                        cwd=box.work), "--batch 0 must be >= 1")
    root = box.work / "cache"
    assert_error(ssondo("cache", TINY, box.audio, "--out", root, "--teacher-sr", "0",
                        cwd=box.work), "sample rate 0")
    assert not root.exists() or not list(root.iterdir())
    assert_error(ssondo("eval", "logmel", labeled, "--window", "0", cwd=box.work), "--window 0")
    assert not (box.work / "e.npy").exists()


def test_cluster_accepts_the_cache_root_distill_makes(box):
    root = box.work / "cache"
    folder = build(box, root)
    assert_ok(ssondo("cluster", root, "-k", "2", cwd=box.work))
    assert list(folder.glob("clusters-k2-*.npy")) and not list(root.glob("clusters*"))
    build(box, root)  # nothing changes for a second cache of another window:
    from pyssondo.cache import build_cache

    build_cache(TINY, box.audio, root, window_s=0.5, progress=False)
    assert_error(ssondo("cluster", root, "-k", "2", cwd=box.work), "holds 2 caches")


def test_a_string_rate_names_the_file(box):
    import torch

    path = box.work / "model.pt"
    torch.jit.script(torch.nn.Identity()).save(
        str(path), _extra_files={"ssondo.json": json.dumps({"sample_rate": "fast"})})
    proc = ssondo("embed", path, box.audio, "-o", box.work / "e.npy", cwd=box.work)
    assert_error(proc, str(path), "'fast'")


def test_embed_without_a_rate_suggests_its_own_option(box):
    import torch

    path = box.work / "model.pt"
    torch.jit.script(torch.nn.Identity()).save(str(path))
    line = assert_error(ssondo("embed", path, box.audio, "-o", box.work / "e.npy", cwd=box.work),
                        str(path), "--sr")
    assert "--teacher-sr" not in line


def test_a_failed_teacher_leaves_no_empty_cache_folder(box):
    root = box.work / "cache"
    proc = ssondo("cache", f"{HELPERS}:raising", box.audio, "--out", root, cwd=box.work)
    assert_error(proc, "boom in forward")
    assert not root.exists()


def test_two_folds_print_no_confidence_interval(box, labeled):
    proc = ssondo("eval", "logmel", labeled, "--folds", "2", "--no-cache", cwd=box.work)
    assert_ok(proc)
    assert "±" not in proc.stdout and "CI needs >= 3 folds" in proc.stdout


# -------------------------------------------------------------------------------------------
# 4: full disk (a 1 MB tmpfs, already full)
# -------------------------------------------------------------------------------------------
@pytest.fixture
def full_disk(box):
    mount = box.work / "full"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        done = None
    if done is None or done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        with open(mount / "filler", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True, timeout=30)


def test_full_disk_is_one_line(box, labeled, full_disk):
    cases = [
        ("cache", TINY, box.audio, "--out", full_disk / "cache", "--window", WINDOW),
        ("embed", TINY, box.audio, "-o", full_disk / "emb.npy"),
        ("eval", "logmel", labeled, "--folds", "3", "--no-cache", "--out", full_disk / "r.json"),
    ]
    for args in cases:
        assert_error(ssondo(*args, cwd=box.work), "no space left on", str(full_disk))
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


# -------------------------------------------------------------------------------------------
# A run folder: export onto a full disk, Ctrl-C, damaged files
# -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, shared_data):
    """A finished 1-epoch distill run of the tiny teacher (in this process)."""
    from pyssondo.frontend import MelConfig
    from pyssondo.train.config import DistillConfig
    from pyssondo.train.distill import distill

    base = tmp_path_factory.mktemp("run")
    (base / "audio").mkdir()
    for path in sorted((shared_data / "notes").glob("*.flac"))[:4]:
        shutil.copy2(path, base / "audio" / path.name)
    cfg = DistillConfig(teacher=TINY, audio=str(base / "audio"), student="mn01",
                        mel=MelConfig(sample_rate=16000, f_max=8000.0, n_mels=32),
                        window_s=1.0, clusters=2, batch_size=4, epochs=1, val_fraction=0.25,
                        workers=0, threads=1, out=str(base / "runs"), cache_mel="off", views=1)
    return distill(cfg, progress=False, export=False).run.path


def test_full_disk_before_the_first_checkpoint_claims_no_checkpoint(box, full_disk):
    cache = box.work / "cache"
    build(box, cache)
    proc = ssondo("distill", TINY, box.audio, *DISTILL, "--epochs", "1", "--cache-dir", cache,
                  "--out", full_disk / "runs", cwd=box.work)
    line = assert_error(proc, "no space left on", str(full_disk), "--resume auto")
    assert "intact" not in line


def test_export_onto_a_full_disk_is_one_line(box, run_dir, full_disk):
    proc = ssondo("export", run_dir, "-o", full_disk / "student.pt", cwd=box.work)
    assert_error(proc, "no space left on", str(full_disk))
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


def test_a_truncated_checkpoint_is_one_line(box, run_dir):
    run = box.work / "run"
    shutil.copytree(run_dir, run)
    for name in ("last.pt", "best.pt"):
        path = run / "checkpoints" / name
        path.write_bytes(path.read_bytes()[:1000])
    proc = ssondo("export", run, "-o", box.work / "s.pt", cwd=box.work)
    assert_error(proc, str(run / "checkpoints"), "not a loadable checkpoint")


def test_a_run_config_that_is_not_json_is_one_line(box, run_dir):
    run = box.work / "run"
    shutil.copytree(run_dir, run)
    (run / "config.json").write_text("{not json")
    proc = ssondo("distill", "--resume", run, "--out", box.work / "out", cwd=box.work)
    assert_error(proc, str(run / "config.json"), "not valid JSON")


def test_a_config_value_of_the_wrong_type_is_one_line(box):
    cfg = box.work / "cfg.toml"
    cfg.write_text('epochs = "ten"\n')
    proc = ssondo("distill", TINY, box.audio, "--config", cfg, "--out", box.work / "runs",
                  cwd=box.work)
    assert_error(proc, "epochs", "'ten'")


def test_an_audio_folder_that_is_a_file_is_one_line(box):
    text = box.work / "notes.txt"
    text.write_text("not audio\n")
    proc = ssondo("cache", TINY, text, "--out", box.work / "cache", cwd=box.work)
    assert_error(proc, str(text))


# -------------------------------------------------------------------------------------------
# 12: Ctrl-C prints the command that resumes
# -------------------------------------------------------------------------------------------
def test_ctrl_c_prints_the_command_that_resumes(box):
    # distill skips broken symlinks too (3, 11): it reaches its first checkpoint past them
    (box.audio / "loop.wav").symlink_to("loop.wav")
    (box.audio / "gone.wav").symlink_to(box.audio / "missing.wav")
    out = box.work / "runs"
    # As from a terminal: SIGINT at its default even when these tests run in the background
    # of a shell, which starts them with SIGINT ignored (inherited, and Python then keeps it).
    proc = subprocess.Popen([sys.executable, "-m", "pyssondo", "distill", TINY, str(box.audio),
                             *DISTILL, "--epochs", "50", "--save-every", "1", "--out", str(out)],
                            cwd=box.work, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while not list(out.glob("*/checkpoints/last.pt")):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    run = next(out.glob("*/checkpoints/last.pt")).parents[1]
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert f"ssondo distill --resume {run}" in err
    assert "loop.wav: skipped" in err and "gone.wav: skipped" in err


def test_a_broken_student_meta_names_the_file_and_field(box):
    import torch

    path = box.work / "student.pt"
    torch.jit.script(torch.nn.Identity()).save(str(path), _extra_files={"ssondo.json": json.dumps(
        {"format": "ssondo-student", "sample_rate": 16000, "embed_dim": -1})})
    proc = ssondo("embed", path, box.audio, "-o", box.work / "e.npy", cwd=box.work)
    assert_error(proc, str(path), "'embed_dim' is -1")
