"""ssondo eval: labeled data, splits, probes, metrics, the log-mel baseline, reports and CLI.

Real audio comes from ../shared/data (subsets, to keep the file under a minute on 2 cores).
Models are tiny TorchScript modules defined here: a log power spectrum (torch.stft) averaged
per frame through a fixed random projection, with ``sample_rate`` as an attribute. Tests of
the ``logmel`` baseline need the C++ front end (``pyssondo.frontend.log_mel``, ``_core.resample``)
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
        from pyssondo.frontend import log_mel

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


def small_cfg(**kw) -> EvalConfig:
    """Protocol with 3 folds and a shorter weight-decay grid: same code paths, less time."""
    probe = ProbeConfig(weight_decays=(0.0, 1e-2), max_epochs=100)
    return EvalConfig(**{"folds": 3, "probe": probe, **kw})


def write_wav(path: Path, seconds: float = 0.5, sr: int = 16000, freq: float = 440.0,
              seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    noise = np.random.default_rng(seed).standard_normal(t.size)
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * noise).astype(np.float32), sr)
    return path


def result_of(report, model, task, probe):
    return next(r for r in report["results"]
                if (r["model"], r["task"], r["probe"]) == (model, task, probe))


# ---------------------------------------------------------------- metrics against references

def test_metrics_match_sklearn_and_scipy():
    from scipy.stats import t as student_t
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 200)
    pred = np.where(rng.random(200) < 0.6, y, rng.integers(0, 6, 200))  # class 5 never true
    assert accuracy(y, pred) == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert macro_f1(y, pred) == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    ym = (rng.random((100, 4)) < 0.3).astype(np.float32)
    scores = np.round(ym + rng.standard_normal((100, 4)), 1)  # rounded: many tied scores
    for c in range(4):
        assert average_precision(ym[:, c], scores[:, c]) == pytest.approx(
            average_precision_score(ym[:, c], scores[:, c]), abs=1e-12)
    assert mean_average_precision(ym, scores) == pytest.approx(
        average_precision_score(ym, scores, average="macro"), abs=1e-12)
    for df in list(range(1, 40)) + [60, 100, 1000]:
        assert t_quantile_975(df) == pytest.approx(student_t.ppf(0.975, df), abs=3e-6)
    vals = [0.8, 0.85, 0.9, 0.75, 0.82]
    sem = np.std(vals, ddof=1) / np.sqrt(5)
    assert mean_ci95(vals)["ci95"] == pytest.approx(student_t.ppf(0.975, 4) * sem, rel=1e-6)
    assert mean_ci95([0.5]) == {"mean": 0.5, "ci95": None}


# ---------------------------------------------------------------- protocol

def _check_partition(splits, n):
    seen_test = np.concatenate([s.test for s in splits])
    for s in splits:
        parts = [set(s.train.tolist()), set(s.val.tolist()), set(s.test.tolist())]
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
        assert len(s.train) and len(s.val) and len(s.test)
        assert parts[0] | parts[1] | parts[2] == set(range(n)) or len(splits) == 1
    return seen_test


def test_kfold_disjoint_covering_stratified_and_seeded():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 7, 301)
    splits = make_splits(y, k=5, seed=3)
    test = _check_partition(splits, len(y))
    assert sorted(test.tolist()) == list(range(len(y)))  # each file in exactly one test fold
    for c in range(7):  # stratified: per class, fold sizes differ by at most one
        sizes = [np.sum(y[s.test] == c) for s in splits]
        assert max(sizes) - min(sizes) <= 1
    fold = stratified_folds(y, 5, seed=3)
    assert np.bincount(fold).max() - np.bincount(fold).min() <= 1
    again = make_splits(y, k=5, seed=3)
    other = make_splits(y, k=5, seed=4)
    assert all(np.array_equal(a.test, b.test) and np.array_equal(a.val, b.val)
               for a, b in zip(splits, again))
    assert not all(np.array_equal(a.test, b.test) for a, b in zip(splits, other))


def test_fixed_split_and_fixed_folds_from_a_column():
    y = np.arange(40) % 4
    values = ["test" if i % 10 == 0 else "train" for i in range(40)]
    (only,) = make_splits(y, folds=values, seed=0)
    assert only.test.tolist() == [i for i in range(40) if i % 10 == 0]
    assert not set(only.val.tolist()) & set(only.test.tolist())
    assert set(only.train.tolist()) | set(only.val.tolist()) == {i for i in range(40) if i % 10}
    with_valid = ["valid" if i % 10 == 1 else v for i, v in enumerate(values)]
    (s,) = make_splits(y, folds=with_valid, seed=0)
    assert s.val.tolist() == [i for i in range(40) if i % 10 == 1]
    folds = [str(1 + i % 3) for i in range(40)]
    splits = make_splits(y, folds=folds, seed=0)
    assert [s.name for s in splits] == ["1", "2", "3"]
    assert sorted(_check_partition(splits, 40).tolist()) == list(range(40))
    for s in splits:
        assert {folds[i] for i in s.test} == {s.name}


def test_duplicated_audio_across_classes_is_split_by_file(tmp_path):
    """Every clip is copied under a second name in another class: each copy is its own file,
    both are kept, and no file (path) is in two parts of a round."""
    root = tmp_path / "dups"
    for i in range(6):
        src = write_wav(root / "a" / f"clip{i}.wav", freq=200 + 50 * i, seed=i)
        (root / "b").mkdir(exist_ok=True)
        shutil.copy(src, root / "b" / f"copy_of_clip{i}.wav")
    data = data_mod.load_labeled(root)
    assert len(data) == 12 and data.classes == ("a", "b")
    keys = data.keys
    splits = make_splits(data.label_indices(), k=3, seed=0)
    test_keys = [keys[i] for s in splits for i in s.test]
    assert sorted(test_keys) == sorted(keys)
    for s in splits:
        train = {keys[i] for i in np.r_[s.train, s.val]}
        assert not train & {keys[i] for i in s.test}


def test_random_labels_stay_at_chance_and_signal_is_found():
    """A leak of test rows into training or selection would let 1-NN score 100% on random
    labels; fitted honestly both probes stay near chance (25%), and find a real signal."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((160, 16)).astype(np.float32)
    y = rng.integers(0, 4, 160)
    cfg = ProbeConfig(weight_decays=(0.0, 1e-2), max_epochs=100)
    for signal in (False, True):
        xs = x + 3.0 * np.eye(16, dtype=np.float32)[y] if signal else x
        for probe in ("knn", "linear"):
            accs = []
            for r, s in enumerate(make_splits(y, k=4, seed=0)):
                scores, _ = fit_predict(probe, xs[s.train], y[s.train], xs[s.val], y[s.val],
                                        xs[s.test], multilabel=False, n_classes=4, seed=r, cfg=cfg)
                accs.append(accuracy(y[s.test], scores.argmax(1)))
            if signal:
                assert np.mean(accs) > 0.9, (probe, accs)
            else:
                assert np.mean(accs) < 0.45, (probe, accs)


def test_multilabel_probes_score_map():
    rng = np.random.default_rng(0)
    y = (rng.random((150, 5)) < 0.3).astype(np.float32)
    y[y.sum(1) == 0, 0] = 1
    x = (2 * y @ rng.standard_normal((5, 12)) + rng.standard_normal((150, 12))).astype(np.float32)
    (s,) = make_splits(y, folds=["test" if i % 5 == 0 else "train" for i in range(150)])
    for probe in ("knn", "linear"):
        scores, chosen = fit_predict(probe, x[s.train], y[s.train], x[s.val], y[s.val], x[s.test],
                                     multilabel=True, n_classes=5, seed=0,
                                     cfg=ProbeConfig(weight_decays=(0.0, 1e-2), max_epochs=100))
        assert mean_average_precision(y[s.test], scores) > 0.6, (probe, chosen)


# ---------------------------------------------------------------- labeled data and bad input

def test_bad_rows_are_skipped_and_counted(tmp_path):
    root = tmp_path / "set"
    for i in range(3):
        write_wav(root / f"a{i}.wav", freq=300, seed=i)
        write_wav(root / f"b{i}.wav", freq=900, seed=10 + i)
    write_wav(root / "lonely.wav")
    write_wav(tmp_path / "outside.wav")
    (root / "notaudio.wav").write_text("this is not audio")
    rows = [("a0.wav", "A"), ("a1.wav", "A"), ("a2.wav", "A"), ("b0.wav", "B"), ("b1.wav", "B"),
            ("b2.wav", "B"), ("../outside.wav", "A"), (str(tmp_path / "outside.wav"), "B"),
            ("missing.wav", "A"), ("notaudio.wav", "B"), ("lonely.wav", "C"), ("a1.wav", "B"),
            ("sub/../a0.wav", "")]
    (root / "labels.csv").write_text("path,label\n" + "\n".join(f"{p},{lab}" for p, lab in rows))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = data_mod.load_labeled(root / "labels.csv")
    assert data.skipped == {"escapes_folder": 2, "missing": 1, "unreadable": 1, "duplicate": 1,
                            "no_label": 1, "single_example_class": 1}
    assert len(caught) >= 7 and any("not inside" in str(w.message) for w in caught)
    assert data.keys == ["a0.wav", "a1.wav", "a2.wav", "b0.wav", "b1.wav", "b2.wav"]
    assert data.classes == ("A", "B") and data.skipped_classes == ("C",)


def test_file_failing_to_decode_is_dropped_for_every_model(tmp_path, model16k):
    root = tmp_path / "set"
    for i in range(4):
        write_wav(root / "low" / f"{i}.wav", freq=300 + 10 * i, seed=i)
        write_wav(root / "high" / f"{i}.wav", freq=3000 + 10 * i, seed=10 + i)
    bad = root / "high" / "3.flac"
    sf.write(bad, sf.read(root / "high" / "3.wav")[0], 16000)
    (root / "high" / "3.wav").unlink()
    bad.write_bytes(bad.read_bytes()[:-2000])  # header intact, stream cut short
    data = data_mod.load_labeled(root)
    assert len(data) == 8  # the header check passes ...
    with pytest.warns(UserWarning, match="3.flac"):
        result = evaluate([open_embedder(str(model16k))], [data], small_cfg(folds=2, probes=("knn",)),
                          progress=False)
    (task,) = result.report["tasks"]
    assert task["files"] == 7 and task["skipped"] == {"unreadable": 1}  # ... decoding does not


def test_nothing_usable_is_an_error(tmp_path):
    root = tmp_path / "set"
    write_wav(root / "a.wav")
    write_wav(root / "b.wav")
    (root / "labels.csv").write_text("path,label\na.wav,x\nb.wav,y\nc.wav,x\n../d.wav,y\n")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="nothing usable"):
        data_mod.load_labeled(root / "labels.csv")
    (root / "empty.csv").write_text("path,label\nmissing.wav,x\n")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no usable rows"):
        data_mod.load_labeled(root / "empty.csv")
    with pytest.raises(ValueError, match="no label column 'nope'"):
        data_mod.load_labeled(root / "labels.csv", label_column="nope")


def test_csv_columns_multilabel_and_folds(tmp_path):
    root = tmp_path / "set"
    lines = ["fold,path,tags,other"]
    for i in range(8):
        write_wav(root / "clips" / f"{i}.wav", seed=i)
        tags = ["x;y", "y", "x", "z;x"][i % 4]
        lines.append(f"{1 + i % 2},clips/{i}.wav,{tags},ignored")
    (root / "meta.csv").write_text("\n".join(lines) + "\n")
    data = data_mod.load_labeled(root / "meta.csv", label_column="tags")
    assert data.multilabel and data.classes == ("x", "y", "z")
    assert data.split_column == "fold" and data.folds()[:2] == ["1", "2"]
    assert data.label_matrix()[0].tolist() == [1.0, 1.0, 0.0]
    assert data.name == "set-tags"
    assert data_mod.load_labeled(root / "meta.csv", label_column="tags",
                                 use_fold_column=False).split_column is None
    default = data_mod.load_labeled(root / "meta.csv")  # first column besides path and fold
    assert default.label_column == "tags" and default.split_column == "fold"


# ---------------------------------------------------------------- real audio, models, cache

def test_fsdd_digits_and_speakers_8k_model_reproducible_and_cached(fsdd_csv, model8k, tmp_path):
    tasks = [data_mod.load_labeled(fsdd_csv),
             data_mod.load_labeled(fsdd_csv, label_column="speaker")]
    assert [t.name for t in tasks] == [f"{fsdd_csv.parent.name}-digit",
                                       f"{fsdd_csv.parent.name}-speaker"]
    model = open_embedder(str(model8k))
    assert model.sample_rate == 8000 and model.params == param_count()
    cache = tmp_path / "cache"
    first = evaluate([model], tasks, small_cfg(), cache_dir=cache, progress=False).report
    assert len(list(cache.glob("*.npz"))) == 1  # one file list, one model: computed once
    again = open_embedder(str(model8k))
    again.embed_batch = None  # the second run must read the cache, never the model
    second = evaluate([again], tasks, small_cfg(), cache_dir=cache, progress=False).report
    assert json.dumps(first) == json.dumps(second)  # same seed, cached embeddings: identical
    for task, chance, floor in ((tasks[0].name, 0.1, 0.5), (tasks[1].name, 1 / 3, 0.85)):
        for probe in ("linear", "knn"):
            acc = result_of(first, "spec8k", task, probe)["metrics"]["accuracy"]
            assert acc["mean"] > floor, (task, probe, acc, chance)
            assert len(acc["folds"]) == 3 and acc["ci95"] is not None
    other_seed = evaluate([model], tasks[:1], small_cfg(seed=1, probes=("knn",)), cache_dir=cache,
                          progress=False).report
    assert other_seed["results"][0]["metrics"] != first["results"][1]["metrics"]


def test_notes_pitch_class_16k_model_long_files_are_windowed(notes_csv, model16k):
    data = data_mod.load_labeled(notes_csv, label_column="pitch_class")
    assert len(data) == 384 and len(data.classes) == 12
    report = evaluate([open_embedder(str(model16k))], [data], small_cfg(), progress=False).report
    for probe in ("linear", "knn"):
        acc = result_of(report, "spec16k", data.name, probe)["metrics"]["accuracy"]["mean"]
        assert acc > 0.3, (probe, acc)  # chance 1/12
    # Windows: a 1.5 s note cut into 0.5 s windows is the mean of the windows' embeddings.
    model = open_embedder(str(model16k))
    path = data.examples[0].path
    (whole,), _ = compute_embeddings(model, [path], window_s=10.0, progress=False)
    (windowed,), _ = compute_embeddings(model, [path], window_s=0.5, progress=False)
    wav, _ = sf.read(path, dtype="float32")
    parts = [model.embed_batch(wav[None, i:i + 8000])[0] for i in range(0, len(wav), 8000)]
    np.testing.assert_allclose(windowed, np.mean(parts, axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(whole, model.embed_batch(wav[None])[0], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- the log-mel baseline

def reference_logmel_mean(wav: np.ndarray) -> np.ndarray:
    """Independent time-averaged log-mel at 32 kHz with S-SONDO's settings: numpy framing
    (no centering), periodic Hann, |rfft|^2, librosa's Slaney mel filterbank, log(x + 1e-3)."""
    import librosa

    n_fft, hop = 1024, 512
    wav = np.asarray(wav, dtype=np.float64)
    if len(wav) < n_fft:
        wav = np.pad(wav, (0, n_fft - len(wav)))
    frames = 1 + (len(wav) - n_fft) // hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    power = np.abs(np.fft.rfft(wav[idx] * window, axis=1)) ** 2
    fb = librosa.filters.mel(sr=32000, n_fft=n_fft, n_mels=128, fmin=50.0, fmax=16000.0,
                             htk=False, norm="slaney")
    return np.log(power @ fb.T.astype(np.float64) + 1e-3).mean(axis=0)


def test_logmel_baseline_never_loads_a_model(monkeypatch):
    import pyssondo.loading

    def refuse(*a, **k):
        raise AssertionError("the logmel baseline must not go through load_model")

    monkeypatch.setattr(pyssondo.loading, "load_model", refuse)
    model = open_embedder(LOGMEL)
    assert (model.sample_rate, model.params, model.name) == (32000, 0, "logmel")
    with pytest.raises(ValueError, match="32000"):
        open_embedder(LOGMEL, 16000)


@needs_frontend
def test_logmel_baseline_matches_independent_numpy_librosa(shared_data, tmp_path):
    # At 32 kHz no resampling is involved: float32 C++ vs float64 numpy, tolerance 2e-3 (log).
    rng = np.random.default_rng(0)
    t = np.arange(int(1.3 * 32000)) / 32000
    wav = (0.4 * np.sin(2 * np.pi * (200 + 3000 * t) * t) + 0.05 * rng.standard_normal(t.size))
    path = tmp_path / "chirp.wav"
    sf.write(path, wav.astype(np.float32), 32000, subtype="FLOAT")
    (ours,), ok = compute_embeddings(open_embedder(LOGMEL), [path], progress=False)
    assert ok.all() and ours.shape == (128,)
    np.testing.assert_allclose(ours, reference_logmel_mean(wav.astype(np.float32)), atol=2e-3)
    # A real 8 kHz digit: the reference resamples with librosa (soxr), ours with the C++
    # resampler; the resamplers differ slightly near 4 kHz: tolerance 0.05 per band, 0.01 mean.
    import librosa

    fsdd_file = shared_data / "fsdd" / "3_jackson_5.wav"
    (ours,), _ = compute_embeddings(open_embedder(LOGMEL), [fsdd_file], progress=False)
    x, sr = sf.read(fsdd_file, dtype="float32")
    ref = reference_logmel_mean(librosa.resample(x, orig_sr=sr, target_sr=32000, res_type="soxr_hq"))
    assert np.abs(ours - ref).max() < 0.05 and np.abs(ours - ref).mean() < 0.01


@needs_frontend
def test_logmel_beats_chance_on_fsdd_digits_and_note_pitch_class(fsdd_csv, notes_csv):
    tasks = [data_mod.load_labeled(fsdd_csv),
             data_mod.load_labeled(notes_csv, label_column="pitch_class")]
    with pytest.warns(UserWarning, match="240 file.* at 8000 Hz are upsampled to 32000 Hz"):
        report = evaluate([open_embedder(LOGMEL)], tasks, small_cfg(), progress=False).report
    for task, floor in ((tasks[0].name, 0.7), (tasks[1].name, 0.5)):  # chance 0.10 / 0.083
        for probe in ("linear", "knn"):
            acc = result_of(report, LOGMEL, task, probe)["metrics"]["accuracy"]["mean"]
            assert acc > floor, (task, probe, acc)


# ---------------------------------------------------------------- command line

def small_notes(notes_csv: Path, tmp_path: Path, n_programs: int = 6) -> Path:
    """A CSV next to notes_csv with only the first programs (fewer files for CLI runs)."""
    rows = list(csv.DictReader(open(notes_csv)))
    programs = sorted({r["path"][:4] for r in rows})[:n_programs]
    out = notes_csv.parent / f"small{n_programs}.csv"
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(r for r in rows if r["path"][:4] in programs)
    return out


def test_pca_matches_sklearn():
    from sklearn.decomposition import PCA

    from pyssondo.evaluation.plots import pca_2d
    from pyssondo.evaluation.probes import standardise

    x = np.random.default_rng(0).standard_normal((50, 6)) * np.arange(1, 7)
    ours = pca_2d(x)
    ref = PCA(2).fit_transform(standardise(x)[0].astype(np.float64))
    np.testing.assert_allclose(np.abs(ours), np.abs(ref), atol=1e-4)


def test_positional_items_sorted_into_models_and_data(tmp_path, model16k, notes_csv):
    from pyssondo.commands.eval import split_items

    models, data = split_items([LOGMEL, str(model16k), str(notes_csv), str(notes_csv.parent),
                                "pyssondo.teachers:crepe_tiny"], ["extra.csv"])
    assert models == [LOGMEL, str(model16k), "pyssondo.teachers:crepe_tiny"]
    assert data == ["extra.csv", str(notes_csv), str(notes_csv.parent)]
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        split_items(["nope.pt"], [])


def test_cli_end_to_end_json_markdown_plot(tmp_path, model16k, notes_csv):
    data = small_notes(notes_csv, tmp_path)
    out, md, png = tmp_path / "r.json", tmp_path / "r.md", tmp_path / "p.png"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SSONDO_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "pyssondo", "eval", str(model16k), str(data),
           "--label-column", "pitch_class", "--task", "pitch", "--folds", "3", "--probe", "knn",
           "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--md", str(md),
           "--plot", str(png), "--projection", "pca"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "spec16k" in proc.stdout and "pitch knn acc" in proc.stdout
    report = json.loads(out.read_text())
    assert [t["name"] for t in report["tasks"]] == ["pitch"]
    assert report["tasks"][0]["files"] == 144 and report["tasks"][0]["classes"] == 12
    assert report["models"][0]["params"] == param_count()
    acc = result_of(report, "spec16k", "pitch", "knn")["metrics"]["accuracy"]
    assert f"{100 * acc['mean']:.1f} ± {100 * acc['ci95']:.1f}" in md.read_text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run(cmd[:6] + ["--label-column", "nope", "--no-cache"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "no label column 'nope'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_cli_compare_percentages_match_the_json(tmp_path, notes_csv):
    from pyssondo.cli import main

    data = small_notes(notes_csv, tmp_path)
    teacher = save_model(tmp_path / "teacher.pt", 16000, n_fft=512, dim=64, seed=1)
    student = save_model(tmp_path / "student.pt", 16000, n_fft=128, dim=8, seed=2)
    out, md = tmp_path / "c.json", tmp_path / "c.md"
    assert main(["eval", "--compare", str(student), "--teacher", str(teacher), str(data),
                 str(data), "--label-column", "pitch_class", "--label-column", "family",
                 "--folds", "3", "--probe", "knn", "--no-cache", "--out", str(out),
                 "--md", str(md)]) == 0
    report = json.loads(out.read_text())
    c = report["compare"]
    assert (c["student"], c["teacher"]) == ("student", "teacher")
    tasks = [t["name"] for t in report["tasks"]]
    assert tasks == [f"{data.parent.name}-pitch_class", f"{data.parent.name}-family"]
    s = [result_of(report, "student", t, "knn")["metrics"]["accuracy"]["mean"] for t in tasks]
    t_ = [result_of(report, "teacher", t, "knn")["metrics"]["accuracy"]["mean"] for t in tasks]
    for task, si, ti in zip(tasks, s, t_):
        assert c["probes"]["knn"]["tasks"][task]["percent"] == pytest.approx(100 * si / ti)
    avg = c["probes"]["knn"]["average"]
    assert avg["percent"] == pytest.approx(100 * np.mean(s) / np.mean(t_))
    sp, tp = param_count(n_fft=128, dim=8), param_count(n_fft=512, dim=64)
    assert c["params"] == {"student": sp, "teacher": tp, "size_ratio": pytest.approx(tp / sp)}
    assert f"{avg['percent']:.1f}%" in md.read_text()
    assert compare(report, "student", "teacher") == c


def test_multilabel_csv_with_fold_column_end_to_end(tmp_path, model16k):
    """Chords of up to three tones; the labels are the tones present; folds from the CSV."""
    from pyssondo.evaluation.report import format_markdown

    root, freqs = tmp_path / "chords", {"lo": 300.0, "mid": 1200.0, "hi": 4000.0}
    rng = np.random.default_rng(0)
    lines = ["path,label,fold"]
    combos = [("lo",), ("mid",), ("hi",), ("lo", "mid"), ("mid", "hi"), ("lo", "hi"),
              ("lo", "mid", "hi")]
    t = np.arange(8000) / 16000
    for i in range(28):
        tags = combos[i % len(combos)]
        wav = sum(0.2 * np.sin(2 * np.pi * freqs[g] * (1 + 0.02 * rng.standard_normal()) * t)
                  for g in tags) + 0.02 * rng.standard_normal(t.size)
        root.mkdir(exist_ok=True)
        sf.write(root / f"c{i}.wav", wav.astype(np.float32), 16000)
        lines.append(f"c{i}.wav,{';'.join(tags)},{1 + i % 2}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    data = data_mod.load_labeled(root / "labels.csv")
    assert data.multilabel and data.split_column == "fold"
    report = evaluate([open_embedder(str(model16k))], [data], small_cfg(), progress=False).report
    assert [r["name"] for r in report["tasks"][0]["rounds"]] == ["1", "2"]
    for probe in ("linear", "knn"):
        m = result_of(report, "spec16k", data.name, probe)
        assert m["primary"] == "mAP" and m["metrics"]["mAP"]["mean"] > 0.8, (probe, m)
    assert "chords-label linear mAP" in format_markdown(report)
