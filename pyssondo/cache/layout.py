"""On-disk layout of an embedding cache folder (../shared/DESIGN.md, "Embedding cache").

A cache root holds one folder per key ``<teacher sha256[:16]>-sr<rate>-w<W>-h<H>-<dtype>``,
with ``-v<K>-<view settings hash[:8]>`` appended when segments have K > 1 views::

    meta.json       teacher (fingerprint, name, source, rate, its ssondo.json), window_s,
                    hop_s, window samples at the teacher rate, dtype, level ("clip"/"frame"),
                    dim, frames, targets ([{name, dim}] in the order they are
                    concatenated on each row's last axis), audio_root; with views, "views":
                    the ViewConfig and its hash
    manifest.json   {"files": {key: FileEntry}, "shards": {name: {rows, bytes, sha256}},
                     "skipped": {key: reason}, "next_shard": int}
    shard-000000.npy ...  rows [n, D] (clip teachers) or [n, F, D] (frame teachers)

    journal.jsonl   shards committed since the manifest was last rewritten, one JSON line
                    each: {"shard": name, "record": {...}, "files": {key: FileEntry},
                    "t": time in ns}
    journal-r<R>.jsonl, shard-<n>-r<R>.npy   the same, written by rank R of a rank-sharded
                    build (each rank computes its share of the files; see builder.py)

A file's segments are consecutive rows of one shard; with K views, its n segments' view 0,
then view 1, ... (row ``row + v * n + i`` is view v of segment i), and the entry's "partners"
``[K-1][n]`` names each view's mixing partner ``[file key, start, rate, size, mtime_ns]``
(or null). A shard is written with
:mod:`pyssondo.atomic` (temporary name, fsync, rename) and only then announced by an fsynced
journal line, so a kill at any moment leaves a consistent cache: at most an unreferenced
shard, or a torn last journal line, both ignored. Appending a line per shard keeps the cost of
a commit independent of the cache size; the builder folds the journals into manifest.json
(atomically) at the start and end of a run. The cache's contents = manifest + journals, whose
lines are applied in the order they were written (their "t"), so a file recomputed by one
rank replaces an older entry from another rank's journal.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..atomic import atomic_write_bytes, atomic_write_text

META = "meta.json"
MANIFEST = "manifest.json"
JOURNAL = "journal.jsonl"
SHARD_PATTERN = r"shard-\d{6}(-r\d+)?\.npy"
FORMAT_VERSION = 1
DTYPES = ("float16", "float32")


def _num(x: float) -> str:
    return f"{x:g}".replace(".", "p")


def cache_key(fingerprint: str, teacher_sr: int, window_s: float, hop_s: float,
              dtype: str, views: int = 1, views_hash: str = "") -> str:
    """Folder name of a cache: two teachers, rates, windows, dtypes or view settings never
    share one (a cache without views, K = 1, keeps the plain name)."""
    key = f"{fingerprint[:16]}-sr{teacher_sr}-w{_num(window_s)}-h{_num(hop_s)}-{dtype}"
    return key if views == 1 else f"{key}-v{views}-{views_hash[:8]}"


def shard_name(index: int, rank: Optional[int] = None) -> str:
    """Shard ``index`` of a single-process build, or of ``rank`` in a sharded one (ranks
    count from the same index, so their names differ by the rank alone)."""
    return f"shard-{index:06d}.npy" if rank is None else f"shard-{index:06d}-r{rank}.npy"


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


def journal_name(rank: Optional[int] = None) -> str:
    """The journal of a single-process build (``rank`` None) or of one rank of a sharded one."""
    return JOURNAL if rank is None else f"journal-r{rank}.jsonl"


def journals(folder: Path) -> List[Path]:
    """Every journal in ``folder``: the single-process one and those of ranks."""
    return sorted(folder.glob("journal*.jsonl"))


def safe_member(folder: Path, name: Any, source: Path) -> Path:
    """``folder / name`` for a file name read from ``source`` (a manifest, journal, meta or
    config file, which may have been edited by anyone who can write the folder).

    The name must be a plain file name: a non-empty string without '/', '\\' or NUL, not
    '.' or '..', not absolute; and the path, with symlinks followed, must lie inside
    ``folder``. So nothing outside the folder is ever read, written or removed through it.

    Raises:
        ValueError: one line naming ``source`` and the name; the folder is refused.
    """
    if (not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\0")
            or os.path.isabs(name)):
        raise ValueError(f"{source}: refusing the unsafe file name {name!r} (a plain name "
                         f"inside {folder} is expected); delete the folder to rebuild it")
    path = folder / name
    try:
        real = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        real = None
    if real is None or folder.resolve() not in real.parents:
        raise ValueError(f"{source}: refusing {name!r}, which leads outside {folder} "
                         f"({'a symlink loop' if real is None else f'to {real}'}); delete the "
                         f"folder to rebuild it")
    return path


def read_meta(folder: Path) -> Optional[Dict[str, Any]]:
    """meta.json of the cache ``folder`` (None when absent); never read through a symlink
    that leads out of the folder."""
    return read_json(safe_member(folder, META, folder / META))


def safe_key(key: Any, source: Path) -> str:
    """``key``, a file key read from ``source``: a relative '/'-separated path whose parts
    are plain names (no '..', '.', empty part, '\\' or NUL; not absolute), so that
    ``audio_root / key`` stays under the audio root. Symlinks under the audio root are the
    user's own and are not followed here.

    Raises:
        ValueError: one line naming ``source`` and the key.
    """
    if (not isinstance(key, str) or not key or key.startswith("/") or os.path.isabs(key)
            or any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in key.split("/"))):
        raise ValueError(f"{source}: refusing the unsafe file key {key!r} (a path relative to "
                         f"the audio folder is expected); delete the cache folder to rebuild it")
    return key


def check_manifest(folder: Path, manifest: Dict[str, Any], source: Path) -> Dict[str, Any]:
    """Validates every name in ``manifest`` (read from ``source``): shard names with
    :func:`safe_member`, file keys with :func:`safe_key`, and that each file's shard is
    listed. Returns the manifest.

    Raises:
        ValueError: one line naming ``source`` and the first bad name or entry.
    """
    try:
        shards, files = manifest["shards"], manifest["files"]
        if not isinstance(shards, dict) or not isinstance(files, dict):
            raise TypeError("'shards' and 'files' must be objects")
        for name, record in shards.items():
            safe_member(folder, name, source)
            int(record["rows"]), int(record["bytes"]), str(record["sha256"])
        for key, entry in files.items():
            safe_key(key, source)
            if entry["shard"] not in shards:
                raise ValueError(f"{source}: file {key!r} names shard {entry['shard']!r}, "
                                 f"which the manifest does not list; delete the cache folder "
                                 f"to rebuild it")
            int(entry["row"]), len(entry["starts"]), len(entry["lengths"])
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{source}: not a valid ssondo cache manifest ({type(e).__name__}: "
                         f"{e}); delete the cache folder to rebuild it") from None
    return manifest


def read_manifest(folder: Path) -> Optional[Dict[str, Any]]:
    """manifest.json with the journals' complete lines applied in the order they were written;
    None when neither exists. Every name in them is validated (:func:`check_manifest`)."""
    source = safe_member(folder, MANIFEST, folder / MANIFEST)
    manifest = read_json(source)
    entries = []
    for path in journals(folder):
        safe_member(folder, path.name, path)
        lines = path.read_bytes().split(b"\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                if i >= len(lines) - 2:  # torn last line of a killed run: never committed
                    break
                raise ValueError(f"{path}: line {i + 1} is not valid JSON; delete the cache "
                                 f"folder to rebuild") from None
            if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict):
                raise ValueError(f"{path}: line {i + 1} is not a journal entry; delete the "
                                 f"cache folder to rebuild")
            check_manifest(folder, {"shards": {entry.get("shard"): entry.get("record")},
                                    "files": entry["files"]}, path)
            if not re.fullmatch(SHARD_PATTERN, entry["shard"]):
                raise ValueError(f"{path}: line {i + 1} names shard {entry['shard']!r}, not "
                                 f"one this cache writes; delete the cache folder to rebuild")
            entries.append((int(entry.get("t", 0)), str(path), i, entry))
    if manifest is not None:
        check_manifest(folder, manifest, source)
    if not entries:
        return manifest
    manifest = manifest or empty_manifest()
    for _, _, _, entry in sorted(entries, key=lambda e: e[:3]):
        manifest["shards"][entry["shard"]] = entry["record"]
        manifest["files"].update(entry["files"])
        manifest["next_shard"] = max(int(manifest["next_shard"]),
                                     int(entry["shard"][6:12]) + 1)
    return manifest


def append_journal(folder: Path, shard: str, record: Dict[str, Any],
                   files: Dict[str, Any], rank: Optional[int] = None) -> None:
    """Announces a durable shard: one JSON line appended to the journal (of ``rank`` in a
    sharded build), then fsync."""
    line = json.dumps({"shard": shard, "record": record, "files": files,
                       "t": time.time_ns()}, sort_keys=True)
    with open(open_in_folder(folder, journal_name(rank)), "ab") as f:
        f.write(line.encode("utf-8") + b"\n")
        f.flush()
        os.fsync(f.fileno())


def open_in_folder(folder: Path, name: str) -> int:
    """A file descriptor of ``folder / name`` opened for appending (created if needed), never
    through a symlink (O_NOFOLLOW where the platform has it)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        return os.open(folder / name, flags, 0o666)
    except OSError as e:
        if e.errno == getattr(errno, "ELOOP", None):
            raise ValueError(f"{folder / name}: is a symlink; refusing to write through it "
                             f"(delete it)") from None
        raise


def dump_json(obj: Dict[str, Any]) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)


def write_json(path: Path, obj: Dict[str, Any]) -> None:
    write_text(path, dump_json(obj))


def write_text(path: Path, text: str) -> None:
    """Atomic write (temporary name, fsync, rename)."""
    atomic_write_text(path, text)


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
               shard: str, row: int, starts: List[int], lengths: List[int],
               partners: Optional[List[List[Any]]] = None) -> Dict[str, Any]:
    """Manifest record of one audio file: change signals, where its rows are, its segments.

    ``starts``/``lengths`` are in samples at the file's own rate ``sample_rate``; ``frames``
    is the file's length in samples. Rows ``row .. row + K * len(starts) - 1`` of ``shard``
    (K views). ``partners``: the mixing partners of views 1 .. K-1 (kept only when any).
    """
    entry = {"size": size, "mtime_ns": mtime_ns, "hash": content, "sample_rate": sample_rate,
             "frames": frames, "shard": shard, "row": row, "starts": starts, "lengths": lengths}
    if partners and any(p for view in partners for p in view):
        entry["partners"] = partners
    return entry


def partners(entry: Dict[str, Any]) -> List[List[Any]]:
    """The mixing partners of the views of ``entry``: ``[file key, start, rate, size,
    mtime_ns]`` each (see :mod:`.builder`)."""
    return [p for view in entry.get("partners", ()) for p in view if p]
