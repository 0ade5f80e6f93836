"""Batch-norm statistics recomputed on audio, for a student whose weights were merged.

The running means and variances of a merged student belong to none of its parents. Here they
are recomputed: every batch-norm layer's statistics are reset and its momentum set to None
(a cumulative average: after N batches, running_mean is the mean over batches of each batch's
per-channel mean, running_var the mean of each batch's unbiased per-channel variance); the
student runs forward, without gradients, with its batch-norm layers in training mode (they
normalise with the batch's statistics, as during training) and everything else in eval mode
(no dropout); then momenta and eval mode are restored. The weights do not change.

The audio: files of one or more folders, decoded, resampled to the front end's rate, cut into
windows of the training window (a short clip or a tail is zero-padded, as in training), at most
:data:`MAX_WINDOWS` of them, in a seeded random order (so batches mix files), turned into
log-mel by :func:`pyssondo.log_mel`.
"""
from __future__ import annotations

import os
import warnings
from typing import Iterable, Iterator, List, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..audio import load_audio, resample
from ..errors import AudioError, ParameterError
from ..frontend import MelConfig
from ..segments import cut_segment, plan_segments, seconds_to_samples

PathLike = Union[str, "os.PathLike[str]"]
MAX_WINDOWS = 2048  # windows used for recalibration at most (64 batches of 32)


def batchnorm_layers(module: nn.Module) -> List[nn.modules.batchnorm._BatchNorm]:
    """The batch-norm layers of ``module`` that keep running statistics."""
    return [m for m in module.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(module: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Recomputes the batch-norm statistics of ``module`` from ``batches`` (each an input
    batch, e.g. log-mel [B, M, F]); see the module docstring. Returns the number of batches.

    Raises:
        ValueError: ``module`` has no batch-norm layer, or ``batches`` is empty.
    """
    layers = batchnorm_layers(module)
    if not layers:
        raise ValueError(f"{module.__class__.__name__} has no batch-norm layers to recalibrate")
    momenta = [m.momentum for m in layers]
    was_training = module.training
    n = 0
    try:
        module.eval()
        for m in layers:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        for x in batches:
            module(x)
            n += 1
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        module.train(was_training)
    if n == 0:
        raise ValueError("recalibration: no batches of audio")
    return n


def audio_windows(audio_dirs: Sequence[PathLike], sample_rate: int, window_s: float, *,
                  max_windows: int = MAX_WINDOWS, seed: int = 0) -> np.ndarray:
    """Windows of the audio files under ``audio_dirs`` at ``sample_rate``, float32 [N, W]
    (W = window_s seconds, N <= max_windows): files are decoded in a random order fixed by
    ``seed`` until ``max_windows`` windows are collected, then the windows are shuffled. A file
    that does not decode is warned about and skipped.

    Raises:
        FileNotFoundError / ValueError: no such folder, no audio in it, or none decodes.
    """
    from ..cache.scan import scan_audio

    if max_windows < 1:
        raise ParameterError(f"max_windows {max_windows} is invalid: expected >= 1")
    files = [path for d in audio_dirs for _, path in scan_audio(d)[1]]
    rng = np.random.default_rng(seed)
    window = seconds_to_samples(window_s, sample_rate)
    rows: List[np.ndarray] = []
    for i in rng.permutation(len(files)):
        try:
            wav, sr = load_audio(files[i])
        except AudioError as e:
            warnings.warn(f"{e}; skipped", stacklevel=2)
            continue
        if sr != sample_rate:
            wav = resample(wav, sr, sample_rate)
        rows += [cut_segment(wav, start, window)
                 for start, _ in plan_segments(len(wav), window, window)]
        if len(rows) >= max_windows:
            break
    if not rows:
        raise ValueError(f"{', '.join(map(str, audio_dirs))}: no audio could be decoded for "
                         f"batch-norm recalibration")
    return np.stack(rows[:max_windows])[rng.permutation(min(len(rows), max_windows))]


def log_mel_batches(windows: np.ndarray, mel: MelConfig, batch_size: int = 32
                    ) -> Iterator[torch.Tensor]:
    """Log-mel [B, M, F] float32 tensors of consecutive ``batch_size`` rows of ``windows``."""
    from ..frontend import log_mel

    if batch_size < 1:
        raise ParameterError(f"batch size {batch_size} is invalid: expected >= 1")
    for i in range(0, len(windows), batch_size):
        yield torch.from_numpy(log_mel(np.ascontiguousarray(windows[i:i + batch_size]), mel))
