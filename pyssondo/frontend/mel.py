"""Log-mel spectrograms with the C++ core: numpy in, numpy out, batched and threaded.

The torch twin for training and export is :class:`pyssondo.frontend.LogMel`; both use the
window and filterbank of :mod:`pyssondo.frontend.filters` and give the same numbers within 1e-3.
"""
from __future__ import annotations

import functools

import numpy as np

from ..errors import ParameterError
from .config import MelConfig


@functools.lru_cache(maxsize=16)
def _plan(cfg: MelConfig):
    """The C++ plan (FFT tables, sparse filterbank) for ``cfg``, built once per config."""
    from .. import _core
    from .filters import mel_filterbank, window

    return _core.LogMelPlan(window(cfg), mel_filterbank(cfg), cfg.hop_length, bool(cfg.center),
                            cfg.pad_mode, int(cfg.power), float(cfg.log_offset))


def log_mel(wav: np.ndarray, cfg: MelConfig = MelConfig()) -> np.ndarray:
    """log(mel + cfg.log_offset) of mono audio, computed by the C++ core.

    Args:
        wav: float array, [T] or [B, T] (B signals of T >= 1 samples at cfg.sample_rate, in
            [-1, 1] by convention); converted to C-contiguous float32.
        cfg: the front-end settings (default: S-SONDO's).

    Returns:
        float32 [n_mels, frames] for [T] input, [B, n_mels, frames] for [B, T], with
        frames = cfg.num_frames(T) (a signal shorter than n_fft gives one zero-padded frame).
        Threads: :func:`pyssondo.set_num_threads`.

    Raises:
        ParameterError: wav is not a 1-D/2-D real float array or has no samples.
    """
    if not isinstance(cfg, MelConfig):
        raise ParameterError(f"log_mel: cfg must be a MelConfig, got {type(cfg).__name__}")
    x = np.asarray(wav)
    if x.ndim not in (1, 2):
        raise ParameterError(f"log_mel: wav must be [T] or [B, T], got shape {x.shape}")
    if x.dtype.kind != "f":
        raise ParameterError(f"log_mel: wav must be a float array, got dtype {x.dtype}")
    if x.shape[-1] < 1:
        raise ParameterError(f"log_mel: wav has shape {x.shape}; need T >= 1 samples")
    batch = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)
    out = _plan(cfg)(batch)
    return out[0] if x.ndim == 1 else out
