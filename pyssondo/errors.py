"""The exception types of pyssondo. ParameterError, AudioError and Int8Refused are ValueErrors
so callers may catch either; DiskFull is the OSError (ENOSPC) of a write that found no space."""
from __future__ import annotations

import errno
import os
from typing import Iterable, Optional

DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class ParameterError(ValueError):
    """A setting or argument is outside its valid range; the message names it and the range."""


class AudioError(ValueError):
    """An audio file cannot be used; the message names the file and the problem."""


class Int8Refused(ValueError):
    """Static int8 breaks this student: on no rung of the float32-front ladder do its
    embeddings agree with float32 enough; the message gives each rung's agreement. Nothing was
    written."""


class DiskFull(OSError):
    """No space left on the device (or quota) while writing ``path``. Raised by the atomic
    writer, which leaves whatever was at ``path`` before as it was."""

    def __init__(self, path: "os.PathLike[str] | str", code: int = errno.ENOSPC) -> None:
        super().__init__(code, os.strerror(code), os.fspath(path))

    def __str__(self) -> str:
        kept = "left as it was" if os.path.exists(self.filename) else "not written"
        return f"no space left on device for {self.filename} ({kept})"


def check_known_settings(settings: Iterable[str], known: Iterable[str], source: str) -> None:
    """ParameterError naming ``source``, the unknown names and the known ones when
    ``settings`` holds a name that ``known`` lacks (a typo in a config file, most often)."""
    known = sorted(known)
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ParameterError(f"{source}: unknown settings {unknown}; known: {known}")


def disk_full_message(e: OSError) -> Optional[str]:
    """One line for an OSError that means a full disk, naming the file when known (None for
    any other error)."""
    if e.errno not in DISK_FULL:
        return None
    if isinstance(e, DiskFull):
        return str(e)
    return f"no space left on device{f' for {e.filename}' if e.filename else ''}"


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message says which ``pip install`` adds it."""
