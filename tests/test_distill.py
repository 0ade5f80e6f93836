"""`ssondo distill` end to end on real audio (CREPE tiny -> mn01), resume after a real kill,
checkpoints, bad input, and the data pipeline's pieces against references."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pyssondo import cli
from pyssondo.frontend import MelConfig
from pyssondo.train.config import DistillConfig
from pyssondo.train.engine import TrainingDiverged
from pyssondo.train.distill import distill
from tests.run_helpers import (checkpoint_weights, kill_after_first_checkpoint,
                                write_other_teacher)

ROOT = Path(__file__).resolve().parents[1]
ENV = {"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
       "SSONDO_PROGRESS": "0"}
MEL = MelConfig(sample_rate=16000, f_max=8000.0, n_mels=64)
N_TRAIN, N_HELD = 16, 6


@pytest.fixture(scope="module")
def work(tmp_path_factory, shared_data):
    """A CREPE tiny teacher file, 16 training clips copied from pool/ and 6 held-out clips."""
    from pyssondo.teachers import build_teacher_file

    root = tmp_path_factory.mktemp("distill")
    build_teacher_file("crepe-tiny", root / "crepe-tiny.pt")
    pool = sorted((shared_data / "pool").glob("*.flac"))
    (root / "audio").mkdir()
    for path in pool[:N_TRAIN]:
        shutil.copy(path, root / "audio" / path.name)
    return {"root": root, "teacher": root / "crepe-tiny.pt", "audio": root / "audio",
            "held": pool[N_TRAIN:N_TRAIN + N_HELD], "cache": root / "cache"}


def config(work, out, **kw) -> DistillConfig:
    """Small settings: 2 s windows, 16 kHz 64-band front end, mn01, batch 8, one thread, no
    teacher-side views (tests/test_views.py trains with them)."""
    base = dict(teacher=str(work["teacher"]), audio=str(work["audio"]), student="mn01",
                mel=MEL, window_s=2.0, clusters=4, batch_size=8, epochs=2, lr=3e-3,
                val_fraction=0.2, workers=0, threads=1, cache_dir=str(work["cache"]),
                out=str(out), log_every=1, views=1)
    base.update(kw)
    return DistillConfig(**base)


def cli_args(cfg: DistillConfig):
    return [cfg.teacher, cfg.audio, "--student", cfg.student, "--student-sr", "16000",
            "--n-mels", "64", "--window", str(cfg.window_s), "--clusters", str(cfg.clusters),
            "--batch-size", str(cfg.batch_size), "--epochs", str(cfg.epochs), "--lr", str(cfg.lr),
            "--val-fraction", str(cfg.val_fraction), "--workers", str(cfg.workers),
            "--threads", str(cfg.threads), "--cache-dir", cfg.cache_dir, "--out", cfg.out,
            "--log-every", "1", "--save-every", str(cfg.save_every), "--cache-mel", cfg.cache_mel,
            "--ema", str(cfg.ema), "--views", str(cfg.views)]




# -------------------------------------------------------------------------------------------
# End to end
# -------------------------------------------------------------------------------------------
def test_end_to_end_export_beats_untrained_student(work, tmp_path):
    from pyssondo.audio import load_audio
    from pyssondo.export import wrap
    from pyssondo.loading import load_model
    from pyssondo.train.model import build_model

    cfg = config(work, tmp_path / "runs", epochs=3)
    proc = subprocess.run([sys.executable, "-m", "pyssondo", "distill", *cli_args(cfg),
                           "--projected", "--loss", "cosine"], capture_output=True, text=True,
                          env=ENV)
    assert proc.returncode == 0, proc.stderr
    run = next((tmp_path / "runs").glob("*-mn01-crepe-tiny"))
    # Run folder: every resolved setting, a log per step and epoch, checkpoints, export.
    stored = json.loads((run / "config.json").read_text())
    assert set(DistillConfig().to_dict()) <= set(stored)
    assert stored["mel"]["sample_rate"] == 16000 and stored["epochs"] == 3
    assert stored["cache_mel"] == "auto" and stored["mel_cached"] is True  # a small set: cached
    assert stored["min_steps_per_epoch"] is None  # by student size: mn01 has 43k parameters
    # and no rounding noise: under MIN_PASS_SEGMENTS training segments
    assert stored["schedule"] == {"min_steps_per_epoch": 400, "max_passes": 8,
                                  "rounding_noise": 0.0}
    assert list(Path(stored["cache"]).glob("mel-*.npy"))
    epochs = [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())
              if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    for name in ("last.pt", "best.pt"):
        ckpt, _ = checkpoint_weights(run / "checkpoints" / name)  # weights_only=True
        assert ckpt["format"] == "ssondo-checkpoint"
    assert str(run / "student.pt") in proc.stdout

    # The export, in a fresh process, on held-out files.
    emb = tmp_path / "emb.npy"
    proc = subprocess.run([sys.executable, "-m", "pyssondo", "embed", str(run / "student.pt"),
                           *map(str, work["held"]), "-o", str(emb), "--threads", "1"],
                          capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr
    student = torch.from_numpy(np.load(emb))
    teacher = load_model(work["teacher"], role="teacher")
    torch.manual_seed(1)
    untrained = build_model(cfg, 256, frame_level=False)
    baseline = wrap(untrained.student, untrained.head, MEL, cfg.window_s)
    t_emb, u_emb = [], []
    with torch.no_grad():
        for path in work["held"]:
            wav = torch.from_numpy(load_audio(path, 16000)[0])[None]
            t_emb.append(teacher.module(wav).mean(1)[0])
            u_emb.append(baseline(wav)[0])
    t_emb, u_emb = torch.stack(t_emb), torch.stack(u_emb)
    cos = torch.nn.functional.cosine_similarity
    trained, before = cos(student, t_emb).mean().item(), cos(u_emb, t_emb).mean().item()
    assert student.shape == (N_HELD, 256)
    assert trained > before + 0.1, (trained, before)


# mn01, one of the hearables students (the other families share every code path here), and
# mn01 with weight averaging (the checkpoint holds the average and the trained weights).
@pytest.mark.parametrize("student,ema", [("mn01", 0.0), ("micronet-m0", 0.0), ("mn01", 0.9)])
def test_resume_after_kill_reaches_the_same_weights(work, tmp_path, one_thread, student, ema):
    # Uninterrupted, in this process, loading in the main process; log-mel per batch (the
    # end-to-end test above trains from the log-mel cache).
    cfg = config(work, tmp_path / "a", epochs=3, save_every=1, threads=1, cache_mel="off",
                 student=student, ema=ema)
    ref = distill(cfg, progress=False, export=False)
    ref_ckpt, want = checkpoint_weights(ref.run.last)
    # Killed with SIGKILL right after its first checkpoint (a worker process loads data),
    # then resumed with --resume auto.
    out_b = tmp_path / "b"
    args = cli_args(config(work, out_b, epochs=3, save_every=1, workers=1, cache_mel="off",
                           student=student, ema=ema))
    killed = kill_after_first_checkpoint(["distill", *args], out_b, ENV)
    total = ref.summary["steps"]
    assert killed["step"] < total  # the kill interrupted the run
    resumed = subprocess.run([sys.executable, "-m", "pyssondo", "distill", *args,
                              "--resume", "auto"], capture_output=True, text=True, env=ENV)
    assert resumed.returncode == 0, resumed.stderr
    assert len(list(out_b.iterdir())) == 1  # continued the same run folder
    assert next(out_b.glob("*/student.pt")).is_file()  # exported (checked) when it finished
    done, got = checkpoint_weights(next(out_b.glob("*/checkpoints/last.pt")))
    assert done["step"] == total
    assert got.keys() == want.keys()
    worst = max(float((got[k].double() - want[k].double()).abs().max()) for k in want)
    assert worst <= 1e-6, worst
    if ema:  # the average is what the checkpoint offers; the trained weights differ from it
        trained = done["trained"]["student"]
        assert max(float((trained[k] - done["student"][k]).abs().max())
                   for k in trained if trained[k].is_floating_point()) > 1e-4
        for k, v in ref_ckpt["trained"]["student"].items():
            assert float((trained[k].double() - v.double()).abs().max()) <= 1e-6, k


def test_compile_auto_tries_each_variant_on_the_same_loss_curve(work, tmp_path, one_thread,
                                                                  monkeypatch):
    """--compile auto with the length bar at 0 runs eager, channels-last and torch.compile on
    real training steps: the loss curve is eager's up to float rounding, and the log records
    the step times it chose by. The compile is dynamo + AOTAutograd without inductor's code
    generation (minutes of C++ compiling for mn01 on 2 cores): inductor itself is checked on a
    small network in tests/test_speed.py and timed on the students by bench/students.py."""
    import torch

    from pyssondo.train import speed

    monkeypatch.setattr(speed, "compile_network",
                        lambda net: torch.compile(net, backend="aot_eager"))
    trial = speed.WARMUP_STEPS + speed.TRIAL_STEPS + 2 + 3 * speed.ROUNDS
    steps = trial + 2
    kw = dict(epochs=1, samples_per_epoch=8 * steps, min_steps_per_epoch=0, cache_mel="on",
              lr=3e-4)  # small steps: the rounding differences grow slowly
    eager = distill(config(work, tmp_path / "off", compile="off", **kw), progress=False,
                    export=False)
    monkeypatch.setattr(speed, "MIN_AUTO_SECONDS", 0.0)
    tried = distill(config(work, tmp_path / "auto", compile="auto", **kw), progress=False,
                    export=False)

    def losses(result):
        return [r["loss"] for r in result.run.read_log() if r.get("kind") == "step"]

    want, got = losses(eager), losses(tried)
    assert len(got) == len(want) == steps
    worst = [abs(a - b) for a, b in zip(got, want)]
    assert np.allclose(got, want, rtol=1e-3, atol=1e-4), " ".join(f"{w:.1e}" for w in worst)
    record, = [r for r in tried.run.read_log() if r.get("kind") == "speed"]
    assert record["step"] == trial
    assert set(record["step_seconds"]) == set(speed.VARIANTS)
    assert record["choice"] in speed.VARIANTS
    assert not any(r.get("kind") == "speed" for r in eager.run.read_log())


# -------------------------------------------------------------------------------------------
# Failures
# -------------------------------------------------------------------------------------------
def test_full_disk_while_checkpointing_keeps_the_previous_one(work, tmp_path, monkeypatch,
                                                              capsys, one_thread):
    import pyssondo.train.checkpoint as ck
    from pyssondo.atomic import atomic_open

    writes = []

    def write_then_fill_disk(path, data):
        writes.append(path)
        if len(writes) <= 2:  # first epoch: last.pt and best.pt succeed
            return ck_real(path, data)
        with atomic_open(path) as f:
            f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    ck_real = ck.atomic_write_bytes
    monkeypatch.setattr(ck, "atomic_write_bytes", write_then_fill_disk)
    cfg = config(work, tmp_path / "runs", epochs=3)
    assert cli.main(["distill", *cli_args(cfg)]) == 1
    err = capsys.readouterr().err
    assert "no space left on device" in err.lower() and "intact" in err and "Traceback" not in err
    ckpts = next((tmp_path / "runs").glob("*/checkpoints"))
    ckpt, state = checkpoint_weights(ckpts / "last.pt")
    assert ckpt["epochs_done"] == 1 and all(torch.isfinite(v).all() for v in state.values()
                                            if v.is_floating_point())
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.pt", "last.pt"]  # no temp files


def test_nan_loss_stops_with_a_clear_message(work, tmp_path, monkeypatch, one_thread):
    import pyssondo.losses as losses

    real = losses.make_loss

    def nan_after_first_epoch(spec, **kw):
        loss = real(spec, **kw)
        calls = []

        class Poisoned(torch.nn.Module):
            level = loss.level

            def forward(self, s, t):
                calls.append(1)
                value = loss(s, t)
                return value * float("nan") if len(calls) > 3 else value

        return Poisoned()

    monkeypatch.setattr(losses, "make_loss", nan_after_first_epoch)
    cfg = config(work, tmp_path / "runs", epochs=3, samples_per_epoch=16)  # 2 steps per epoch
    with pytest.raises(TrainingDiverged, match="NaN/inf.*last good checkpoint is kept"):
        distill(cfg, progress=False)
    ckpt, state = checkpoint_weights(next((tmp_path / "runs").glob("*/checkpoints/last.pt")))
    assert ckpt["epochs_done"] == 1
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_cache_of_another_teacher_or_window_is_refused(work, tmp_path):
    from pyssondo.cache import build_cache

    cache = build_cache(work["teacher"], work["audio"], work["cache"], window_s=2.0,
                        progress=False)  # reused when another test made it
    other = write_other_teacher(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not match the run.*not other.pt"):
        distill(config(work, tmp_path / "r", teacher=str(other), cache_dir=str(cache)))
    with pytest.raises(ValueError, match="window 2 s, not --window 3 s"):
        distill(config(work, tmp_path / "r", window_s=3.0, cache_dir=str(cache)))


def test_student_head_dim_mismatch(work, tmp_path):
    with pytest.raises(ValueError, match="identity.*96.*256"):
        distill(config(work, tmp_path / "r", head="identity"))
    from pyssondo.students import create_student

    init = tmp_path / "mn02.pt"
    torch.save(create_student("mn02", n_mels=64).state_dict(), init)
    with pytest.raises(ValueError, match="--init weight .* has shape"):
        distill(config(work, tmp_path / "r", init=str(init)))


def test_init_starts_from_the_given_weights(work, tmp_path, one_thread):
    from pyssondo.students import create_student

    torch.manual_seed(123)
    weights = create_student("mn01", n_mels=64).state_dict()
    torch.save(weights, tmp_path / "init.pt")
    cfg = config(work, tmp_path / "r", init=str(tmp_path / "init.pt"), epochs=1, lr=1e-12,
                 samples_per_epoch=8, val_fraction=0.0)
    result = distill(cfg, progress=False, export=False)
    _, got = checkpoint_weights(result.run.last)
    convs = [k for k, v in weights.items() if k.endswith("weight") and v.dim() == 4]
    assert convs and all(torch.allclose(got[f"s.{k}"], weights[k], atol=1e-9) for k in convs)


@pytest.mark.parametrize("content", [None, b"RIFF not really a wav file"])
def test_empty_or_corrupt_audio_folder(work, tmp_path, content):
    audio = tmp_path / "audio"
    audio.mkdir()
    if content is not None:
        for i in range(3):
            (audio / f"bad{i}.wav").write_bytes(content * (i + 1))
    with pytest.raises(ValueError, match="audio"):
        distill(config(work, tmp_path / "r", audio=str(audio), cache_dir=str(tmp_path / "c")))


# -------------------------------------------------------------------------------------------
# Pieces against references
# -------------------------------------------------------------------------------------------
def test_mel_cache_holds_the_log_mel_of_each_segment(work, tmp_path):
    from pyssondo.cache import EmbeddingCache, build_cache
    from pyssondo.frontend import log_mel
    from pyssondo.train.data import SegmentAudio, mel_cache, mel_cache_bytes, mel_cache_path

    folder = build_cache(work["teacher"], work["audio"], work["cache"], window_s=2.0,
                         progress=False)
    cache = EmbeddingCache(folder)
    audio = SegmentAudio(cache.segments(), 16000, 2.0)
    path = mel_cache_path(tmp_path, audio, MEL, cache.ids)
    mel = mel_cache(path, audio, MEL, batch_size=5)
    assert mel.shape == (len(cache), 64, MEL.num_frames(32000)) and mel.dtype == np.float16
    assert path.stat().st_size - mel_cache_bytes(len(cache), audio, MEL) <= 4096  # + npy header
    for row in (0, len(cache) - 1):
        np.testing.assert_allclose(mel[row], log_mel(audio(row), MEL), atol=1e-2, rtol=1e-3)
    assert mel_cache(path, audio, MEL).filename == mel.filename  # reused
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    other = mel_cache_path(tmp_path, audio, MEL.replace(n_mels=32), cache.ids)
    assert other != path  # keyed by the front end


def test_mel_cache_auto_needs_a_quarter_of_the_free_disk(tmp_path):
    from pyssondo.train.data import want_mel_cache

    free = shutil.disk_usage(tmp_path).free
    path = tmp_path / "mel-0.npy"
    margin = free // 50  # other processes may write meanwhile
    assert want_mel_cache("auto", path, free // 4 - margin)
    assert not want_mel_cache("auto", path, free // 4 + margin)
    assert want_mel_cache("on", path, 2 * free) and not want_mel_cache("off", path, 1)
    path.write_bytes(b"")
    assert want_mel_cache("auto", path, 2 * free)  # an existing file is used


def test_gain_in_log_mel_equals_log_mel_of_scaled_audio():
    from pyssondo.frontend import log_mel
    from pyssondo.train.data import Augment, Collate

    rng = np.random.default_rng(0)
    wav = (0.1 * rng.standard_normal((3, 16000))).astype(np.float32)
    collate = Collate(MEL, Augment(gain_db=12.0), seed=5)
    keys = [(0, i, i) for i in range(3)]
    got, _ = collate.apply(log_mel(wav, MEL), np.zeros((3, 4), np.float32), keys)
    gains = [np.random.default_rng([5, 0, i]).uniform(-12, 12) for i in range(3)]
    want = log_mel(wav * (10 ** (np.array(gains) / 20))[:, None].astype(np.float32), MEL)
    np.testing.assert_allclose(got, want, atol=2e-3)


def test_augmentation_is_seeded_per_key_and_mixup_mixes_targets():
    from pyssondo.train.data import Augment, Collate

    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 64, 30)).astype(np.float32)
    y = np.eye(4, dtype=np.float32)
    collate = Collate(MEL, Augment(gain_db=6, time_mask=5, freq_mask=8, mixup=0.4), seed=0)
    keys = [(2, 8 + i, 10 + i) for i in range(4)]
    a, ya = collate.apply(x, y, keys)
    b, yb = collate.apply(x, y, keys)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_allclose(ya.sum(1), 1.0, atol=1e-6)   # convex mix of one-hot targets
    assert (ya.max(1) >= 0.5 - 1e-6).all()                   # each item keeps the larger share
    c, _ = collate.apply(x, y, [(3, *k[1:]) for k in keys])   # another epoch, other draws
    assert not np.array_equal(a, c)


def test_key_batches_resume_mid_epoch_continues_the_same_order():
    from pyssondo.sampling import BalancedSampler
    from pyssondo.train.data import KeyBatches

    labels = np.array([0, 0, 0, 1, 2, 2], dtype=np.int32)
    rows = np.arange(100, 106)
    sampler = BalancedSampler(labels, 8, seed=3)
    full = list(KeyBatches(sampler, rows, 4, 0, 3))
    resumed = BalancedSampler(labels, 8, seed=3)
    resumed.load_state_dict({**sampler.state_dict(), "epoch": 1, "position": 4})
    later = KeyBatches(resumed, rows, 4, 1, 3)
    assert len(full) == 6 and len(later) == 3 and list(later) == full[3:]
    assert all(k[2] in rows for batch in full for k in batch)


def test_each_audio_folder_gets_its_own_default_cache_root(tmp_path, monkeypatch):
    from pyssondo.cache.open import audio_cache_root

    (tmp_path / "a" / "audio").mkdir(parents=True)
    (tmp_path / "b" / "audio").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    first = audio_cache_root(Path("runs/cache"), "a/audio")
    assert first == audio_cache_root(Path("runs/cache"), str(tmp_path / "a" / "audio"))
    assert first.parent == Path("runs/cache") and first.name.startswith("audio-")
    assert first != audio_cache_root(Path("runs/cache"), "b/audio")  # same name, other folder


def test_validation_split_holds_out_whole_files():
    from pyssondo.cache import Segment
    from pyssondo.train.data import split_by_file

    segs = [Segment(f"f{i // 3}", Path(f"f{i // 3}"), 3 * (i % 3), 3, 16000) for i in range(30)]
    train, val = split_by_file(segs, 0.2, seed=0)
    assert len(train) + len(val) == 30 and len(val) == 6
    assert not {segs[i].file_key for i in train} & {segs[i].file_key for i in val}


def test_lr_schedule_warms_up_then_decays_to_the_final_scale():
    from pyssondo.train.engine import lr_lambda

    values = [lr_lambda(s, 100, 20, 0.01) for s in range(100)]
    assert values[0] == pytest.approx(1 / 20) and values[19] == pytest.approx(1.0)
    assert values[-1] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(values[19:], values[20:]))
    assert DistillConfig(epochs=40).resolved_warmup_epochs == 8
    assert DistillConfig(epochs=6).resolved_warmup_epochs == 1


def test_config_file_then_options(tmp_path):
    from pyssondo.commands.distill import resolve_config

    toml = tmp_path / "cfg.toml"
    toml.write_text('student = "mn04"\nepochs = 7\nlr = 0.001\n[mel]\nn_mels = 96\n')
    args = cli.build_parser().parse_args(["distill", "t.pt", "audio", "--config", str(toml),
                                          "--epochs", "9"])
    cfg = resolve_config(args)
    assert (cfg.student, cfg.epochs, cfg.lr, cfg.mel.n_mels) == ("mn04", 9, 0.001, 96)
    assert cfg.batch_size == DistillConfig().batch_size
    assert cfg.cache_mel == "auto"
    for given, want in ((["--cache-mel"], "on"), (["--cache-mel", "off"], "off")):
        args = cli.build_parser().parse_args(["distill", "t.pt", "audio", *given])
        assert resolve_config(args).cache_mel == want
    assert DistillConfig(cache_mel=True).cache_mel == "on"  # a config.json from before "auto"
    bad = tmp_path / "bad.json"
    bad.write_text('{"epoch": 3}')
    with pytest.raises(ValueError, match="unknown settings \\['epoch'\\]"):
        resolve_config(cli.build_parser().parse_args(["distill", "--config", str(bad)]))


def test_checkpoint_round_trip_restores_rng(tmp_path):
    import random

    from pyssondo.train.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint

    save_checkpoint(tmp_path / "c.pt", {"rng": capture_rng(), "config": "{}"})
    want = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(load_checkpoint(tmp_path / "c.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2]
    (tmp_path / "x.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="x.pt: not a loadable checkpoint"):
        load_checkpoint(tmp_path / "x.pt")


def test_epochs_of_small_data_get_more_passes_by_student_size():
    cfg = DistillConfig()  # one pass below 1000 segments; above, by student size:
    big, small = 516_128, 43_384  # mn04: 200 steps of 64 at least, 4 passes at most; mn01: 400, 8
    assert (cfg.min_steps_per_epoch, cfg.max_passes, cfg.batch_size) == (None, None, 64)
    assert cfg.resolved_schedule(big) == (200, 4) and cfg.resolved_schedule(small) == (400, 8)
    assert cfg.resolved_schedule(99_999) == (400, 8) and cfg.resolved_schedule(100_000) == (200, 4)
    for n, want_big, want_small in [(999, 999, 999), (1000, 4000, 8000), (2800, 11200, 22400),
                                    (6400, 12800, 25600), (50000, 50000, 50000)]:
        assert cfg.resolved_samples_per_epoch(n, big) == want_big, n
        assert cfg.resolved_samples_per_epoch(n, small) == want_small, n
    # A setting given wins over the rule, for either size.
    assert cfg.replace(max_passes=4).resolved_samples_per_epoch(2800, small) == 11200
    assert cfg.replace(min_steps_per_epoch=400, max_passes=8).resolved_schedule(big) == (400, 8)
    assert cfg.replace(samples_per_epoch=100).resolved_samples_per_epoch(50000, small) == 100
    assert cfg.replace(min_steps_per_epoch=0).resolved_samples_per_epoch(2800, small) == 2800
    stored = json.loads(cfg.replace(min_steps_per_epoch=400).to_json())
    del stored["max_passes"]  # a run stored before the setting had 4 passes at most
    assert DistillConfig.from_stored(stored).resolved_samples_per_epoch(2800, small) == 2800 * 4
    del stored["min_steps_per_epoch"], stored["views"]  # a run from before these defaults
    old = DistillConfig.from_stored(stored)
    assert (old.min_steps_per_epoch, old.views) == (0, 1)
    assert DistillConfig.from_stored(json.loads(cfg.to_json())).resolved_schedule(small) == (400, 8)
