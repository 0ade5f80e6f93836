"""Atomic file writes: write to a temporary name in the same folder, flush, fsync, rename.

A reader (or a run resumed after a kill) sees either the old file or the complete new one,
never a torn one. Used for cache shards and manifests, checkpoints, exports and reports.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator, Union

from .errors import DISK_FULL, DiskFull

PathLike = Union[str, "os.PathLike[str]"]


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which would race with threads.
_UMASK = _read_umask()


def fsync_dir(path: PathLike) -> None:
    """Makes a rename inside ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb") -> Iterator[IO]:
    """Opens a temporary file next to ``path``; on clean exit it is fsynced and renamed to
    ``path``. On any exception the temporary file is removed and ``path`` is untouched; a
    full disk raises :class:`pyssondo.errors.DiskFull` naming ``path``."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open: mode must be 'wb' or 'w', got {mode!r}")
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        if e.errno in DISK_FULL:
            raise DiskFull(target, e.errno) from None
        raise
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in DISK_FULL and not isinstance(e, DiskFull):
            raise DiskFull(target, e.errno) from None
        raise
    fsync_dir(target.parent)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))
