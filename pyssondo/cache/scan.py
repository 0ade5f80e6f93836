"""Finding the audio files to cache and telling whether they changed.

A file's key is its path relative to the audio root, with '/' separators, so a cache moved
together with its audio (or read on another machine) still matches. Hidden folders (names
starting with '.') are not scanned.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, List, NamedTuple, Tuple, Union

from ..audio import AUDIO_EXTENSIONS

PathLike = Union[str, "os.PathLike[str]"]


class FileStat(NamedTuple):
    """Cheap change signal of a file: size in bytes and modification time in ns."""

    size: int
    mtime_ns: int


def scan_audio(source: Union[PathLike, Iterable[PathLike]],
               exclude: Iterable[Path] = ()) -> Tuple[Path, List[Tuple[str, Path]]]:
    """The audio root and its files as sorted ``(key, absolute path)`` pairs.

    Args:
        source: a folder (scanned recursively for :data:`AUDIO_EXTENSIONS`) or a list of
            files (the root is then their deepest common folder).
        exclude: folders to skip (e.g. a cache folder inside the audio folder).

    Raises:
        FileNotFoundError: a folder or listed file does not exist.
        ValueError: no audio file found.
    """
    excluded = {Path(p).resolve() for p in exclude}
    if isinstance(source, (str, os.PathLike)):
        root = Path(source).resolve()
        if not root.exists():
            raise FileNotFoundError(f"{source}: no such folder")
        if root.is_file():
            if not root.name.lower().endswith(AUDIO_EXTENSIONS):
                raise ValueError(f"{source}: not an audio folder, nor an audio file "
                                 f"(extensions: {' '.join(AUDIO_EXTENSIONS)})")
            paths = [root]
            root = root.parent
        else:
            paths = []
            for dirpath, dirnames, filenames in os.walk(root):
                here = Path(dirpath)
                dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                                     and (here / d).resolve() not in excluded)
                paths += [here / f for f in filenames
                          if f.lower().endswith(AUDIO_EXTENSIONS) and not f.startswith(".")]
    else:
        paths = [Path(p).resolve() for p in source]
        for p in paths:
            if not p.is_file():
                raise FileNotFoundError(f"{p}: no such file")
        root = Path(os.path.commonpath([str(p.parent) for p in paths])) if paths else Path.cwd()
    if not paths:
        raise ValueError(f"{source}: no audio files found (extensions: "
                         f"{' '.join(AUDIO_EXTENSIONS)})")
    files = sorted((p.relative_to(root).as_posix(), p) for p in paths)
    return root, files


def file_stat(path: PathLike) -> FileStat:
    st = os.stat(path)
    return FileStat(int(st.st_size), int(st.st_mtime_ns))


def content_hash(path: PathLike, chunk: int = 1 << 20) -> str:
    """blake2b (128-bit) hex digest of the file's bytes."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
