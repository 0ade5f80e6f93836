"""The C++ app in cli/: built with CMake against the libtorch inside the torch wheel, it must give
the same embeddings as `ssondo embed` and fail cleanly on bad input.

Skipped only when no C++ compiler or CMake is present (CI has both and runs it).
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.app_helpers import (ROOT, assert_fails_cleanly, assert_same_embeddings, bad_inputs,
                               export_untrained, needs_toolchain, run_py_embed)

pytestmark = [pytest.mark.app, needs_toolchain]


@pytest.fixture(scope="session")
def app(tmp_path_factory) -> Path:
    """Builds ssondo-embed exactly as README documents it."""
    import torch

    build = tmp_path_factory.mktemp("app-build")
    subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), "-DSSONDO_BUILD_APP=ON",
                    f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"],
                   check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build), "-j2"], check=True, capture_output=True)
    exe = build / "ssondo-embed"
    assert exe.is_file()
    return exe


@pytest.fixture(scope="session")
def student_file(tmp_path_factory) -> Path:
    """An (untrained, seeded) mn01 student exported with its front end at 32 kHz."""
    return export_untrained("mn01", tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="session")
def wav_files(tmp_path_factory, shared_data) -> list:
    """Real FSDD WAVs (8 kHz, 16-bit) plus files in the other encodings the app reads."""
    folder = tmp_path_factory.mktemp("wavs")
    files = [shared_data / "fsdd" / name for name in ("3_jackson_0.wav", "7_theo_12.wav")]
    notes = sorted((shared_data / "notes").glob("*.flac"))[:1]
    audio, sr = sf.read(str(notes[0]), dtype="float32")
    stereo = np.stack([audio, 0.5 * audio[::-1]], axis=1)
    for subtype in ("PCM_16", "PCM_24", "FLOAT"):
        path = folder / f"note_{subtype}.wav"
        sf.write(str(path), stereo, sr, subtype=subtype)
        files.append(path)
    long = folder / "long_44k.wav"  # 5 s at 44.1 kHz: resampled, split into 2 s segments
    t = np.arange(5 * 44100) / 44100
    sf.write(str(long), (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 44100, subtype="PCM_16")
    files.append(long)
    return files


def test_app_matches_ssondo_embed(app, student_file, wav_files, tmp_path):
    expected = run_py_embed(student_file, wav_files, tmp_path / "py.npy")
    out = tmp_path / "app.npy"
    r = subprocess.run([str(app), str(student_file), *map(str, wav_files), "--threads", "2",
                        "--out", str(out), "-v"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = np.load(out)
    assert got.shape == expected.shape == (len(wav_files), expected.shape[1])
    assert_same_embeddings(got, expected)
    assert r.stderr.count(" ms (") == len(wav_files)  # -v: one line per file as it is done
    # 5 one-window files and the 3-window one in calls of 3 windows (the last one padded):
    # the windows of different files share calls, and pool as `ssondo embed` does.
    r = subprocess.run([str(app), str(student_file), *map(str, wav_files), "--batch", "3",
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert_same_embeddings(np.load(out), expected)
    r = subprocess.run([str(app), str(student_file), str(wav_files[0]), "--batch", "0"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "--batch 0: expected a positive integer" in r.stderr, r.stderr
    # The app's default is `ssondo embed`'s.
    from pyssondo.window_batches import DEFAULT_BATCH

    r = subprocess.run([str(app), "--help"], capture_output=True, text=True, check=True)
    assert f"(default {DEFAULT_BATCH})" in r.stdout, r.stdout


def assert_app_equals_embed(app: Path, model: Path, wav_files: list, tmp_path: Path) -> None:
    """The app at 1 thread and `ssondo embed` give the same embeddings of a float WAV note and
    the 5 s 44.1 kHz file (3 windows)."""
    files = wav_files[-2:]
    expected = run_py_embed(model, files, tmp_path / "py.npy")
    out = tmp_path / "app.npy"
    r = subprocess.run([str(app), str(model), *map(str, files), "--threads", "1",
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert_same_embeddings(np.load(out), expected)


@pytest.mark.parametrize("name", ["micronet-m0", "mobilevitv2-050"])
def test_app_runs_the_hearables_students(app, wav_files, tmp_path, name):
    """The C++ app runs the new families' exports (Dynamic Shift-Max's roll, separable
    attention, GroupNorm, padding to the patch size) and equals `ssondo embed`."""
    model = export_untrained(name, tmp_path)
    assert_app_equals_embed(app, model, wav_files, tmp_path)


def test_app_runs_an_int8_export(app, wav_files, shared_data, tmp_path):
    """libtorch in C++ loads an int8 export (its compactly stored weights are rebuilt by the
    file's own ``__setstate__``) and equals `ssondo embed`."""
    import torch

    from pyssondo.calibration import from_audio_dir
    from pyssondo.export import save_export, wrap
    from pyssondo.frontend import MelConfig
    from pyssondo.students import create_student

    torch.manual_seed(0)
    module = wrap(create_student("mn01"), None, MelConfig(), window_s=2.0)
    calibration = from_audio_dir(shared_data / "notes", 32000, module.window, n=4)
    model = tmp_path / "int8.pt"
    save_export(module, model, {}, int8=calibration, measure=False, min_agreement=0.0)
    assert_app_equals_embed(app, model, wav_files, tmp_path)


def test_app_prints_csv_rows_in_input_order(app, student_file, wav_files, tmp_path):
    expected = run_py_embed(student_file, wav_files[:2], tmp_path / "py.npy")
    r = subprocess.run([str(app), str(student_file), *map(str, wav_files[:2]), "--csv"],
                       capture_output=True, text=True, check=True)
    rows = [line.split(",") for line in r.stdout.strip().splitlines()]
    assert [row[0] for row in rows] == [str(f) for f in wav_files[:2]]
    assert_same_embeddings(np.array([[float(v) for v in row[1:]] for row in rows], np.float32),
                           expected)


def test_bad_audio_fails_with_one_line_and_no_output(app, student_file, wav_files, tmp_path):
    for name, bad in bad_inputs(tmp_path, wav_files[0]).items():
        out = tmp_path / f"out_{name}.npy"
        r = subprocess.run([str(app), str(student_file), str(wav_files[0]), str(bad), "--out", str(out)],
                           capture_output=True, text=True)
        assert_fails_cleanly(r, name, out)


def test_a_model_that_is_not_a_ssondo_export_is_refused(app, wav_files, tmp_path):
    import torch

    def saved(name: str, meta=None) -> Path:
        path = tmp_path / name
        extra = {} if meta is None else {"ssondo.json": meta}
        torch.jit.save(torch.jit.script(torch.nn.Identity()), str(path), _extra_files=extra)
        return path

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip file at all")
    for model, problem in ((saved("plain.pt"), "not a ssondo export"),
                           (garbage, "not a TorchScript file"),
                           (tmp_path / "absent.pt", "cannot open"),
                           (saved("no_window.pt", '{"sample_rate": 32000}'), "bad ssondo.json"),
                           (saved("no_segments.pt", '{"sample_rate": 32000, '
                                                    '"segment_samples": 64000}'),
                            "no segments method")):
        r = subprocess.run([str(app), str(model), str(wav_files[0])], capture_output=True, text=True)
        assert r.returncode != 0
        assert str(model) in r.stderr and problem in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
