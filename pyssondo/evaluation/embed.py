"""Clip embeddings of a labeled dataset, from any model or from the log-mel baseline.

A model is anything :func:`pyssondo.loading.load_model` loads (an exported student, a teacher
file, ``pkg.mod:fn``): each file is decoded at the model's rate, cut into windows of
``window_s`` seconds (:func:`pyssondo.segments.plan_segments`, hop = window), each window is fed
at its true length (a short clip is not padded to the window, so a 1 s clip is not 90 %
silence), frame outputs [B, F, D] are averaged over frames, and the windows of a file are
averaged into one [D] vector. Windows of equal length from different files share a batch. An
exported student embeds each of those windows as it would alone (cut into its own, shorter
windows, pooled by real samples), but its own windows from all files share calls of
``batch_size`` (:func:`pyssondo.window_batches.embed_files`): the same numbers, without a call
per file when the files' lengths differ.

``logmel`` is the DEAR baseline: the time-averaged log-mel spectrum, [n_mels], of the file
resampled to 32 kHz with the default :class:`pyssondo.MelConfig`, computed by
:func:`pyssondo.log_mel` and never through the model path.

Embeddings are cached on disk per (model fingerprint, sample rate, window, file list with sizes
and modification times) as one ``.npz`` written atomically (:func:`cached_embeddings`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..atomic import atomic_open
from ..audio import load_audio, resample
from ..errors import AudioError, ParameterError
from ..frontend import MelConfig
from ..loading import describe_files
from ..progress import Progress
from ..segments import plan_segments, seconds_to_samples
from ..window_batches import embed_files, student_segments, student_window

LOGMEL = "logmel"
_LOGMEL_ID = "ssondo-eval-logmel-mean-v1"
_CACHE_VERSION = 1


@dataclass
class Embedder:
    """A waveform-to-vector function with the facts a report needs.

    Attributes:
        name: short id shown in tables.
        source: the spec it was opened from.
        fingerprint: sha256 hex identifying the model's weights (keys the cache).
        sample_rate: input rate in Hz.
        params: parameter count (0 for the baseline).
        embed_batch: float32 [B, T] (equal lengths), and optionally the files they come
            from (for messages) -> finite float32 [B, D].
        meta: the model's ``ssondo.json`` (empty when absent).
        window: an exported student's window W in samples, else None.
        embed_windows: with ``window``: float32 [B, W] windows and the files they come from
            -> the student's window embeddings [B, D] (its ``segments``).
    """

    name: str
    source: str
    fingerprint: str
    sample_rate: int
    params: int
    embed_batch: Callable[..., np.ndarray]
    meta: Dict[str, Any] = field(default_factory=dict)
    window: Optional[int] = None
    embed_windows: Optional[Callable[[np.ndarray, List[Any]], np.ndarray]] = None


def logmel_embedding(wav: np.ndarray, cfg: MelConfig = MelConfig()) -> np.ndarray:
    """Time-averaged log-mel of float32 [T] (at ``cfg.sample_rate``) or [B, T]:
    float32 [n_mels] or [B, n_mels]."""
    from ..frontend import log_mel

    return log_mel(np.ascontiguousarray(wav, dtype=np.float32), cfg).mean(axis=-1)


def open_embedder(spec: str, sample_rate: Optional[int] = None, *, device: str = "cpu",
                  role: str = "model") -> Embedder:
    """``logmel`` or any model :func:`pyssondo.loading.load_model` accepts.

    Args:
        spec: ``logmel``, a TorchScript file, or ``pkg.mod:fn``.
        sample_rate: overrides the model's rate (Hz); not allowed for ``logmel``.
        device: torch device the model runs on.
        role: word used in error messages.
    """
    if spec == LOGMEL:
        if sample_rate:
            raise ParameterError(f"--sr {sample_rate}: the logmel baseline is fixed at "
                                 f"{MelConfig().sample_rate} Hz")
        cfg = MelConfig()
        return Embedder(name=LOGMEL, source=LOGMEL,
                        fingerprint=hashlib.sha256((_LOGMEL_ID + cfg.to_json()).encode()).hexdigest(),
                        sample_rate=cfg.sample_rate, params=0,
                        embed_batch=lambda x, names="": logmel_embedding(x, cfg))
    import torch

    from ..loading import forward_checked, load_model

    model = load_model(spec, sample_rate, device=device, role=role)
    module = model.module

    def embed_batch(x: np.ndarray, names: str = "the given audio") -> np.ndarray:
        wav = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
        out = forward_checked(module, wav, what=f"{role} {spec}", names=names)
        if out.dim() == 3:
            out = out.mean(dim=1)
        return out.float().cpu().numpy()

    params = int(sum(p.numel() for p in module.parameters()))
    window = student_window(model.meta, module)
    return Embedder(name=model.name, source=model.source, fingerprint=model.fingerprint,
                    sample_rate=model.sample_rate, params=params, embed_batch=embed_batch,
                    meta=model.meta, window=window,
                    embed_windows=None if window is None else
                    student_segments(module, f"{role} {spec}", device))


def compute_embeddings(embedder: Embedder, paths: Sequence[Path], *, window_s: float = 10.0,
                       batch_size: int = 16, progress: bool = True
                       ) -> Tuple[np.ndarray, np.ndarray]:
    """Embeds every file: mean over its windows of the model's (frame-averaged) output.

    Args:
        paths: audio files.
        window_s: window length in seconds; longer files give several windows.
        batch_size: windows per forward call (windows of equal length only).

    Returns:
        (embeddings float32 [N, D], ok bool [N]); a file that fails to decode is warned about,
        marked not ok and left as zeros. Files below the model's rate are upsampled, with one
        warning per rate.
    """
    if batch_size < 1:
        raise ParameterError(f"batch_size={batch_size} must be >= 1")
    if not window_s > 0:
        raise ParameterError(f"window_s={window_s} must be > 0 seconds")
    window = seconds_to_samples(window_s, embedder.sample_rate)
    sums: List[Optional[np.ndarray]] = [None] * len(paths)
    counts = np.zeros(len(paths), dtype=np.int64)
    pending: Dict[int, List[Tuple[int, np.ndarray]]] = {}  # window length -> [(file, samples)]

    def add(i: int, row: np.ndarray) -> None:
        sums[i] = row.astype(np.float64) if sums[i] is None else sums[i] + row
        counts[i] += 1

    def flush(length: int) -> None:
        items = pending.pop(length)
        out = embedder.embed_batch(np.stack([w for _, w in items]),
                                   describe_files(paths[i] for i, _ in items))
        for (i, _), row in zip(items, out):
            add(i, row)

    upsampled: Dict[int, int] = {}  # file rate below the model's -> file count

    def windows(bar: Progress) -> Iterator[Tuple[int, np.ndarray]]:
        """(file number, samples) of every window of every file that decodes."""
        for i, path in enumerate(paths):
            try:
                wav, file_sr = load_audio(path)
                if file_sr != embedder.sample_rate:
                    wav = resample(wav, file_sr, embedder.sample_rate)
            except AudioError as e:
                warnings.warn(f"{e}; skipped", stacklevel=2)
                bar.update(1)
                continue
            if file_sr < embedder.sample_rate:
                upsampled[file_sr] = upsampled.get(file_sr, 0) + 1
            for start, length in plan_segments(len(wav), window, window):
                yield i, wav[start:start + length]
            bar.update(1)

    with Progress(len(paths), desc=f"embed {embedder.name}", unit="file",
                  enabled=None if progress else False) as bar:
        if embedder.embed_windows is not None:
            def student_windows(x: np.ndarray, files: List[int]) -> np.ndarray:
                return embedder.embed_windows(x, [paths[i] for i in files])

            for i, row in embed_files(student_windows, windows(bar), embedder.window,
                                      batch_size):
                add(i, row)
        else:
            for i, samples in windows(bar):
                pending.setdefault(len(samples), []).append((i, samples))
                if len(pending[len(samples)]) >= batch_size:
                    flush(len(samples))
                if sum(len(v) for v in pending.values()) > 4 * batch_size:
                    for length in list(pending):
                        flush(length)
            for length in list(pending):
                flush(length)
    for rate, n in sorted(upsampled.items()):
        warnings.warn(f"{embedder.name}: {n} file(s) recorded at {rate} Hz are upsampled to "
                      f"{embedder.sample_rate} Hz; the band above {rate // 2} Hz is empty",
                      stacklevel=2)
    ok = counts > 0
    if not ok.any():
        raise ValueError(f"{embedder.name}: none of the {len(paths)} files could be embedded")
    dim = next(s.shape[0] for s in sums if s is not None)
    emb = np.zeros((len(paths), dim), dtype=np.float32)
    for i in np.flatnonzero(ok):
        emb[i] = sums[i] / counts[i]
    return emb, ok


def cache_key(embedder: Embedder, paths: Sequence[Path], window_s: float) -> str:
    """sha256 hex of the model fingerprint, its rate, the window and each file's absolute
    path, size and modification time: any change to the model or the files changes it."""
    files = []
    for p in paths:
        st = os.stat(p)
        files.append([os.path.abspath(p), st.st_size, st.st_mtime_ns])
    text = json.dumps({"version": _CACHE_VERSION, "model": embedder.fingerprint,
                       "sample_rate": embedder.sample_rate, "window_s": window_s,
                       "files": files}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def cached_embeddings(embedder: Embedder, paths: Sequence[Path], cache_dir: Optional[Path], *,
                      window_s: float = 10.0, batch_size: int = 16, progress: bool = True
                      ) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`compute_embeddings`, reusing ``cache_dir/<model>-<key>.npz`` when present.

    This is the one place that decides where embeddings come from; moving eval onto the
    teacher-cache machinery (``pyssondo.cache.build_cache`` with a file list, then the
    segments' rows mean-pooled per file) replaces this function's body only.
    """
    if cache_dir is None:
        return compute_embeddings(embedder, paths, window_s=window_s, batch_size=batch_size,
                                  progress=progress)
    key = cache_key(embedder, paths, window_s)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", embedder.name)[:40]
    path = Path(cache_dir) / f"{safe}-{key[:20]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) == key:
                    return z["emb"].astype(np.float32), z["ok"].astype(bool)
        except (OSError, ValueError, KeyError):
            warnings.warn(f"{path}: unreadable embedding cache, recomputing", stacklevel=2)
    emb, ok = compute_embeddings(embedder, paths, window_s=window_s, batch_size=batch_size,
                                 progress=progress)
    with atomic_open(path, "wb") as f:
        np.savez(f, key=np.array(key), emb=emb, ok=ok)
    return emb, ok
