"""Building (and incrementally updating) an embedding cache: ``build_cache``.

Pipeline: a pool of reader threads decodes, hashes, resamples and segments files ahead of the
teacher (bounded prefetch, results taken in file order); the calling thread batches segments
across files and runs the teacher; one writer thread writes each full shard atomically and
then a journal line that announces it (:mod:`.layout`), while the teacher works on.

Rank-sharded builds (``world_size > 1``, e.g. one process per GPU under torchrun): every rank
plans from the same manifest and journals, computes every ``world_size``-th missing file into
shards and a journal of its own, and once all ranks are done rank 0 folds the journals into
the manifest (a plain build, which then has nothing left to compute). A killed rank loses only
its unjournaled shard; the next build, sharded or not, continues from the journals.

Views (:mod:`pyssondo.views`): with K > 1 the reader threads also render views 1 .. K-1 of
every segment (at the file's rate, then resampled to the teacher's) and the teacher runs on
all K; a file's rows are its segments' view 0, then view 1, ... (view-major), committed
together, so a resumed build skips every file whose views are done. Mixing partners are
drawn over the scan's sorted file keys, decoded through a small LRU shared by the readers and
recorded per (segment, view) in the file's entry with the partner file's size and mtime; a
file whose partner changed (size or mtime, and then its hash) or vanished is recomputed.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np

from ..audio import load_audio, resample
from ..errors import ParameterError
from ..progress import Progress
from ..segments import cut_segment, plan_segments, seconds_to_samples
from ..views import (FileAudio, ViewConfig, choose_partner, partner_segment, partner_start,
                     segment_view)
from . import layout
from .scan import FileStat, content_hash, file_stat, scan_audio

log = logging.getLogger("pyssondo.cache")
PathLike = Union[str, "os.PathLike[str]"]
DEFAULT_ROOT = "ssondo-cache"  # cache root when out_dir is None, relative to the working dir
SHARD_BYTES = 64 << 20  # target shard size when shard_rows is not given ...
SHARD_ROWS = 4096       # ... and at most this many rows, so a kill loses minutes, not hours


def default_shard_rows(row_bytes: int) -> int:
    """Rows per shard when ``shard_rows`` is not given: about SHARD_BYTES, at most SHARD_ROWS
    (a 512-d float16 teacher would otherwise hold 65k rows, hours of teacher time, in one
    shard that a killed build loses)."""
    return max(1, min(SHARD_ROWS, SHARD_BYTES // max(int(row_bytes), 1)))


class _File:
    """One file on its way through the pipeline: segments in, embedding rows out."""

    def __init__(self, key: str, path: Path, stat: FileStat, content: str, file_sr: int,
                 frames: int, plan: List[Tuple[int, int]], segs: np.ndarray,
                 partners: Optional[List[List[Any]]] = None) -> None:
        self.key, self.path, self.stat, self.content = key, path, stat, content
        self.file_sr, self.frames, self.plan, self.segs = file_sr, frames, plan, segs
        self.partners = partners
        self.n = segs.shape[0]  # rows: segments x views
        self.taken = 0
        self.out: List[np.ndarray] = []


def _load_file(key: str, path: Path, stat: FileStat, window_s: float, hop_s: float,
               teacher_sr: int, views: Optional["_Views"] = None) -> _File:
    """Reader-thread job: hash, decode, segment at the file's rate, cut at the teacher's;
    with ``views``, also render views 1 .. K-1 of every segment."""
    content = content_hash(path)
    wav, file_sr = load_audio(path)
    plan = plan_segments(wav.shape[0], seconds_to_samples(window_s, file_sr),
                         seconds_to_samples(hop_s, file_sr))
    wav_t = resample(wav, file_sr, teacher_sr) if file_sr != teacher_sr else wav
    window_t = seconds_to_samples(window_s, teacher_sr)
    segs = np.stack([cut_segment(wav_t, int(round(start * teacher_sr / file_sr)), window_t)
                     for start, _ in plan])
    partners = None
    if views is not None and views.cfg.active:
        extra, partners = views.render(key, wav, file_sr, plan, window_s, teacher_sr)
        segs = np.concatenate([segs, extra])
    return _File(key, path, stat, content, file_sr, int(wav.shape[0]), plan, segs, partners)


class _Views:
    """What the reader threads need to render views: the settings, the sorted file keys that
    partners are drawn from, and the shared LRU of decoded partner files."""

    def __init__(self, cfg: ViewConfig, audio_root: Path, keys: List[str], window_s: float,
                 hop_s: float) -> None:
        self.cfg, self.audio_root, self.keys = cfg, audio_root, keys
        self.window_s, self.hop_s = window_s, hop_s
        self.files = FileAudio()

    def partner(self, key: str, start: int, view: int) -> Optional[List[Any]]:
        """``[file key, start, rate, size, mtime_ns]`` of the view's mixing partner (start
        and rate of its segment; size and mtime of the file, to notice a change), or None
        (mixing off, or the partner file cannot be read)."""
        from ..audio import audio_info

        chosen = choose_partner(self.cfg, (key, start), view, self.keys)
        if chosen is None:
            return None
        pkey, position = chosen
        try:
            info = audio_info(self.audio_root / pkey)
            stat = file_stat(self.audio_root / pkey)
        except (ValueError, OSError):
            return None
        starts = [s for s, _ in plan_segments(info.frames,
                                              seconds_to_samples(self.window_s, info.sample_rate),
                                              seconds_to_samples(self.hop_s, info.sample_rate))]
        return ([pkey, partner_start(starts, position), info.sample_rate, *stat] if starts
                else None)

    def render(self, key: str, wav: np.ndarray, file_sr: int, plan: List[Tuple[int, int]],
               window_s: float, teacher_sr: int) -> Tuple[np.ndarray, List[List[Any]]]:
        """Views 1 .. K-1 of the file's segments at the teacher's rate, [(K-1) n, W_t]
        view-major, and their partners [K-1][n] (each ``[key, start, rate]`` or None)."""
        window_f = seconds_to_samples(window_s, file_sr)
        out, partners = [], []
        for view in range(1, self.cfg.count):
            row = []
            for start, _ in plan:
                p = self.partner(key, start, view)
                try:
                    audio = (partner_segment(self.files, self.audio_root / p[0], p[1], p[2],
                                             file_sr, window_f) if p else None)
                except ValueError:  # the partner cannot be decoded: this view mixes nothing
                    p, audio = None, None
                out.append(segment_view(wav, file_sr, (key, start), view, self.cfg, window_s,
                                        teacher_sr, audio))
                row.append(p)
            partners.append(row)
        return np.stack(out), partners


def build_cache(model_spec: Any, audio_dir_or_files: Union[PathLike, Iterable[PathLike]],
                out_dir: Optional[PathLike] = None, *, window_s: float = 10.0,
                hop_s: Optional[float] = None, dtype: str = "float16",
                teacher_sr: Optional[int] = None, batch_size: int = 16,
                workers: Optional[int] = None, shard_rows: Optional[int] = None,
                device: str = "cpu", progress: bool = True, rank: int = 0,
                world_size: int = 1, barrier: Optional[Callable[[], None]] = None,
                views: Optional[ViewConfig] = None) -> Path:
    """Computes (or updates) the teacher-embedding cache of an audio folder.

    Args:
        model_spec: teacher file, ``pkg.mod:fn`` factory, or a
            :class:`pyssondo.loading.LoadedModel`. Output [B, D] or [B, F, D].
        audio_dir_or_files: folder scanned recursively, or a list of audio files.
        out_dir: cache root (default ``./ssondo-cache``); the cache is its subfolder named by
            :func:`layout.cache_key` (teacher sha256[:16], teacher rate, W, H, dtype, and
            with views their count and settings hash).
        window_s, hop_s: segment window and hop in seconds (> 0; hop defaults to window).
        dtype: "float16" or "float32" rows.
        teacher_sr: teacher input rate in Hz, overriding the teacher's own.
        batch_size: segments per teacher call (>= 1).
        workers: reader threads (default min(4, cpu count)).
        shard_rows: rows per shard (default: :func:`default_shard_rows`).
        device: torch device for the teacher.
        progress: show a progress bar (on a terminal).
        rank, world_size: this process's share of a rank-sharded build (every rank calls
            build_cache with the same arguments, its own rank and device).
        barrier: with ``world_size > 1``, a function that returns once every rank has called
            it (e.g. ``torch.distributed.barrier``); every rank returns the merged cache.
        views: augmented views per segment (:class:`pyssondo.views.ViewConfig`; default
            none: one clean view). The teacher runs once per view.

    Returns:
        The cache folder. Unchanged files (same size and mtime, or same content hash) are not
        recomputed, changed and new files are, vanished files are dropped; shards whose size
        or sha256 disagree with the manifest are discarded and their files recomputed.
        Unreadable audio files are skipped with a warning and listed in the manifest.

    Raises:
        ValueError: bad settings, no audio files, no readable audio, unknown teacher rate,
            or a teacher that fails, returns NaN/inf or a shape other than [B, D] / [B, F, D]
            (the message names the file and the shape).
    """
    from ..loading import LoadedModel, load_model

    hop_s = window_s if hop_s is None else hop_s
    for name, value in (("window_s", window_s), ("hop_s", hop_s)):
        if not isinstance(value, (int, float)) or not value > 0:
            raise ParameterError(f"cache: {name}={value!r} must be > 0 seconds")
    if dtype not in layout.DTYPES:
        raise ParameterError(f"cache: dtype={dtype!r} must be one of {layout.DTYPES}")
    for name, value in (("batch_size", batch_size), ("shard_rows", shard_rows or 1),
                        ("workers", workers or 1), ("world_size", world_size)):
        if not isinstance(value, int) or value < 1:
            raise ParameterError(f"cache: {name}={value!r} must be a positive integer")
    if teacher_sr is not None and (not isinstance(teacher_sr, int) or teacher_sr < 1):
        raise ParameterError(f"cache: teacher sample rate {teacher_sr!r} must be a positive "
                             f"integer (Hz)")
    if not 0 <= rank < world_size:
        raise ParameterError(f"cache: rank={rank!r} must be in [0, world_size={world_size})")
    if world_size > 1 and barrier is None:
        raise ParameterError("cache: a rank-sharded build (world_size > 1) needs a barrier")
    views = views or ViewConfig()
    views.validate()
    teacher = (model_spec if isinstance(model_spec, LoadedModel)
               else load_model(model_spec, teacher_sr, device=device, role="teacher"))
    if teacher_sr is not None and int(teacher_sr) != teacher.sample_rate:
        teacher = LoadedModel(teacher.module, int(teacher_sr), teacher.name,
                              teacher.fingerprint, teacher.source, teacher.meta)
    root_out = Path(out_dir if out_dir is not None else DEFAULT_ROOT).resolve()
    audio_root, files = scan_audio(audio_dir_or_files, exclude=[root_out])
    folder = root_out / layout.cache_key(teacher.fingerprint, teacher.sample_rate, window_s,
                                         hop_s, dtype, views.count, views.settings_hash())
    if folder.is_symlink():  # a link planted in a shared root: never write through it
        layout.safe_member(root_out, folder.name, root_out)
    made = [p for p in (folder, root_out) if not p.exists()] if world_size == 1 else []
    folder.mkdir(parents=True, exist_ok=True)
    settings = (teacher, folder, audio_root, window_s, hop_s, dtype, batch_size,
                workers or min(4, os.cpu_count() or 1), shard_rows, device)
    rendering = _Views(views, audio_root, sorted(k for k, _ in files), window_s, hop_s)
    try:
        if world_size > 1:
            with _exclusive(folder, shared=True):
                builder = _Builder(*settings, progress, rank=rank, world_size=world_size,
                                   views=rendering)
                share = builder.share(files)
                barrier()  # every rank has planned from the same manifest and journals
                builder.compute(share)
            barrier()  # every share is journaled
        if rank == 0:
            with _exclusive(folder):
                _Builder(*settings, progress, views=rendering).run(files)
        if world_size > 1:
            barrier()  # the manifest is written
    except BaseException:
        _remove_if_unused(folder, made)
        raise
    return folder


def _remove_if_unused(folder: Path, made: List[Path]) -> None:
    """After a failed build: removes the folders it created (``made``: the cache folder, its
    root) while they hold no rows, so a teacher that fails leaves no empty cache behind. Only
    the files a build writes before its first shard are removed; anything else keeps them."""
    if folder in made:
        try:
            manifest = layout.read_manifest(folder)
        except ValueError:
            return
        if (manifest and manifest["files"]) or any(
                re.fullmatch(layout.SHARD_PATTERN, p.name) for p in folder.iterdir()):
            return
        for name in (".lock", layout.MANIFEST, layout.META):
            (folder / name).unlink(missing_ok=True)
    for path in made:
        try:
            path.rmdir()
        except OSError:
            return


@contextlib.contextmanager
def _exclusive(folder: Path, shared: bool = False):
    """Holds an advisory lock on ``folder/.lock`` so two builds never write one cache (the
    ranks of one sharded build hold it ``shared`` while they compute their shares). A build
    that finds the lock taken waits for the other one (two runs started on the same audio:
    the second then finds the files cached); the lock dies with its process."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    with open(layout.open_in_folder(folder, ".lock"), "a") as f:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(f.fileno(), mode | fcntl.LOCK_NB)
        except OSError:
            log.warning("%s: another run is writing this cache; waiting for it to finish",
                        folder)
            fcntl.flock(f.fileno(), mode)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _hash_or_none(path: Path) -> Optional[str]:
    try:
        return content_hash(path)
    except OSError:
        return None  # unreadable: recomputed, and skipped with a warning by the reader


class _Builder:
    """One build of a cache folder: :meth:`run` for a whole build (or the merge of a sharded
    one), :meth:`share` + :meth:`compute` for one rank's part of a sharded build, which only
    adds shards and journal lines of its own (``rank`` set)."""

    def __init__(self, teacher, folder: Path, audio_root: Path, window_s: float, hop_s: float,
                 dtype: str, batch_size: int, workers: int, shard_rows: Optional[int],
                 device: str, progress: bool, rank: Optional[int] = None,
                 world_size: int = 1, views: Optional[_Views] = None) -> None:
        self.rank, self.world_size = rank, world_size
        self.views = views
        self.count = views.cfg.count if views is not None else 1  # rows per segment
        self.teacher, self.folder, self.audio_root = teacher, folder, audio_root
        self.window_s, self.hop_s, self.dtype = float(window_s), float(hop_s), dtype
        self.batch_size, self.workers, self.shard_rows = batch_size, workers, shard_rows
        self.device, self.progress = device, progress
        self.sr = teacher.sample_rate
        self.window_t = seconds_to_samples(window_s, self.sr)
        base = layout.read_json(folder / layout.MANIFEST)
        self._saved = layout.dump_json(base) if base is not None else ""
        self.manifest = layout.read_manifest(folder) or layout.empty_manifest()
        self.meta = layout.read_meta(folder)
        self.skipped: Dict[str, str] = {}
        self.upsampled: List[Tuple[str, int]] = []

    # -- planning ------------------------------------------------------------------------
    def _clean_and_verify(self) -> None:
        """Removes leftovers of killed runs; drops shards that fail verification."""
        m = self.manifest
        for p in self.folder.iterdir():
            if p.name.endswith(".tmp") or (re.fullmatch(layout.SHARD_PATTERN, p.name)
                                           and p.name not in m["shards"]):
                p.unlink()
        bad = {}
        for name, rec in m["shards"].items():
            problem = layout.shard_problem(self.folder / name, rec, full=True)
            if problem:
                bad[name] = problem
        for name, problem in bad.items():
            keys = [k for k, e in m["files"].items() if e["shard"] == name]
            warnings.warn(f"{self.folder / name}: {problem}; recomputing its {len(keys)} files")
            for k in keys:
                del m["files"][k]
            del m["shards"][name]
            (self.folder / name).unlink(missing_ok=True)

    def _plan(self, files: List[Tuple[str, Path]]) -> List[Tuple[str, Path, FileStat]]:
        m = self.manifest
        todo, present = [], {}
        for key, path in files:
            try:
                stat = file_stat(path)
            except OSError as e:  # a dangling or looping symlink: skipped like corrupt audio
                reason = e.strerror or type(e).__name__
                warnings.warn(f"{path}: skipped ({reason})")
                self.skipped[key] = reason
                continue
            present[key] = stat
            entry = m["files"].get(key)
            if entry and (entry["size"], entry["mtime_ns"]) == tuple(stat):
                continue
            if entry and entry["hash"] == _hash_or_none(path):
                entry["size"], entry["mtime_ns"] = stat.size, stat.mtime_ns
                continue
            m["files"].pop(key, None)
            todo.append((key, path, stat))
        for key in [k for k in m["files"] if k not in present or k in self.skipped]:
            del m["files"][key]
        # A partner is unchanged when its size and mtime are, or when its own entry survived
        # the checks above by its hash (a copy or a touch): then its recorded size and mtime
        # are refreshed. Otherwise the views that mixed it are stale.
        def changed(p: List[Any]) -> bool:
            if p[0] not in present:
                return True
            return tuple(present[p[0]]) != tuple(p[3:5]) and p[0] not in m["files"]

        stale = []
        for key in sorted(m["files"]):
            mixed = layout.partners(m["files"][key])
            if any(changed(p) for p in mixed):
                stale.append(key)
                continue
            for p in mixed:
                p[3:5] = list(present[p[0]])
        if stale:  # their views mixed in audio that changed or vanished
            paths = dict(files)
            for key in stale:
                del m["files"][key]
            todo = sorted(todo + [(k, paths[k], file_stat(paths[k])) for k in stale],
                          key=lambda t: t[0])
        m["skipped"] = {}
        return todo

    def _drop_dead_shards(self) -> None:
        live = {e["shard"] for e in self.manifest["files"].values()}
        dead = [name for name in self.manifest["shards"] if name not in live]
        for name in dead:
            del self.manifest["shards"][name]
        self._save_manifest()
        for name in dead:
            (self.folder / name).unlink(missing_ok=True)

    # -- running -------------------------------------------------------------------------
    def run(self, files: List[Tuple[str, Path]]) -> None:
        self._save_manifest()  # folds a killed run's journal in before anything changes
        self._clean_and_verify()
        todo = self._plan(files)
        self._drop_dead_shards()
        if self.meta is not None and self.meta["audio_root"] != str(self.audio_root):
            self.meta["audio_root"] = str(self.audio_root)  # the audio (and cache) moved
            layout.write_json(self.folder / layout.META, self.meta)
        total_segments = self._count_segments(todo)
        log.info("cache %s: %d files cached, %d to compute", self.folder,
                 len(self.manifest["files"]), len(todo))
        if todo:
            self._compute(todo, total_segments)
        self._compact()
        self.manifest["skipped"] = dict(sorted(self.skipped.items()))
        self._save_manifest()
        if self.upsampled:
            key, rate = self.upsampled[0]
            warnings.warn(f"{len(self.upsampled)} files were upsampled to the teacher's "
                          f"{self.sr} Hz (e.g. {key} at {rate} Hz); their band above the "
                          f"file's Nyquist is empty")
        if self.skipped:
            warnings.warn(f"skipped {len(self.skipped)} unreadable files: "
                          + ", ".join(list(self.skipped)[:5])
                          + (" ..." if len(self.skipped) > 5 else ""))
        if not self.manifest["files"]:
            raise ValueError(f"{self.audio_root}: none of the {len(files)} audio files could "
                             f"be read")

    def share(self, files: List[Tuple[str, Path]]) -> List[Tuple[str, Path, FileStat]]:
        """This rank's files of those missing from the manifest and journals."""
        return self._plan(files)[self.rank::self.world_size]

    def compute(self, todo: List[Tuple[str, Path, FileStat]]) -> None:
        """Computes ``todo`` into this rank's shards and journal (nothing else is written)."""
        log.info("cache %s: rank %d of %d computes %d files", self.folder, self.rank,
                 self.world_size, len(todo))
        if todo:
            self._compute(todo, self._count_segments(todo))

    def _compact(self) -> None:
        """Moves the live rows of shards that are mostly dead (changed or vanished files)
        into new shards, without recomputing them; the old shards go once the manifest no
        longer names them."""
        m = self.manifest
        live: Dict[str, int] = {}
        for e in m["files"].values():
            live[e["shard"]] = live.get(e["shard"], 0) + len(e["starts"]) * self.count
        sparse = {name for name, rec in m["shards"].items() if 2 * live.get(name, 0) < rec["rows"]}
        if not sparse or self.meta is None:
            return
        keys = sorted(k for k, e in m["files"].items() if e["shard"] in sparse)
        row_bytes = (self.meta["frames"] or 1) * self.meta["dim"] * np.dtype(self.dtype).itemsize
        per_shard = self.shard_rows or default_shard_rows(row_bytes)
        next_shard = int(m["next_shard"])
        group: List[str] = []
        for i, key in enumerate(keys):
            group.append(key)
            if (sum(len(m["files"][k]["starts"]) for k in group) * self.count >= per_shard
                    or i == len(keys) - 1):
                name = layout.shard_name(next_shard)
                next_shard += 1
                parts, row = [], 0
                for k in group:
                    e = m["files"][k]
                    old = np.load(self.folder / e["shard"], mmap_mode="r")
                    rows = len(e["starts"]) * self.count
                    parts.append(np.asarray(old[e["row"]:e["row"] + rows]))
                    e["shard"], e["row"] = name, row
                    row += rows
                m["shards"][name] = layout.write_shard(self.folder / name, np.concatenate(parts))
                group = []
        m["next_shard"] = next_shard
        log.info("cache %s: compacted %d shards", self.folder, len(sparse))
        self._drop_dead_shards()

    def _count_segments(self, todo) -> int:
        """Rows (segments x views) to compute, from the files' headers (read in parallel), for
        the ETA."""
        import soundfile as sf

        def count(path: Path) -> int:
            try:
                info = sf.info(str(path))
            except Exception:
                return 0  # reported as skipped when the reader fails on it
            return self.count * len(plan_segments(
                int(info.frames), seconds_to_samples(self.window_s, info.samplerate),
                seconds_to_samples(self.hop_s, info.samplerate)))

        with ThreadPoolExecutor(self.workers) as pool:
            return sum(pool.map(count, [path for _, path, _ in todo]))

    def _compute(self, todo, total_segments: int) -> None:
        readers = ThreadPoolExecutor(self.workers, thread_name_prefix="ssondo-cache-read")
        writer = ThreadPoolExecutor(1, thread_name_prefix="ssondo-cache-write")
        self._writing: Optional[Future] = None
        self._next_shard = int(self.manifest["next_shard"])
        self._shard_files: List[_File] = []
        self._shard_count = 0
        prefetch = 2 * self.workers + 2
        jobs = iter(todo)
        pending: Deque[Tuple[str, Path, Future]] = deque()
        active: Deque[_File] = deque()
        queued = 0  # segments read but not yet given to the teacher
        done_files = 0
        audio_s = 0.0
        try:
            desc = "cache" if self.rank is None else f"cache rank {self.rank}"
            with Progress(total_segments, desc=desc, unit="seg",
                          enabled=None if self.progress else False) as bar:
                while True:
                    while len(pending) < prefetch:
                        job = next(jobs, None)
                        if job is None:
                            break
                        key, path, stat = job
                        pending.append((key, path, readers.submit(
                            _load_file, key, path, stat, self.window_s, self.hop_s, self.sr,
                            self.views)))
                    if not pending and not queued:
                        break
                    if pending and queued < self.batch_size:
                        key, path, fut = pending.popleft()
                        try:
                            f = fut.result()
                        except (ValueError, OSError) as e:  # AudioError, unreadable: skip the file
                            warnings.warn(f"{path}: skipped ({e})")
                            self.skipped[key] = str(e)
                            done_files += 1
                            continue
                        if f.file_sr < self.sr:
                            self.upsampled.append((key, f.file_sr))
                        active.append(f)
                        queued += f.n
                        continue
                    finished = self._run_batch(active, min(queued, self.batch_size), writer)
                    n = min(queued, self.batch_size)
                    queued -= n
                    done_files += len(finished)
                    audio_s += sum(f.frames / f.file_sr for f in finished)
                    bar.update(n, files=f"{done_files}/{len(todo)}",
                               audio=f"{audio_s / max(bar.elapsed, 1e-9):.1f}s/s")
                self._flush(writer)
        finally:
            readers.shutdown(wait=True, cancel_futures=True)
            writer.shutdown(wait=True)
        if self._writing is not None:
            self._writing.result()

    def _run_batch(self, active: Deque[_File], n: int, writer) -> List[_File]:
        """Runs the teacher on the next ``n`` queued segments; returns files now complete."""
        import torch

        parts, owners = [], []
        need = n
        for f in active:
            if need == 0:
                break
            k = min(need, f.n - f.taken)
            if k == 0:
                continue
            parts.append(f.segs[f.taken:f.taken + k])
            owners.append((f, f.taken, k))
            f.taken += k
            need -= k
        batch = np.concatenate(parts) if len(parts) > 1 else parts[0]
        y = self._forward(torch, batch, owners)
        off = 0
        for f, _, k in owners:
            f.out.append(y[off:off + k])
            off += k
        finished = []
        while active and sum(o.shape[0] for o in active[0].out) == active[0].n:
            f = active.popleft()
            f.segs = None
            finished.append(f)
            self._shard_files.append(f)
            self._shard_count += f.n
            if self._shard_count >= self._rows_per_shard(y):
                self._flush(writer)
        return finished

    def _forward(self, torch, batch: np.ndarray, owners) -> np.ndarray:
        from ..loading import describe_files, forward_checked

        names = describe_files(f.path for f, _, _ in owners)
        b = batch.shape[0]
        out = forward_checked(self.teacher.module, torch.from_numpy(batch).to(self.device),
                              what=f"teacher {self.teacher.source}", names=names, finite=False)
        shape = tuple(out.shape)
        y = out.detach().float().cpu().numpy()
        self._check_meta(y, names)
        bad = ~np.isfinite(y.reshape(b, -1)).all(axis=1)
        cast_bad = ~np.isfinite(y.reshape(b, -1).astype(self.dtype)).all(axis=1)
        if bad.any() or cast_bad.any():
            row = int(np.flatnonzero(bad | cast_bad)[0])
            off = 0
            for f, first, k in owners:
                if row < off + k:
                    view, seg = divmod(first + row - off, len(f.plan))
                    what = ("NaN/inf" if bad[row] else
                            f"values beyond the {self.dtype} range (use --dtype float32)")
                    raise ValueError(f"teacher {self.teacher.source} returned {what} for "
                                     f"{f.path} (segment at sample {f.plan[seg][0]}"
                                     + (f", view {view}" if self.count > 1 else "")
                                     + f"); output shape {shape}")
                off += k
        return y.astype(self.dtype)

    def _check_meta(self, y: np.ndarray, names: str) -> None:
        level = "frame" if y.ndim == 3 else "clip"
        frames = int(y.shape[1]) if y.ndim == 3 else None
        dim = int(y.shape[-1])
        if self.meta is None:
            t = self.teacher
            targets = t.targets or [{"name": t.name, "dim": dim}]  # one: named after it
            if sum(x["dim"] for x in targets) != dim:
                raise ValueError(f"teacher {t.source} lists targets of dims "
                                 f"{[x['dim'] for x in targets]} but returned dim {dim}")
            self.meta = {
                "version": layout.FORMAT_VERSION,
                "teacher": {"fingerprint": t.fingerprint, "name": t.name, "source": t.source,
                            "sample_rate": t.sample_rate, "meta": t.meta},
                "teacher_fingerprint": t.fingerprint,
                "teacher_sample_rate": self.sr, "window_s": self.window_s,
                "hop_s": self.hop_s, "window_samples": self.window_t, "dtype": self.dtype,
                "level": level, "dim": dim, "frames": frames, "targets": targets,
                "audio_root": str(self.audio_root),
            }
            if self.count > 1:
                self.meta["views"] = {**self.views.cfg.to_dict(),
                                      "hash": self.views.cfg.settings_hash()}
            layout.write_json(self.folder / layout.META, self.meta)
        elif (self.meta["level"], self.meta["dim"], self.meta["frames"]) != (level, dim, frames):
            raise ValueError(f"teacher {self.teacher.source} returned shape {y.shape} for "
                             f"{names}, but {self.folder} holds rows of level "
                             f"{self.meta['level']}, dim {self.meta['dim']}, frames "
                             f"{self.meta['frames']}")

    def _rows_per_shard(self, y: np.ndarray) -> int:
        if self.shard_rows:
            return self.shard_rows
        return default_shard_rows(int(np.prod(y.shape[1:])) * np.dtype(self.dtype).itemsize)

    def _flush(self, writer: ThreadPoolExecutor) -> None:
        """Hands the completed files' rows to the writer (waits for the previous shard)."""
        if not self._shard_files:
            return
        files, self._shard_files, self._shard_count = self._shard_files, [], 0
        name = layout.shard_name(self._next_shard, self.rank)
        self._next_shard += 1
        rows = np.concatenate([np.concatenate(f.out) for f in files])
        entries, row = [], 0
        for f in files:
            entries.append((f.key, layout.file_entry(
                f.stat.size, f.stat.mtime_ns, f.content, f.file_sr, f.frames, name, row,
                [s for s, _ in f.plan], [n for _, n in f.plan], f.partners)))
            row += f.n
            f.out = []
        if self._writing is not None:
            self._writing.result()
        self._writing = writer.submit(self._commit, name, rows, entries)

    def _commit(self, name: str, rows: np.ndarray, entries) -> None:
        """Writer-thread job: the shard, durable, then the journal line that announces it."""
        record = layout.write_shard(self.folder / name, rows)
        layout.append_journal(self.folder, name, record, dict(entries), self.rank)
        m = self.manifest
        m["shards"][name] = record
        m["files"].update(entries)
        m["next_shard"] = max(int(m["next_shard"]), int(name[6:12]) + 1)

    def _save_manifest(self) -> None:
        """Writes the manifest atomically unless unchanged on disk, then drops the journals
        (whose lines the manifest now holds; replaying them again would change nothing)."""
        text = layout.dump_json(self.manifest)
        if text != self._saved:
            layout.write_text(self.folder / layout.MANIFEST, text)
            self._saved = text
        for journal in layout.journals(self.folder):
            journal.unlink(missing_ok=True)
