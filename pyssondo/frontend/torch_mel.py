"""LogMel: the log-mel front end as a TorchScript-able ``nn.Module`` (torch.stft, no torchaudio).

It is the front end inside exported students and the torch twin of
:func:`pyssondo.frontend.log_mel` (C++): same window and filterbank
(:mod:`pyssondo.frontend.filters`), same padding and framing
(:meth:`MelConfig.num_frames`), same numbers within 1e-3. :class:`DftLogMel` computes the same
log-mel with the STFT as a strided 1-D convolution over a fixed DFT basis
(:func:`pyssondo.frontend.filters.dft_basis`), for runtimes without FFT ops (ONNX opsets < 17,
CoreML, TFLite, ExecuTorch); :func:`make_frontend` picks one by name (:data:`FRONTENDS`).
"""
from typing import List

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ParameterError
from .config import FRONTENDS, MelConfig
from .filters import dft_basis, mel_filterbank, window

# Mel bands per block of the banded filterbank product (:func:`band_blocks`): 16 of 128 bands
# per matmul cut the mel step from 0.52 to 0.19 ms per 10 s at 32 kHz (1 thread); 8 and 32
# were slower (more calls, more zeros).
BANDS_PER_BLOCK = 16


def band_blocks(fb: np.ndarray, rows: int = BANDS_PER_BLOCK) -> List[List[int]]:
    """[first band, end band, first bin, end bin] of consecutive groups of ``rows`` mel bands
    of ``fb`` [n_mels, bins]: each group's filters are zero outside its bin range, so
    ``fb @ power`` equals the concatenation of the groups' ``fb[r0:r1, c0:c1] @ power[c0:c1]``
    (a band's filter covers a few neighbouring bins: about 13% of the dense product at the
    defaults). An all-zero group keeps one bin."""
    blocks = []
    for r0 in range(0, fb.shape[0], rows):
        r1 = min(r0 + rows, fb.shape[0])
        cols = np.flatnonzero(fb[r0:r1].any(axis=0))
        c0, c1 = (int(cols[0]), int(cols[-1]) + 1) if cols.size else (0, 1)
        blocks.append([r0, r1, c0, c1])
    return blocks


class LogMel(nn.Module):
    """log(mel + log_offset) of a batch of mono signals.

    Input: float32 [B, T] at cfg.sample_rate, T >= 1 (a single signal must be passed as
    [1, T]). Output: float32 [B, n_mels, frames], frames = cfg.num_frames(T).

    Padding: with cfg.center, n_fft // 2 samples on the left and n_fft - n_fft // 2 on the
    right, mode "reflect" (numpy's np.pad reflect, repeated for signals shorter than the pad)
    or "constant" (zeros); without centering a signal shorter than n_fft is zero-padded on the
    right to one frame. The window and the filterbank are buffers (computed once from cfg; the
    filterbank as its non-zero entries, :meth:`filterbank`), applied block by block over the
    bins each group of bands covers (:func:`band_blocks`).
    Attribute ``cfg_json`` holds the config (:meth:`MelConfig.from_json` restores it).
    Works eagerly and under ``torch.jit.script``.
    """

    cfg_json: str
    bands: List[List[int]]

    def __init__(self, cfg: MelConfig = MelConfig()) -> None:
        super().__init__()
        self.cfg_json = cfg.to_json()
        self.n_fft = cfg.n_fft
        self.hop_length = cfg.hop_length
        self.center = bool(cfg.center)
        self.reflect = cfg.pad_mode == "reflect"
        self.magnitude = cfg.power == 1.0
        self.log_offset = float(cfg.log_offset)
        self.register_buffer("window", torch.from_numpy(window(cfg)))
        dense = mel_filterbank(cfg)
        self.bands = band_blocks(dense)
        fb = torch.from_numpy(dense)
        self.fb_shape = [int(fb.shape[0]), int(fb.shape[1])]
        flat = fb.flatten()
        index = flat.nonzero().squeeze(1)
        self.register_buffer("filterbank_index", index)
        self.register_buffer("filterbank_values", flat[index])

    def filterbank(self) -> Tensor:
        """The mel filterbank, float32 [n_mels, n_fft // 2 + 1], rebuilt from its non-zero
        entries (about 1% of it: an exported file holds those, not 263 KB of zeros)."""
        rows, cols = self.fb_shape[0], self.fb_shape[1]
        dense = torch.zeros(rows * cols, dtype=self.filterbank_values.dtype,
                            device=self.filterbank_values.device)
        return dense.scatter(0, self.filterbank_index, self.filterbank_values).view(rows, cols)

    def forward(self, wav: Tensor) -> Tensor:
        if wav.dim() != 2 or wav.size(1) < 1:
            raise ValueError("LogMel expects a [B, T] tensor with T >= 1 samples")
        power = self._power(self._pad(wav))
        fb = self.filterbank()
        mel = torch.cat([torch.matmul(fb[b[0]:b[1], b[2]:b[3]], power[:, b[2]:b[3]])
                         for b in self.bands], dim=1)
        return torch.log(mel + self.log_offset)

    def _power(self, x: Tensor) -> Tensor:
        """Padded signals [B, T'] -> magnitude or power spectrogram [B, n_fft // 2 + 1, frames]."""
        spec = torch.stft(x, self.n_fft, self.hop_length, win_length=self.n_fft,
                          window=self.window, center=False, return_complex=True)
        if self.magnitude:
            return spec.abs()
        return spec.real.square() + spec.imag.square()

    def _pad(self, wav: Tensor) -> Tensor:
        t = wav.size(1)
        if not self.center:
            if t < self.n_fft:
                return nn.functional.pad(wav, [0, self.n_fft - t])
            return wav
        left = self.n_fft // 2
        right = self.n_fft - left
        if not self.reflect:
            return nn.functional.pad(wav, [left, right])
        idx = torch.arange(-left, t + right, device=wav.device)
        if t == 1:
            idx = torch.zeros_like(idx)
        else:
            period = 2 * (t - 1)
            idx = torch.remainder(idx, period)
            idx = torch.where(idx >= t, period - idx, idx)
        return wav.index_select(1, idx)


class DftLogMel(LogMel):
    """:class:`LogMel` with the STFT computed as ``conv1d(x, basis, stride=hop_length)``.

    ``basis`` (buffer, float32 [2K, 1, n_fft], K = n_fft // 2 + 1) is
    :func:`pyssondo.frontend.filters.dft_basis`: the same window as :class:`LogMel`, folded into
    the cosine and sine rows. Same input, output, padding and framing as :class:`LogMel`; equal to
    it within float32 rounding (about 1e-5 on log-mel). Costs 2K * n_fft multiply-adds per
    frame instead of an FFT's O(n_fft log n_fft), but needs only Conv, Mul, Add, MatMul and Log.
    """

    def __init__(self, cfg: MelConfig = MelConfig()) -> None:
        super().__init__(cfg)
        self.bins = cfg.n_fft // 2 + 1
        self.register_buffer("basis", torch.from_numpy(dft_basis(cfg)).unsqueeze(1))

    def _power(self, x: Tensor) -> Tensor:
        spec = nn.functional.conv1d(x.unsqueeze(1), self.basis, stride=self.hop_length)
        re, im = spec[:, :self.bins], spec[:, self.bins:]
        power = re.square() + im.square()
        if self.magnitude:
            return power.sqrt()
        return power


def make_frontend(cfg: MelConfig, name: str = "fft") -> LogMel:
    """The log-mel module of ``cfg`` computed with ``name`` in :data:`FRONTENDS`.

    Raises:
        ParameterError: unknown name.
    """
    if name not in FRONTENDS:
        raise ParameterError(f"front end {name!r} is invalid: expected one of {FRONTENDS}")
    return LogMel(cfg) if name == "fft" else DftLogMel(cfg)
