"""Training data: the cached teacher segments as student log-mel inputs with teacher targets.

Each cache row (a segment the teacher saw) is read back as audio at the STUDENT's sample rate:
the file is decoded and resampled once (:func:`pyssondo.load_audio`), kept in a small per-worker
LRU, and the segment is cut at the same time span the teacher saw. Log-mel is computed by the
C++ core on the whole collated batch inside the DataLoader worker, or, by default when the disk
has room (``--cache-mel auto``), computed once into a float16 log-mel file next to the teacher
cache and memory-mapped: the segments are fixed, so recomputing their log-mel every epoch would
only take CPU time from the model.

Views (:mod:`pyssondo.views`): with K teacher-side views per segment, a training item is
(segment, view): :class:`DistillDataset` draws the view of each training key uniformly from a
generator seeded by ``(seed, epoch, position)`` (validation keys use view 0, the clean
segment), reads the teacher's row of that view and renders exactly the audio the teacher saw
(:func:`pyssondo.views.segment_view`, at the student's rate); the log-mel file holds every
view. A random view per draw leaves the balanced sampler, its epoch length and its resumable
position as they are; every view is seen equally often on average.

Determinism: batches are lists of keys ``(epoch, position, row)``; every random choice of the
augmentation is drawn from a generator seeded by ``(seed, epoch, position)``, so the data a step
sees does not depend on worker count, prefetching, or whether the run was resumed.

Augmentation (student side; targets change only with mixup) works on log-mel exactly:
with ``m = exp(L) - log_offset`` the mel energies, a gain g gives ``log(g**power * m + off)``;
mixup with weight lam mixes energies ``lam * m1 + (1 - lam) * m2`` (the mel of mixed, uncorrelated
signals) and targets ``lam * t1 + (1 - lam) * t2``; masks set bands/frames to silence,
``log(log_offset)``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import ParameterError
from ..frontend import MelConfig
from ..progress import Progress
from ..segments import cut_segment, seconds_to_samples
from ..views import FileAudio, ViewConfig, partner_segment, segment_view

Key = Tuple[int, int, int]  # (epoch, position in epoch, cache row)


@dataclass(frozen=True)
class Augment:
    """Student-side augmentation settings (0 disables each)."""

    gain_db: float = 0.0
    time_mask: int = 0
    freq_mask: int = 0
    mixup: float = 0.0

    @property
    def active(self) -> bool:
        return bool(self.gain_db or self.time_mask or self.freq_mask or self.mixup)


class SegmentAudio:
    """Student-rate waveforms of cache segments: one decode per file, LRU of decoded files.

    Args:
        segments: the cache's Segment records (path, start and length at the file's rate).
        sample_rate: the student's rate in Hz.
        window_s: segment window in seconds (the teacher's).
        max_samples: LRU budget in samples per process (default 32M = 128 MB of float32).
        views: the cache's view settings (:attr:`EmbeddingCache.view_config`); default none.
        partner: ``partner(row, view)`` -> ``(file key, start, rate)`` or None, the mixing
            partner the cache recorded (:meth:`EmbeddingCache.partner`), keys relative to
            ``audio_root``.
    """

    def __init__(self, segments: Sequence[Any], sample_rate: int, window_s: float,
                 max_samples: int = 32_000_000, views: Optional[ViewConfig] = None,
                 partner: Optional[Any] = None, audio_root: Optional[Path] = None) -> None:
        self.segments = segments
        self.sample_rate = int(sample_rate)
        self.window_s = float(window_s)
        self.window = seconds_to_samples(window_s, self.sample_rate)
        self.max_samples = max_samples
        self.views = views or ViewConfig()
        self.count = self.views.count  # views per segment
        self.partner, self.audio_root = partner, audio_root
        self._files = FileAudio(max_samples)  # decoded files, at the student's or file's rate

    def __call__(self, row: int, view: int = 0) -> np.ndarray:
        """float32 [W]: view ``view`` of segment ``row`` at the student's rate, zero-padded
        past the file's end (view 0: the clean segment)."""
        seg = self.segments[row]
        if view:
            return self._view(seg, row, view)
        wav = self._files(seg.path, self.sample_rate)
        start = int(round(seg.start * self.sample_rate / seg.file_sr))
        return cut_segment(wav, start, self.window)

    def _view(self, seg: Any, row: int, view: int) -> np.ndarray:
        """The audio the teacher saw for this view, at the student's rate."""
        p = self.partner(row, view) if self.partner is not None else None
        audio = None
        if p is not None:
            audio = partner_segment(self._files, Path(self.audio_root) / p[0], p[1], p[2],
                                    seg.file_sr, seconds_to_samples(self.window_s, seg.file_sr))
        return segment_view(self._files(seg.path, seg.file_sr), seg.file_sr,
                            (seg.file_key, seg.start), view, self.views, self.window_s,
                            self.sample_rate, audio)


def warn_upsampled(segments: Sequence[Any], sample_rate: int) -> None:
    """Warns once when any source file is recorded below the student's rate."""
    low = {str(s.path): s.file_sr for s in segments if s.file_sr < sample_rate}
    if low:
        rates = sorted(set(low.values()))
        warnings.warn(
            f"{len(low)} source file(s) (e.g. {next(iter(low))}) are recorded at "
            f"{', '.join(map(str, rates))} Hz, below the student's {sample_rate} Hz: they are "
            f"upsampled and the band above {rates[0] // 2} Hz is empty for them; consider a "
            f"front end at {rates[0]} Hz (mel.sample_rate and mel.f_max)", stacklevel=2)


class DistillDataset(torch.utils.data.Dataset):
    """Maps a key ``(epoch, position, row)`` to ``(key, x, target)``.

    ``x`` is the waveform float32 [W] at the student's rate of the key's view of segment
    ``row`` (:meth:`view_of`), or its log-mel float16 [n_mels, frames] when a mel file is
    given; ``target`` is the cached teacher embedding of that view, [D] (clip level) or
    [F, D] (frame level), as stored (float16/float32). ``targets`` and ``mel`` hold
    ``audio.count`` views of N segments view-major: item ``view * N + row``.
    ``targets`` and ``mel`` are arrays or row views (:class:`StackedRows`,
    :class:`JoinedTargets`).
    """

    def __init__(self, audio: SegmentAudio, targets: Any, mel: Optional[Any] = None,
                 seed: int = 0) -> None:
        self.audio = audio
        self.targets = targets
        self.mel = mel
        self.seed = int(seed)

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def view_of(self, key: Key) -> int:
        """The view of a key: uniform over the ``audio.count`` views, seeded by (seed, epoch,
        position); 0 for validation keys (epoch < 0) and caches without views."""
        if self.audio.count == 1 or key[0] < 0:
            return 0
        return int(np.random.default_rng([self.seed, key[0], key[1], 2]).integers(
            self.audio.count))

    def __getitem__(self, key: Key) -> Tuple[Key, np.ndarray, np.ndarray]:
        row = key[2]
        view = self.view_of(key)
        item = view * len(self.audio.segments) + row  # targets and mel rows: view-major
        x = self.mel[item] if self.mel is not None else self.audio(row, view)
        return key, np.asarray(x), np.asarray(self.targets[item])


class StackedRows:
    """Rows of several arrays [N_i, ...] one after another, read as one [sum N_i, ...] array
    (``stacked[row]``, ``stacked.shape``) without copying them (memmaps stay on disk)."""

    def __init__(self, parts: Sequence[np.ndarray]) -> None:
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [int(p.shape[0]) for p in self.parts])
        self.shape = (int(self.starts[-1]),) + tuple(self.parts[0].shape[1:])

    def __getitem__(self, row: int) -> np.ndarray:
        i = int(np.searchsorted(self.starts, row, side="right")) - 1
        return self.parts[i][row - int(self.starts[i])]


class JoinedTargets:
    """Targets of two kinds side by side: row r is ``concat(a[r], b[r])`` along the last axis,
    float32 [Da + Db], for 2-D ``a`` [N, Da] and ``b`` [N, Db] (e.g. the teacher's embedding
    and the previous student's). Mixup mixes both parts with the same weight."""

    def __init__(self, a: Any, b: Any) -> None:
        if a.shape[0] != b.shape[0] or len(a.shape) != 2 or len(b.shape) != 2:
            raise ValueError(f"targets of shapes {tuple(a.shape)} and {tuple(b.shape)} cannot "
                             f"be joined row by row")
        self.a, self.b = a, b
        self.shape = (int(a.shape[0]), int(a.shape[1]) + int(b.shape[1]))

    def __getitem__(self, row: int) -> np.ndarray:
        return np.concatenate([np.asarray(self.a[row], np.float32),
                               np.asarray(self.b[row], np.float32)])


class Collate:
    """Stacks items into ``(x [B, n_mels, frames] float32, target float32, rows int64)``.

    Waveforms become log-mel in one batched C++ call (:func:`pyssondo.log_mel`); then the
    augmentation is applied with generators seeded by each key. Mixup pairs items of the
    batch it is given: under torchrun that is the rank's share of the global batch.
    """

    def __init__(self, mel_cfg: MelConfig, augment: Augment = Augment(), seed: int = 0) -> None:
        self.cfg = mel_cfg
        self.augment = augment
        self.seed = int(seed)

    def __call__(self, items: List[Tuple[Key, np.ndarray, np.ndarray]]):
        from ..frontend import log_mel

        keys = [it[0] for it in items]
        xs = np.stack([it[1] for it in items])
        x = log_mel(xs, self.cfg) if xs.ndim == 2 else xs.astype(np.float32)
        y = np.stack([it[2] for it in items]).astype(np.float32)
        if self.augment.active:
            x, y = self.apply(x, y, keys)
        rows = torch.tensor([k[2] for k in keys], dtype=torch.int64)
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), rows

    def apply(self, x: np.ndarray, y: np.ndarray, keys: List[Key]) -> Tuple[np.ndarray, np.ndarray]:
        """Augments log-mel ``x`` [B, M, F] and targets ``y`` [B, ...] (returns new arrays)."""
        a, off = self.augment, self.cfg.log_offset
        silence = np.float32(np.log(off))
        energy = np.maximum(np.exp(x.astype(np.float64)) - off, 0.0)  # mel energies [B, M, F]
        y = y.copy()
        rngs = [np.random.default_rng([self.seed, k[0], k[1]]) for k in keys]
        if a.gain_db:
            db = np.array([r.uniform(-a.gain_db, a.gain_db) for r in rngs])
            energy *= ((10.0 ** (db / 20.0)) ** self.cfg.power)[:, None, None]
        if a.mixup and len(keys) > 1:
            batch_rng = np.random.default_rng([self.seed, keys[0][0], keys[0][1], 1])
            partner = np.roll(np.arange(len(keys)), 1 + int(batch_rng.integers(len(keys) - 1)))
            lam = batch_rng.beta(a.mixup, a.mixup, size=len(keys))
            lam = np.maximum(lam, 1.0 - lam)  # the item keeps the larger share
            energy = lam[:, None, None] * energy + (1 - lam)[:, None, None] * energy[partner]
            lam_y = lam.reshape(-1, *([1] * (y.ndim - 1)))
            y = (lam_y * y + (1 - lam_y) * y[partner]).astype(np.float32)
        out = np.log(energy + off).astype(np.float32)
        n_mels, frames = out.shape[1:]
        for i, r in enumerate(rngs):
            if a.freq_mask:
                w = int(r.integers(0, a.freq_mask + 1))
                s = int(r.integers(0, n_mels - w + 1))
                out[i, s:s + w, :] = silence
            if a.time_mask:
                w = int(r.integers(0, min(a.time_mask, frames) + 1))
                s = int(r.integers(0, frames - w + 1))
                out[i, :, s:s + w] = silence
        return out, y


class KeyBatches:
    """Batches of keys for epochs ``first_epoch .. epochs - 1``, lazily, in training order.

    Epoch e's order is the sampler's stream after ``set_epoch(e)`` (indices into ``rows``, the
    cache rows of the training set), continuing from the sampler's position: after
    ``sampler.load_state_dict`` of a mid-epoch checkpoint, the first epoch resumes where it
    stopped. ``len()`` assumes the sampler starts at a multiple of ``batch_size``.

    With ``world_size`` > 1 (one process of a torchrun launch) each global batch of
    ``batch_size`` keys is cut into ``world_size`` contiguous shares and rank ``rank`` gets
    share ``rank``: the global batches, hence the data each step sees, do not depend on the
    number of processes (except mixup pairs, drawn within each share; see :class:`Collate`).
    """

    def __init__(self, sampler: Any, rows: np.ndarray, batch_size: int, first_epoch: int,
                 epochs: int, rank: int = 0, world_size: int = 1) -> None:
        if batch_size % world_size:
            raise ParameterError(f"--batch-size {batch_size} cannot be split over "
                                 f"{world_size} processes; give a multiple of {world_size}")
        self.sampler, self.rows, self.batch_size = sampler, rows, batch_size
        self.first_epoch, self.epochs = first_epoch, epochs
        share = batch_size // world_size
        self._share = slice(rank * share, (rank + 1) * share)
        self._skip = sampler.position if sampler.epoch == first_epoch else 0

    def __len__(self) -> int:
        per_epoch = len(self.sampler) // self.batch_size
        return max(0, (self.epochs - self.first_epoch) * per_epoch - self._skip // self.batch_size)

    def __iter__(self) -> Iterator[List[Key]]:
        for epoch in range(self.first_epoch, self.epochs):
            self.sampler.set_epoch(epoch)
            first = self.sampler.position
            order = np.fromiter(iter(self.sampler), dtype=np.int64)
            for i in range(0, len(order) - self.batch_size + 1, self.batch_size):
                yield [(epoch, first + j, int(self.rows[order[j]]))
                       for j in range(i, i + self.batch_size)[self._share]]


def fixed_batches(rows: np.ndarray, batch_size: int) -> List[List[Key]]:
    """Batches of keys over ``rows`` in order (validation: no sampling, no augmentation)."""
    keys = [(-1, i, int(r)) for i, r in enumerate(rows)]
    return [keys[i:i + batch_size] for i in range(0, len(keys), batch_size)]


def make_loader(dataset: DistillDataset, batches: Iterable[List[Key]], collate: Collate,
                workers: int, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader over precomputed key batches.

    It has its own ``generator`` so creating it does not consume the global torch RNG (which
    the model's dropout uses): a resumed run draws the same dropout masks as an uninterrupted
    one. Workers use one C++/torch thread each, so they do not fight the model for cores.
    ``pin_memory`` (for a CUDA model) lets batches copy to the GPU asynchronously.
    """
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, collate_fn=collate, num_workers=workers,
        worker_init_fn=_worker_init if workers else None, generator=torch.Generator(),
        persistent_workers=False, prefetch_factor=4 if workers else None, pin_memory=pin_memory)


def _worker_init(_: int) -> None:
    from ..threads import set_num_threads

    torch.set_num_threads(1)
    set_num_threads(1)


def split_by_file(segments: Sequence[Any], fraction: float, seed: int
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """Rows of the training and validation sets; whole files are held out (no leakage).

    With ``fraction > 0`` and at least two files, ``max(1, round(fraction * files))`` files
    (chosen by a seeded shuffle of the sorted file keys) go to validation.
    """
    files = sorted({s.file_key for s in segments})
    n_val = 0
    if fraction > 0 and len(files) >= 2:
        n_val = min(len(files) - 1, max(1, int(round(fraction * len(files)))))
    perm = np.random.default_rng(seed).permutation(len(files))
    held = {files[i] for i in perm[:n_val]}
    is_val = np.array([s.file_key in held for s in segments], dtype=bool)
    return np.flatnonzero(~is_val).astype(np.int64), np.flatnonzero(is_val).astype(np.int64)


def mel_cache_path(cache_dir: Path, audio: SegmentAudio, cfg: MelConfig,
                   ids: Sequence[Any]) -> Path:
    """Where the log-mel file of these segments lives: ``mel-<hash>.npy`` in the cache folder,
    keyed by the front-end settings, the window, the segment ids and the views (if any)."""
    settings = {"mel": cfg.to_dict(), "window": audio.window,
                "ids": [list(map(str, i)) for i in ids]}
    if audio.views.active:
        settings["views"] = [audio.count, audio.views.settings_hash()]
    key = json.dumps(settings, sort_keys=True)
    return Path(cache_dir) / f"mel-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy"


def mel_cache_bytes(n_segments: int, audio: SegmentAudio, cfg: MelConfig) -> int:
    """Size in bytes of the float16 log-mel of ``n_segments`` segments (each of its views)."""
    return 2 * n_segments * audio.count * cfg.n_mels * cfg.num_frames(audio.window)


def want_mel_cache(setting: str, path: Path, n_bytes: int) -> bool:
    """Resolves ``cache_mel``: "on", "off", or "auto" = on when the file exists already or
    needs at most a quarter of the free space on its disk."""
    if setting != "auto":
        return setting == "on"
    if path.is_file():
        return True
    return n_bytes <= shutil.disk_usage(path.parent).free // 4


def mel_cache(path: Path, audio: SegmentAudio, cfg: MelConfig, batch_size: int = 32
              ) -> np.ndarray:
    """The float16 log-mel of every cache segment, [K N, n_mels, frames] (K = ``audio.count``
    views, view-major), memory-mapped.

    Computed once (batched C++ log-mel with the process's threads) into a temporary name next
    to ``path`` and renamed when complete; later runs map the finished file.
    """
    from ..frontend import log_mel

    if path.is_file():
        return np.load(path, mmap_mode="r")
    n = len(audio.segments) * audio.count
    frames = cfg.num_frames(audio.window)
    per_view = len(audio.segments)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16,
                                    shape=(n, cfg.n_mels, frames))
    try:
        with Progress(n, desc="log-mel cache", unit="seg") as bar:
            for i in range(0, n, batch_size):
                rows = range(i, min(n, i + batch_size))
                out[i:i + len(rows)] = log_mel(np.stack([audio(r % per_view, r // per_view)
                                                         for r in rows]), cfg)
                bar.update(len(rows))
        out.flush()
        del out
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return np.load(path, mmap_mode="r")
