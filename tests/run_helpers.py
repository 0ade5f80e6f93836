"""Helpers for the tests of runs (distill, adapt, torchrun); not a test module."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

import torch


def checkpoint_weights(path: Path) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """(checkpoint, {"s.<name>": student tensor, "h.<name>": head tensor}), loaded with
    weights_only=True as users load them."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt, {**{f"s.{k}": v for k, v in ckpt["student"].items()},
                  **{f"h.{k}": v for k, v in ckpt["head"].items()}}


def write_other_teacher(path: Path) -> Path:
    """A TorchScript "teacher" at 16 kHz that is not the runs' teacher: [B, T] -> [B, 8]."""

    class Other(torch.nn.Module):
        sample_rate: int = 16000

        def forward(self, wav: torch.Tensor) -> torch.Tensor:
            return wav[:, :8]

    torch.jit.script(Other()).save(str(path))
    return path
