"""LogMel: the log-mel front end as a TorchScript-able ``nn.Module`` (torch.fft, no torchaudio).

It is the front end inside exported students and the torch twin of
:func:`pyssondo.frontend.log_mel` (C++): same window and filterbank
(:mod:`pyssondo.frontend.filters`), same padding and framing
(:meth:`MelConfig.num_frames`), same numbers within 1e-3. :class:`DftLogMel` computes the same
log-mel with the STFT as matrix products of a factored DFT
(:func:`pyssondo.frontend.filters.factored_dft`), for runtimes without FFT ops (ONNX opsets < 17,
CoreML, TFLite, ExecuTorch); :func:`make_frontend` picks one by name (:data:`FRONTENDS`).
"""
from typing import List, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ParameterError
from .config import FRONTENDS, MelConfig
from .filters import dft_factors, factored_dft, mel_filterbank, window

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


def block_entries(fb: np.ndarray, blocks: List[List[int]]
                  ) -> Tuple[List[int], np.ndarray, np.ndarray]:
    """The non-zero entries of ``fb`` laid out block by block (``blocks``: [first row, end
    row, first column, end column] each, as :func:`band_blocks` returns), each block its
    transposed sub-matrix ``fb[r0:r1, c0:c1].T`` in row-major order, one after the other.

    Returns:
        (offsets: where each block starts in that layout, plus its total size; slots: int32
        positions of the non-zero entries in it; values: float32, the entries).
    """
    offsets, slots, values = [0], [], []
    for r0, r1, c0, c1 in blocks:
        sub = fb[r0:r1, c0:c1].T.ravel()
        nonzero = np.flatnonzero(sub)
        slots.append(offsets[-1] + nonzero)
        values.append(sub[nonzero])
        offsets.append(offsets[-1] + sub.size)
    return (offsets, np.concatenate(slots).astype(np.int32),
            np.concatenate(values).astype(np.float32))


class LogMel(nn.Module):
    """log(mel + log_offset) of a batch of mono signals.

    Input: float32 [B, T] at cfg.sample_rate, T >= 1 (a single signal must be passed as
    [1, T]). Output: float32 [B, n_mels, frames], frames = cfg.num_frames(T).

    Padding: with cfg.center, n_fft // 2 samples on the left and n_fft - n_fft // 2 on the
    right, mode "reflect" (numpy's np.pad reflect, repeated for signals shorter than the pad)
    or "constant" (zeros); without centering a signal shorter than n_fft is zero-padded on the
    right to one frame. The window and the filterbank are buffers (computed once from cfg; the
    filterbank as its non-zero entries, :meth:`filterbank_blocks`), applied block by block over
    the bins each group of bands covers (:func:`band_blocks`).
    Attribute ``cfg_json`` holds the config (:meth:`MelConfig.from_json` restores it).
    Works eagerly and under ``torch.jit.script``.
    """

    cfg_json: str
    bands: List[List[int]]
    block_sizes: List[int]

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
        self.per_bin = p = self._terms_per_bin()
        offsets, slots, values = block_entries(np.repeat(dense, p, axis=1),
                                               [[r0, r1, p * c0, p * c1]
                                                for r0, r1, c0, c1 in self.bands])
        self.block_sizes = np.diff(offsets).tolist()
        self.register_buffer("filterbank_slots", torch.from_numpy(slots))
        self.register_buffer("filterbank_values", torch.from_numpy(values))

    def _terms_per_bin(self) -> int:
        """Terms per frequency bin that :meth:`_power_terms` returns (see there)."""
        return 1 if self.magnitude else 2

    def filterbank_blocks(self) -> List[Tensor]:
        """For each of :attr:`bands`' blocks [first band, end band, first bin, end bin], its
        filters transposed, float32 [per_bin * (end bin - first bin), end band - first band],
        each bin's row repeated ``per_bin`` (:meth:`_terms_per_bin`) times (2: the weights of
        a bin's squared real and imaginary parts). Rebuilt on each call from the
        filterbank's non-zero entries (16 KB with two terms per bin: an exported file holds
        those, not 263 KB of zeros) scattered into the blocks (13% of the filterbank) rather
        than into the whole filterbank: 0.04 instead of 0.16 ms, LogMel at 16 kHz on one 2 s
        window 0.23-0.24 instead of 0.39-0.40 ms (1 thread)."""
        flat = torch.zeros(sum(self.block_sizes), dtype=self.filterbank_values.dtype,
                           device=self.filterbank_values.device)
        flat = flat.scatter(0, self.filterbank_slots.long(), self.filterbank_values)
        parts = flat.split(self.block_sizes)
        return [parts[i].view(-1, self.bands[i][1] - self.bands[i][0])
                for i in range(len(parts))]

    def forward(self, wav: Tensor) -> Tensor:
        if wav.dim() != 2 or wav.size(1) < 1:
            raise ValueError("LogMel expects a [B, T] tensor with T >= 1 samples")
        terms = self._power_terms(self._pad(wav))
        blocks = self.filterbank_blocks()
        p = self.per_bin
        mel = torch.cat([torch.matmul(terms[:, :, p * self.bands[i][2]:p * self.bands[i][3]],
                                      blocks[i]) for i in range(len(blocks))], dim=2)
        return torch.log(mel + self.log_offset).transpose(1, 2).contiguous()

    def _power_terms(self, x: Tensor) -> Tensor:
        """Padded signals [B, T'] -> [B, frames, K], whose product with the filterbank
        (:meth:`filterbank_blocks`, ``K // bins`` terms per bin) is the mel spectrogram: with
        power 2, each bin's squared real and imaginary parts (K = 2 bins; the product adds
        them, one pass fewer than a power spectrum), else the magnitudes (K = bins). Frames
        first, as torch.fft.rfft of the windowed frames returns them: against torch.stft's
        bins-first spectrum, 0-12% faster at 16 kHz (2 s windows, batch 5 and 8), 8-28% at
        32 kHz (10 s, batch 8), the same at batch 1 (1 thread, four runs)."""
        frames = x.unfold(1, self.n_fft, self.hop_length) * self.window
        squares = torch.view_as_real(torch.fft.rfft(frames)).square_()  # [B, F, bins, 2]
        if self.magnitude:
            return (squares[:, :, :, 0] + squares[:, :, :, 1]).sqrt_()
        return squares.flatten(2)

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
    """:class:`LogMel` with the STFT as matrix products of a factored DFT, for runtimes without
    FFT ops (ONNX opsets < 17, CoreML, TFLite, ExecuTorch); in onnxruntime it is also about 3x
    faster than the DFT op (bench/export.py).

    Windowed frames [B, F, n_fft] are cut from the padded signal (slices of hop-length blocks
    when the hop divides n_fft, else a gather) and transformed by
    :func:`pyssondo.frontend.filters.factored_dft` (n_fft = N1 * N2): one [2 N2, N2] matrix
    product over n2, then one [2 K1, 2 N1] product over n1 for each k2 (the twiddle factors
    folded in; built from the small stored factors on every call, so a file holds about 5K
    numbers, not 70K). Same input, output, padding and framing as :class:`LogMel`; equal to it
    within float32 rounding (about 1e-5 on log-mel). Needs only MatMul, Mul, Add, Slice,
    Concat, Reshape, Transpose (Gather when the hop does not divide n_fft) and Log.
    """

    def __init__(self, cfg: MelConfig = MelConfig()) -> None:
        super().__init__(cfg)
        self.bins = cfg.n_fft // 2 + 1
        self.n1, self.n2 = dft_factors(cfg.n_fft)
        first, outer, twiddle = factored_dft(cfg)
        self.register_buffer("dft_first", torch.from_numpy(first))
        self.register_buffer("dft_outer", torch.from_numpy(outer))
        self.register_buffer("dft_twiddle", torch.from_numpy(twiddle))

    def _terms_per_bin(self) -> int:
        return 1  # :meth:`_power_terms` returns the power (or magnitude) of each bin

    def _outer_matrices(self) -> Tensor:
        """[N2, 2 K1, 2 N1]: for each k2, the outer sum as a real matrix from (re|im, n1) to
        (re|im, k1) of W_N1^(n1 k1) W_N^(n1 k2)."""
        f = self.dft_outer.unsqueeze(1)    # [2, 1, k1, n1]
        t = self.dft_twiddle.unsqueeze(2)  # [2, k2, 1, n1]
        re = t[0] * f[0] - t[1] * f[1]
        im = t[0] * f[1] + t[1] * f[0]
        # (re + i im)(a + i b) = (re a - im b) + i (im a + re b)
        return torch.cat([torch.cat([re, -im], dim=2), torch.cat([im, re], dim=2)], dim=1)

    def _frames(self, x: Tensor) -> Tensor:
        """Padded signals [B, T'] (T' >= n_fft) -> windowed frames [B, F, n_fft]."""
        b, n, hop = x.size(0), self.n_fft, self.hop_length
        frames = (x.size(1) - n) // hop + 1
        if n % hop == 0:
            r = n // hop
            blocks = x[:, :(frames + r - 1) * hop].reshape(b, frames + r - 1, hop)
            cut = torch.cat([blocks[:, i:i + frames] for i in range(r)], dim=2)
        else:
            index = (torch.arange(frames, device=x.device) * hop).unsqueeze(1) \
                + torch.arange(n, device=x.device)
            cut = x.index_select(1, index.flatten()).reshape(b, frames, n)
        return cut * self.window

    def _power_terms(self, x: Tensor) -> Tensor:
        frames = self._frames(x)
        b, f = frames.size(0), frames.size(1)
        cols = frames.reshape(b * f, self.n_fft).t().reshape(self.n2, -1)  # [n2, n1 B F]
        inner = torch.matmul(self.dft_first, cols).reshape(self.n2, 2 * self.n1, b * f)
        spec = torch.matmul(self._outer_matrices(), inner)  # [k2, (re|im, k1), B F]
        k1 = self.dft_outer.size(1)
        power = spec[:, :k1].square() + spec[:, k1:].square()  # [k2, k1, B F], k = N2 k1 + k2
        power = power.transpose(0, 1).reshape(k1 * self.n2, b, f)[:self.bins]
        if self.magnitude:
            power = power.sqrt()
        return power.permute(1, 2, 0)


def make_frontend(cfg: MelConfig, name: str = "fft") -> LogMel:
    """The log-mel module of ``cfg`` computed with ``name`` in :data:`FRONTENDS`.

    Raises:
        ParameterError: unknown name.
    """
    if name not in FRONTENDS:
        raise ParameterError(f"front end {name!r} is invalid: expected one of {FRONTENDS}")
    return LogMel(cfg) if name == "fft" else DftLogMel(cfg)
