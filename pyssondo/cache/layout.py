"""On-disk layout of an embedding cache folder (../shared/DESIGN.md, "Embedding cache").

A cache root holds one folder per key ``<teacher sha256[:16]>-sr<rate>-w<W>-h<H>-<dtype>``::

    meta.json       teacher (fingerprint, name, source, rate, its ssondo.json), window_s,
                    hop_s, window samples at the teacher rate, dtype, level ("clip"/"frame"),
                    dim, frames, audio_root
    manifest.json   {"files": {key: FileEntry}, "shards": {name: {rows, bytes, sha256}},
                     "skipped": {key: reason}, "next_shard": int}
    shard-000000.npy ...  rows [n, D] (clip teachers) or [n, F, D] (frame teachers)

A file's segments are consecutive rows of one shard. Shards and the manifest are written with
:mod:`pyssondo.atomic` (temporary name, fsync, rename), a shard before the manifest that
names it, so a kill at any moment leaves a consistent cache (at most an unreferenced shard).
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..atomic import atomic_write_bytes, atomic_write_text

META = "meta.json"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1
DTYPES = ("float16", "float32")


def _num(x: float) -> str:
    return f"{x:g}".replace(".", "p")


def cache_key(fingerprint: str, teacher_sr: int, window_s: float, hop_s: float,
              dtype: str) -> str:
    """Folder name of a cache: two teachers, rates, windows or dtypes never share one."""
    return f"{fingerprint[:16]}-sr{teacher_sr}-w{_num(window_s)}-h{_num(hop_s)}-{dtype}"


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.npy"


def empty_manifest() -> Dict[str, Any]:
    return {"version": FORMAT_VERSION, "files": {}, "shards": {}, "skipped": {}, "next_shard": 0}


def read_json(path: Path) -> Optional[Dict[str, Any]]:
    """The JSON object in ``path``, or None when the file does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        raise ValueError(f"{path}: not valid JSON; delete the cache folder to rebuild") from None
    if not isinstance(obj, dict) or obj.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: not an ssondo cache file of format version {FORMAT_VERSION}")
    return obj


def write_json(path: Path, obj: Dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True))


def write_shard(path: Path, rows: np.ndarray) -> Dict[str, Any]:
    """Writes ``rows`` as .npy atomically; returns its manifest record {rows, bytes, sha256}."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(rows), allow_pickle=False)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return {"rows": int(rows.shape[0]), "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def shard_problem(path: Path, record: Dict[str, Any], full: bool) -> Optional[str]:
    """Why the shard at ``path`` does not match its manifest record (None when it does).

    Checks existence and size; with ``full`` also the sha256 of its bytes.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if size != record["bytes"]:
        return f"size {size} != {record['bytes']} bytes"
    if full:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        if h.hexdigest() != record["sha256"]:
            return "sha256 mismatch"
    return None


def file_entry(size: int, mtime_ns: int, content: str, sample_rate: int, frames: int,
               shard: str, row: int, starts: List[int], lengths: List[int]) -> Dict[str, Any]:
    """Manifest record of one audio file: change signals, where its rows are, its segments.

    ``starts``/``lengths`` are in samples at the file's own rate ``sample_rate``; ``frames``
    is the file's length in samples. Rows ``row .. row + len(starts) - 1`` of ``shard``.
    """
    return {"size": size, "mtime_ns": mtime_ns, "hash": content, "sample_rate": sample_rate,
            "frames": frames, "shard": shard, "row": row, "starts": starts, "lengths": lengths}
