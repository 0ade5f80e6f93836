"""Opening the teacher cache a job needs: root naming, reuse, building, matching.

One function, :func:`open_cache`, serves ``ssondo cache``, ``distill`` and ``adapt``: given a
cache root (or one cache folder), the teacher and the audio folder, it returns the cache folder
that holds the teacher's embeddings of that audio, building or updating it first when the root
is not itself a cache folder. The default root of an audio folder is
``OUT/cache/<folder name>-<8 hex of its absolute path>`` (:func:`default_cache_root`), so runs on
the same audio share a cache and runs on other folders never replace each other's rows (a cache
folder is keyed by teacher, rate, window, hop and dtype only: DESIGN.md).
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Callable, Optional, Union

from . import layout

PathLike = Union[str, "os.PathLike[str]"]


def audio_cache_root(base: PathLike, audio: PathLike) -> Path:
    """``base/<audio folder name>-<8 hex of its absolute path>``: the cache root of one audio
    folder under ``base``."""
    path = Path(audio).expanduser().resolve()
    return Path(base) / f"{path.name}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


def default_cache_root(out: PathLike, audio: PathLike) -> Path:
    """The cache root a job writing into ``out`` uses for ``audio``: ``out/cache/<folder>-<hash>``."""
    return audio_cache_root(Path(out) / "cache", audio)


def open_cache(root: PathLike, *, teacher: str, audio: str, window_s: float,
               hop_s: Optional[float] = None, dtype: str = "float16",
               teacher_sr: Optional[int] = None, batch_size: int = 16, device: str = "cpu",
               progress: bool = True, rank: int = 0, world_size: int = 1,
               barrier: Optional[Callable[[], None]] = None, views=None,
               **build_options) -> Path:
    """The cache folder of ``teacher``'s embeddings of ``audio``.

    ``root`` is either a cache folder (holding meta.json), which is used as it is after checking
    that it was built by this teacher with this window, hop and rate, or a cache root in which
    :func:`pyssondo.cache.build_cache` makes or updates the folder of these settings (rank-
    sharded under torchrun: every rank calls this with its own rank). ``views``: the
    teacher-side view settings (:class:`pyssondo.views.ViewConfig`, default none).
    ``build_options`` go to build_cache (workers, shard_rows). The teacher file is hashed once: by the check of an
    existing folder, or by the build, whose folder name carries the hash.

    Raises:
        ParameterError: no teacher or audio to build from. ValueError: the folder at ``root``
        was built for another teacher or setup (the message lists what differs).
    """
    from ..errors import ParameterError

    root = Path(root)
    hop = window_s if hop_s is None else hop_s
    if (root / layout.META).is_file():
        check_cache_matches(root, teacher=teacher, window_s=window_s, hop_s=hop,
                            teacher_sr=teacher_sr, views=views)
        return root
    if not teacher or not audio:
        raise ParameterError(f"{root}: no teacher cache there; give a teacher and an audio "
                             f"folder to build it")
    from .builder import build_cache

    return Path(build_cache(teacher, audio, root, window_s=window_s, hop_s=hop, dtype=dtype,
                            teacher_sr=teacher_sr, batch_size=batch_size, device=device,
                            progress=progress, rank=rank, world_size=world_size,
                            barrier=barrier, views=views, **build_options))


def check_cache_matches(path: Path, *, teacher: str, window_s: float, hop_s: float,
                        teacher_sr: Optional[int], views=None) -> None:
    """Raises ValueError when the cache folder ``path`` was built for another teacher (compared
    by sha256; a factory teacher is not checked), window, hop, teacher rate or views."""
    from ..views import ViewConfig

    from ..loading import file_sha256, is_factory_spec

    meta = layout.read_meta(path) or {}
    problems = []
    fingerprint = str(meta.get("teacher", {}).get("fingerprint", ""))
    if teacher and not is_factory_spec(teacher) and Path(teacher).is_file():
        mine = file_sha256(teacher)
        if fingerprint != mine:
            problems.append(f"built by teacher {meta.get('teacher', {}).get('name')} (sha256 "
                            f"{fingerprint[:12]}), not {Path(teacher).name} (sha256 {mine[:12]})")
    for what, mine in (("window", window_s), ("hop", hop_s)):
        stored = float(meta.get(f"{what}_s", "nan"))
        if not math.isclose(stored, mine):
            problems.append(f"{what} {stored:g} s, not --{what} {mine:g} s")
    stored = meta.get("views") or {"count": 1, "hash": None}
    mine = views or ViewConfig()
    want = (mine.count, mine.settings_hash() if mine.active else None)
    if (int(stored["count"]), stored["hash"]) != want:
        problems.append(f"{stored['count']} views (settings {stored['hash']}), not --views "
                        f"{want[0]} (settings {want[1]})")
    if teacher_sr and int(meta.get("teacher_sample_rate", 0)) != teacher_sr:
        problems.append(f"teacher rate {meta.get('teacher_sample_rate')} Hz, not --teacher-sr "
                        f"{teacher_sr} Hz")
    if problems:
        raise ValueError(f"{path}: this teacher cache does not match the run: "
                         f"{'; '.join(problems)}; point --cache-dir at a cache root (a matching "
                         f"cache is made there) or at the matching cache folder")
