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


def dft_factors(n_fft: int) -> "tuple[int, int]":
    """(N1, N2) with N1 * N2 = n_fft, N1 the largest divisor <= sqrt(n_fft): the split of the
    factored DFT (:func:`factored_dft`); a prime n_fft gives (1, n_fft), a plain DFT."""
    n1 = int(np.sqrt(n_fft))
    while n_fft % n1:
        n1 -= 1
    return n1, n_fft // n1


def factored_dft(cfg: MelConfig) -> "tuple[np.ndarray, np.ndarray, np.ndarray]":
    """The real DFT of n_fft = N1 * N2 points as two small matrix products (one Cooley-Tukey
    split, :func:`dft_factors`), for runtimes without FFT ops.

    With sample n = n1 + N1 n2 and bin k = N2 k1 + k2, ``rfft(frame)[k]`` is
    ``sum_n1 W_N^(n1 k) [sum_n2 W_N2^(n2 k2) frame[n]]`` (W_M^a = exp(-2 pi i a / M)), and
    W_N^(n1 k) = W_N1^(n1 k1) W_N^(n1 k2). Returns float32 arrays:

    - ``first`` [2 N2, N2]: the inner sum over n2, rows (k2, re) and (k2, im) interleaved, so
      that its product with the frames as [N2, N1 x frames] reads as [N2, (re|im, n1), frames].
    - ``outer`` [2, K1, N1] (K1 = N1 // 2 + 1: k1 < K1 covers every bin up to n_fft // 2) and
      ``twiddle`` [2, N2, N1]: W_N1^(n1 k1) and W_N^(n1 k2) as (cos, -sin). For each k2 their
      product is the outer sum's complex matrix; :class:`DftLogMel` multiplies them out on
      every call, so a file stores 2 N1 (K1 + N2) numbers instead of 4 K1 N1 N2.

    2 N2 N + 4 K1 N2 N1 multiply-adds a frame (0.14M at n_fft 1024, against 1.05M for a
    dense DFT matrix). Computed in float64 from exact integer phases, then rounded.
    """
    n1, n2 = dft_factors(cfg.n_fft)

    def unit(a: np.ndarray, m: int) -> np.ndarray:  # W_m^a as [2, ...] (cos, -sin)
        phase = 2.0 * np.pi * np.remainder(a, m) / m
        return np.stack([np.cos(phase), -np.sin(phase)])

    first = unit(np.outer(np.arange(n2), np.arange(n2)), n2)  # [2, k2, n2]
    outer = unit(np.outer(np.arange(n1 // 2 + 1), np.arange(n1)), n1)  # [2, k1, n1]
    twiddle = unit(np.outer(np.arange(n2), np.arange(n1)), cfg.n_fft)  # [2, k2, n1]
    first = first.transpose(1, 0, 2).reshape(2 * n2, n2)  # rows (k2, re|im)
    return tuple(np.ascontiguousarray(a, dtype=np.float32) for a in (first, outer, twiddle))
