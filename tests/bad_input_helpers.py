"""Models for the bad-input tests, loaded as ``tests.bad_input_helpers:<name>``: a tiny
well-behaved teacher and models that misbehave on purpose. No tests here."""
from __future__ import annotations

import torch
from torch import nn


class _Model(nn.Module):
    """[B, T] at 16 kHz -> [B, 8]: the first 8 samples plus a learned offset (so the factory
    has weights), or a misbehaving output chosen by ``mode``."""

    sample_rate = 16000

    def __init__(self, mode: str = "plain") -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.linspace(0.0, 1.0, 8))
        self.mode = mode

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        out = wav[:, :8] * 10.0 + self.offset
        if self.mode == "raise":
            raise RuntimeError("boom in forward")
        if self.mode == "nan":
            return out * float("nan")
        if self.mode == "4d":
            return out[:, None, :, None].expand(-1, 3, -1, 2)
        if self.mode == "1d":
            return out[:, 0]
        return out


def tiny() -> nn.Module:
    return _Model()


def raising() -> nn.Module:
    return _Model("raise")


def nan() -> nn.Module:
    return _Model("nan")


def four_dims() -> nn.Module:
    return _Model("4d")


def one_dim() -> nn.Module:
    return _Model("1d")


def broken_factory() -> nn.Module:
    raise RuntimeError("the factory could not build its model")
