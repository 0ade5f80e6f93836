"""The window and the mel filterbank of a :class:`~pyssondo.frontend.MelConfig`, in numpy.

Both front ends (the C++ core behind :func:`pyssondo.frontend.log_mel` and the torch module
:class:`pyssondo.frontend.LogMel`) take these arrays instead of computing their own, so the
two cannot disagree. The mel filterbank follows ``librosa.filters.mel`` (``htk=``, ``norm=``).
"""
from __future__ import annotations

import numpy as np

from .config import MelConfig

# Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above.
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray, scale: str) -> np.ndarray:
    """Frequencies in Hz -> mels on the "slaney" or "htk" scale (float64)."""
    hz = np.asarray(hz, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + hz / 700.0)
    log_part = _MIN_LOG_MEL + np.log(np.maximum(hz, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(hz >= _MIN_LOG_HZ, log_part, hz / _F_SP)


def mel_to_hz(mel: np.ndarray, scale: str) -> np.ndarray:
    """Mels on the "slaney" or "htk" scale -> Hz (float64); the inverse of :func:`hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    log_part = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mel - _MIN_LOG_MEL))
    return np.where(mel >= _MIN_LOG_MEL, log_part, _F_SP * mel)


def mel_filterbank(cfg: MelConfig) -> np.ndarray:
    """Triangular mel filters, float32 [n_mels, n_fft // 2 + 1] (rows: bands, columns: FFT bins).

    n_mels + 2 edge frequencies are spaced evenly in mels from f_min to f_max; band m rises
    linearly from edge m to edge m + 1 and falls to edge m + 2 (weights on the bins' centre
    frequencies k * sample_rate / n_fft). With mel_norm "slaney", band m is divided by half
    its width in Hz, (edge[m + 2] - edge[m]) / 2, so every band has unit area.
    Same definition as ``librosa.filters.mel(htk=cfg.mel_scale == "htk", norm=...)``.
    """
    cfg.validate()
    bin_hz = np.arange(cfg.n_fft // 2 + 1) * (cfg.sample_rate / cfg.n_fft)
    edges = mel_to_hz(np.linspace(hz_to_mel(cfg.f_min, cfg.mel_scale),
                                  hz_to_mel(cfg.f_max, cfg.mel_scale), cfg.n_mels + 2),
                      cfg.mel_scale)
    width = np.diff(edges)
    rel = edges[:, None] - bin_hz[None, :]
    rising = -rel[:-2] / width[:-1, None]
    falling = rel[2:] / width[1:, None]
    fb = np.maximum(0.0, np.minimum(rising, falling))
    if cfg.mel_norm == "slaney":
        fb *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return np.ascontiguousarray(fb, dtype=np.float32)


def window(cfg: MelConfig) -> np.ndarray:
    """Analysis window, float32 [n_fft]: the periodic window of win_length samples, centred
    with zeros on both sides ((n_fft - win_length) // 2 on the left), as torch.stft pads it.
    """
    cfg.validate()
    n = cfg.win_length
    phase = 2.0 * np.pi * np.arange(n) / n
    if cfg.window == "hann":
        w = 0.5 - 0.5 * np.cos(phase)
    elif cfg.window == "hamming":
        w = 0.54 - 0.46 * np.cos(phase)
    else:
        w = np.ones(n)
    out = np.zeros(cfg.n_fft, dtype=np.float32)
    left = (cfg.n_fft - n) // 2
    out[left:left + n] = w
    return out


def dft_basis(cfg: MelConfig) -> np.ndarray:
    """The windowed real DFT as a matrix, float32 [2 * (n_fft // 2 + 1), n_fft].

    Row k (k < K = n_fft // 2 + 1) is ``window(cfg)[n] * cos(2 pi k n / n_fft)`` and row K + k
    is ``-window(cfg)[n] * sin(2 pi k n / n_fft)``, so ``basis @ frame`` gives the real and
    imaginary parts of ``rfft(window * frame)``: the STFT as one matmul (or a 1-D convolution
    with stride hop_length) for runtimes without FFT ops. Computed in float64, then rounded.
    """
    k = np.arange(cfg.n_fft // 2 + 1, dtype=np.float64)[:, None]
    n = np.arange(cfg.n_fft, dtype=np.float64)[None, :]
    # Reduce k * n modulo n_fft before scaling, so the phase stays exact for large n_fft.
    phase = 2.0 * np.pi * np.remainder(k * n, cfg.n_fft) / cfg.n_fft
    w = window(cfg).astype(np.float64)[None, :]
    return np.ascontiguousarray(np.concatenate([w * np.cos(phase), -w * np.sin(phase)]),
                                dtype=np.float32)
