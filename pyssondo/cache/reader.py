"""Reading an embedding cache: ``EmbeddingCache`` (read-only, memory-mapped shards)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple, Union

import numpy as np

from . import layout

PathLike = Union[str, "os.PathLike[str]"]
SegmentId = Tuple[str, int]


class Segment(NamedTuple):
    """One cached segment: ``start``/``length`` in samples at the file's rate ``file_sr``."""

    file_key: str
    path: Path
    start: int
    length: int
    file_sr: int


def resolve_cache_dir(path: PathLike) -> Path:
    """The cache folder at ``path``, or the only one inside the cache root ``path``.

    Raises:
        ValueError: the root holds several caches (the message lists them).
    """
    p = Path(path)
    if (p / layout.META).is_file() or not p.is_dir():
        return p
    found = sorted(d for d in p.iterdir() if (d / layout.META).is_file())
    if len(found) > 1:
        raise ValueError(f"{p} holds {len(found)} caches; give one of: "
                         + ", ".join(str(d) for d in found))
    if found and found[0].is_symlink():  # found by listing a root: stays inside it
        layout.safe_member(p, found[0].name, p)
    return found[0] if found else p


class EmbeddingCache:
    """A cache folder written by :func:`pyssondo.cache.build_cache`, opened read-only.

    Segments are ordered by file key, then start sample. ``len(cache)`` is the number of
    segments; ``cache.ids[i]`` is segment i's id ``(file_key, start)``; ``cache[i]`` or
    ``cache[(file_key, start)]`` is its row ([D] for clip caches, [F, D] for frame caches);
    iteration yields ``(segment_id, row)``. Shards are memory-mapped. With ``cache.views`` =
    K > 1 augmented views per segment (:mod:`pyssondo.views`), all of these are view 0 (the
    clean segment); ``rows(..., view=v)`` and ``embeddings(view=v)`` read view v, and
    ``partner(i, v)`` names the segment mixed into it.

    Args:
        path: the cache folder (the keyed subfolder, as returned by build_cache), or a
            cache root holding exactly one.
        verify: also check every shard's sha256 (size is always checked).

    Raises:
        FileNotFoundError: not a cache folder. ValueError: a shard does not match the
            manifest (rebuild with ``ssondo cache`` to recompute it).
    """

    def __init__(self, path: PathLike, verify: bool = False) -> None:
        self.path = resolve_cache_dir(path)
        meta = layout.read_meta(self.path)
        manifest = layout.read_manifest(self.path)
        if meta is None or manifest is None:
            raise FileNotFoundError(f"{self.path}: not an embedding cache folder (no "
                                    f"{layout.META} / {layout.MANIFEST}); build one with "
                                    f"'ssondo cache'")
        self.meta: Dict = meta
        self.manifest: Dict = manifest
        self.audio_root = Path(meta["audio_root"])
        self._shard_names = sorted(manifest["shards"])
        for name in self._shard_names:
            problem = layout.shard_problem(self.path / name, manifest["shards"][name], verify)
            if problem:
                raise ValueError(f"{self.path / name}: {problem}; run 'ssondo cache' again to "
                                 f"recompute it")
        shard_index = {n: i for i, n in enumerate(self._shard_names)}
        self.ids: List[SegmentId] = []
        views = meta.get("views")
        self.views = int(views["count"]) if views else 1
        shard_of, row_of, per_file, lengths, rates = [], [], [], [], []
        for key in sorted(manifest["files"]):
            e = manifest["files"][key]
            n = len(e["starts"])
            self.ids += [(key, int(s)) for s in e["starts"]]
            shard_of += [shard_index[e["shard"]]] * n
            row_of += range(e["row"], e["row"] + n)
            per_file += [n] * n
            lengths += e["lengths"]
            rates += [e["sample_rate"]] * n
        self._shard_of = np.asarray(shard_of, dtype=np.int64)
        self._row_of = np.asarray(row_of, dtype=np.int64)
        self._per_file = np.asarray(per_file, dtype=np.int64)  # view v: row_of + v * per_file
        self._lengths = np.asarray(lengths, dtype=np.int64)
        self._rates = np.asarray(rates, dtype=np.int64)
        self._index = {sid: i for i, sid in enumerate(self.ids)}
        self._shards: List[Optional[np.ndarray]] = [None] * len(self._shard_names)

    # -- facts ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def frames(self) -> Optional[int]:
        """Frames per row for frame caches, None for clip caches."""
        return self.meta["frames"]

    @property
    def view_config(self):
        """The :class:`pyssondo.views.ViewConfig` the views were rendered with (count 1 when
        the cache has none)."""
        from ..views import ViewConfig

        views = dict(self.meta.get("views") or {})
        views.pop("hash", None)
        return ViewConfig.from_dict(views) if views else ViewConfig()

    def partner(self, i: int, view: int) -> Optional[Tuple[str, int, int]]:
        """``(file key, start, rate)`` of the segment mixed into view ``view`` of segment
        ``i``, or None (no mixing). The key is checked to be one of the cache's files."""
        key, start = self.ids[i]
        e = self.manifest["files"][key]
        if view == 0 or "partners" not in e:
            return None
        p = e["partners"][view - 1][e["starts"].index(start)]
        if p is None:
            return None
        if p[0] not in self.manifest["files"]:
            raise ValueError(f"{self.path / layout.MANIFEST}: file {key!r} names a mixing "
                             f"partner {p[0]!r} that is not in the cache; run 'ssondo cache' "
                             f"again to recompute it")
        return str(p[0]), int(p[1]), int(p[2])

    @property
    def skipped(self) -> Dict[str, str]:
        """Files the last build could not read, with the reason."""
        return dict(self.manifest.get("skipped", {}))

    def segments(self) -> List[Segment]:
        return [Segment(k, self.audio_root / k, s, int(n), int(r))
                for (k, s), n, r in zip(self.ids, self._lengths, self._rates)]

    @property
    def digest(self) -> str:
        """Hex id of the cache's contents (sha256 of its manifest): changes whenever rows do."""
        return hashlib.sha256(layout.dump_json(self.manifest).encode()).hexdigest()[:16]

    def disk_bytes(self) -> int:
        return sum(int(r["bytes"]) for r in self.manifest["shards"].values())

    # -- rows ----------------------------------------------------------------------------
    def _shard(self, i: int) -> np.ndarray:
        if self._shards[i] is None:
            self._shards[i] = np.load(self.path / self._shard_names[i], mmap_mode="r",
                                      allow_pickle=False)
        return self._shards[i]

    def _view_rows(self, view: int) -> np.ndarray:
        if not 0 <= view < self.views:
            raise IndexError(f"view {view} out of range for a cache of {self.views} views")
        return self._row_of + view * self._per_file if view else self._row_of

    def __getitem__(self, item) -> np.ndarray:
        i = self._index[item] if isinstance(item, tuple) else int(item)
        if not -len(self) <= i < len(self):
            raise IndexError(f"segment {item} out of range for {len(self)} segments")
        return self._shard(int(self._shard_of[i]))[self._row_of[i]]

    def __contains__(self, sid: SegmentId) -> bool:
        return sid in self._index

    def __iter__(self) -> Iterator[Tuple[SegmentId, np.ndarray]]:
        for i, sid in enumerate(self.ids):
            yield sid, self[i]

    def rows(self, indices, pool: Optional[str] = None, view: int = 0) -> np.ndarray:
        """Rows of view ``view`` of the segments ``indices`` (int array), pooled as in
        :meth:`embeddings`."""
        idx = np.asarray(indices, dtype=np.int64)
        row_of = self._view_rows(view)
        out = None
        for s in np.unique(self._shard_of[idx]):
            sel = np.flatnonzero(self._shard_of[idx] == s)
            block = np.asarray(self._shard(int(s))[row_of[idx[sel]]])
            if out is None:
                out = np.empty((idx.size,) + block.shape[1:], dtype=block.dtype)
            out[sel] = block
        if out is None:
            shape = (0, self.dim) if pool or self.frames is None else (0, self.frames, self.dim)
            return np.empty(shape, dtype=self.meta["dtype"])
        return self._pool(out, idx, pool)

    def _pool(self, rows: np.ndarray, idx: np.ndarray, pool: Optional[str]) -> np.ndarray:
        if pool is None or rows.ndim == 2:
            return rows
        if pool != "mean":
            raise ValueError(f"pool={pool!r} must be 'mean' or None")
        frames = rows.shape[1]
        real = self._lengths[idx] / (float(self.meta["window_s"]) * self._rates[idx])
        valid = np.clip(np.ceil(real * frames - 1e-9), 1, frames).astype(np.int64)
        mask = np.arange(frames)[None, :] < valid[:, None]
        total = (rows.astype(np.float32) * mask[:, :, None]).sum(axis=1)
        return total / valid[:, None]

    def iter_blocks(self, block: int = 65536, pool: Optional[str] = "mean",
                    ) -> Iterator[Tuple[int, np.ndarray]]:
        """Yields ``(first_index, rows)`` for consecutive blocks of ``block`` segments."""
        for first in range(0, len(self), block):
            yield first, self.rows(np.arange(first, min(first + block, len(self))), pool)

    def embeddings(self, pool: Optional[str] = "mean", view: int = 0) -> np.ndarray:
        """All rows of view ``view`` in segment order: [N, D] (clip caches, or frame caches
        with pool="mean", which averages the frames holding real audio: the first
        ceil(F * length / window));
        [N, F, D] for frame caches with pool=None.

        A memory map when the rows already lie in order in one shard and need no pooling;
        otherwise a new array (float32 when pooled, else the cache dtype).
        """
        if (len(self._shard_names) == 1 and (pool is None or self.frames is None)
                and self.views == 1 and np.array_equal(self._row_of, np.arange(len(self)))
                and self._shard(0).shape[0] == len(self)):
            return self._shard(0)
        return self.rows(np.arange(len(self)), pool, view)

    @property
    def targets(self) -> List[Dict[str, Any]]:
        """What each row's last axis holds, in order: ``[{"name", "dim"}, ...]`` (the teacher's
        targets, e.g. several layers; caches written before list none: one target named after
        the teacher, as :func:`pyssondo.train.targets.cache_targets` reads them)."""
        return self.meta.get("targets") or [{"name": str(self.meta["teacher"]["name"]),
                                             "dim": self.dim}]

    def summary(self) -> str:
        """Human-readable summary: teacher, rate, files, segments, dims, dtype, size, skipped."""
        m, t = self.meta, self.meta["teacher"]
        shape = f"[{m['frames']}, {m['dim']}] frames" if m["frames"] else f"[{m['dim']}]"
        lines = [
            f"cache        {self.path}",
            f"teacher      {t['meta'].get('name', t['name'])} ({t['source']}), "
            f"sha256 {t['fingerprint'][:16]}",
            f"rate         {m['teacher_sample_rate']} Hz; window {m['window_s']:g} s, "
            f"hop {m['hop_s']:g} s",
            f"audio        {self.audio_root}",
            f"files        {len(self.manifest['files'])}",
            f"segments     {len(self)}",
            f"views        {self.view_config.describe()}",
            f"rows         {shape} per segment and view, {m['dtype']}",
            f"rows         {shape} per segment, {m['dtype']}; "
            f"{'frame' if m['frames'] else 'pooled clip'} storage",
            "targets      " + ", ".join(f"{t['name']} [{t['dim']}]" for t in self.targets),
            f"size         {self.disk_bytes() / 1e6:.1f} MB in {len(self._shard_names)} shards",
            f"skipped      {len(self.skipped)} files" + "".join(
                f"\n  {k}: {v}" for k, v in sorted(self.skipped.items())),
        ]
        return "\n".join(lines)
