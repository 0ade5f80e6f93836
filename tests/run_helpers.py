"""Helpers for the tests of runs (distill, adapt, torchrun); not a test module."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

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


def kill_after_first_checkpoint(args: List[str], out: Path, env: Dict[str, str],
                                timeout_s: float = 240) -> Dict[str, Any]:
    """Runs ``python -m pyssondo *args``, SIGKILLs it as soon as a checkpoints/last.pt appears
    under ``out``, and returns that checkpoint."""
    proc = subprocess.Popen([sys.executable, "-m", "pyssondo", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout_s
    while not list(out.glob("*/checkpoints/last.pt")):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return checkpoint_weights(next(out.glob("*/checkpoints/last.pt")))[0]
