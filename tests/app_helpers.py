"""Helpers for the tests of the C++ apps in cli/ (test_app.py: libtorch, test_app_onnx.py:
onnxruntime); not a test module."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4  # relative to the largest |embedding|: an untrained student's are ~1e-6

# Both apps are skipped only without a C++ toolchain (CI has both and runs them).
needs_toolchain = pytest.mark.skipif(
    shutil.which("cmake") is None or shutil.which(os.environ.get("CXX", "c++")) is None,
    reason="the C++ app needs CMake and a C++ compiler")


def export_untrained(name: str, folder: Path, fmt: str = "pt") -> Path:
    """An (untrained, seeded) student exported with its front end at 32 kHz, 2 s windows, as
    TorchScript (``fmt="pt"``) or ONNX (``fmt="onnx"``)."""
    import torch

    from pyssondo.export import save_export, wrap
    from pyssondo.frontend import MelConfig
    from pyssondo.students import create_student

    torch.manual_seed(0)
    module = wrap(create_student(name), None, MelConfig(), window_s=2.0)
    out = folder / f"{name}.{fmt}"
    meta = {"teacher": "none (untrained test student)"}
    if fmt == "onnx":
        from pyssondo.onnx_export import save_onnx

        save_onnx(module, out, meta, measure=False)
    else:
        save_export(module, out, meta, measure=False)
    return out


def run_py_embed(model: Path, files, out: Path) -> np.ndarray:
    """`ssondo embed MODEL FILES -o OUT` (the worktree's package), the embeddings it wrote."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "pyssondo", "embed", str(model), *map(str, files),
                    "-o", str(out)], check=True, env=env, capture_output=True)
    return np.load(out)


def assert_same_embeddings(got: np.ndarray, want: np.ndarray) -> None:
    """Equal within TOLERANCE of the largest |want| (an absolute 1e-4 would accept anything
    from an untrained student), on rows that differ from each other by more than that."""
    assert got.shape == want.shape and got.dtype == np.float32, (got.shape, want.shape, got.dtype)
    scale = float(np.abs(want).max())
    assert scale > 0 and not np.allclose(want[0], want[1], rtol=0, atol=TOLERANCE * scale)
    assert float(np.abs(got - want).max()) <= TOLERANCE * scale


def bad_inputs(folder: Path, good_wav: Path) -> Dict[str, Path]:
    """{file name: path} of WAV inputs every app must refuse (missing, truncated, empty, not a
    WAV, no frames), written into ``folder``."""
    data = good_wav.read_bytes()
    (folder / "truncated_header.wav").write_bytes(data[:30])
    (folder / "empty.wav").write_bytes(b"")
    (folder / "not_wav.wav").write_bytes(b"OggS" + bytes(100))
    sf.write(str(folder / "zero_frames.wav"), np.zeros((0,), np.float32), 16000)
    names = ("missing.wav", "truncated_header.wav", "empty.wav", "not_wav.wav", "zero_frames.wav")
    return {name: folder / name for name in names}


def assert_fails_cleanly(r: subprocess.CompletedProcess, names: str, out: Path = None) -> None:
    """A refused run: exit status 1, one line on stderr naming ``names``, no output file."""
    assert r.returncode == 1, (names, r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and names in lines[0], (names, r.stderr)
    if out is not None:
        assert not out.exists() and not list(out.parent.glob(out.name + "*")), names
