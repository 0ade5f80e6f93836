"""Shared fixtures: the real audio in ../shared/data and a CREPE tiny teacher file."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """../shared/data relative to the project root, or $SSONDO_DATA."""
    path = Path(os.environ.get("SSONDO_DATA", ROOT.parent / "shared" / "data")).resolve()
    if not (path / "fsdd").is_dir():
        pytest.fail(f"test audio not found at {path} (set SSONDO_DATA to the shared/data folder)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return data_dir()


@pytest.fixture
def one_thread():
    """torch on one thread during the test (runs with threads=1 set it too), then as before."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
