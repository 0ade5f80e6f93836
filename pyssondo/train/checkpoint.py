"""Training checkpoints: everything needed to continue a run bit for bit, loadable safely.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so it loads with
``torch.load(weights_only=True)`` (no pickle of arbitrary objects): model and head weights,
optimizer, scheduler and grad-scaler states, the RNG states of torch, numpy and Python (as
tensors and lists), the sampler position (epoch, samples consumed), the resolved config as a
JSON string, and counters. It is serialised to memory first and written with
:func:`pyssondo.atomic.atomic_write_bytes`, so a kill or a full disk while writing leaves the
previous checkpoint intact.
"""
from __future__ import annotations

import hashlib
import io
import os
import random
from pathlib import Path
from typing import Any, Dict, Union

import numpy as np
import torch

from ..atomic import atomic_write_bytes

FORMAT = "ssondo-checkpoint"
VERSION = 1

PathLike = Union[str, "os.PathLike[str]"]


def capture_rng() -> Dict[str, Any]:
    """The RNG states of torch (CPU and CUDA), numpy and Python, as tensors and lists."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
    }


def restore_rng(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))


def save_checkpoint(path: PathLike, state: Dict[str, Any]) -> None:
    """Writes ``state`` (plus format tags) to ``path`` atomically.

    Raises:
        OSError: the write failed (e.g. ENOSPC); ``path`` still holds the previous checkpoint.
    """
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **state}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Loads a checkpoint with ``weights_only=True`` onto the CPU.

    Raises:
        FileNotFoundError: no such file. ValueError: not a ssondo checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: not a loadable checkpoint ({line})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not a ssondo training checkpoint (no '{FORMAT}' tag)")
    if state.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint version {state.get('version')} is not supported "
                         f"(this ssondo reads version {VERSION})")
    return state


def load_student_weights(spec: PathLike) -> Dict[str, torch.Tensor]:
    """Student weights from a run folder (its last checkpoint), a checkpoint, or a state dict
    file saved with ``torch.save`` (loaded with ``weights_only=True``).

    Raises:
        FileNotFoundError: nothing at ``spec``. ValueError: the file holds no student weights.
    """
    from .rundir import RunDir

    path = Path(spec)
    if path.is_dir():
        path = RunDir(path).last
    if not path.is_file():
        raise FileNotFoundError(f"{spec}: student weights not found (a run folder or checkpoint)")
    try:
        state = load_checkpoint(path)["student"]
    except ValueError:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            raise ValueError(f"{spec}: not a ssondo checkpoint or a state dict file") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{spec}: expected a ssondo checkpoint or a student state dict")
    return state


def weights_fingerprint(state: Dict[str, torch.Tensor]) -> str:
    """sha256 hex of a state dict: every tensor's name, dtype, shape and bytes, in key order.

    Equal weights give equal fingerprints whatever file or device they came from; a run records
    the fingerprint of the student weights it started from (``init_fingerprint`` in its
    ``config.json``), which ``ssondo merge`` compares with its BASE.
    """
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
