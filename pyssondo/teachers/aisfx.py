"""The aiSFX sound-effects embedding model (Ma et al., ISMIR 2021) as a clip-embedding teacher.

Weights: ``aisfx/models/checkpoint.pth`` from the aisfx wheel (0.1.2), network "X-Sequential-CE":
four conv blocks (two 3x3 conv -> batch norm -> ReLU, then max-pool 2x2, 2x2, 2x2, 1x1) with
64-128-256-512 channels, mean over frequency, max over time -> 512 values per block of
spectrogram. The classification heads of the checkpoint are not loaded.

Front end, in torch, with the settings of aisfx's ``inference.py`` / librosa spectrogram:
44.1 kHz mono, peak-normalised per clip (y / max|y|, unchanged when silent); power STFT
n_fft = win = 2048, hop 1024, periodic Hann, centred with zero padding; 96 HTK mel bands
0 - 22050 Hz, each band's weights summing to 1 (librosa ``norm=1``); log10(1e4 * mel + 1);
divided by 9.457798957824707 (aisfx's "original" normalisation). The spectrogram is laid out
time x mel as the network expects (aisfx's essentia path; its librosa path passes mel x time).
It is cut into blocks of 100 frames (2.3 s) every 50 frames, a trailing partial block dropped
unless it is the only one (zero-padded), as aisfx's ``blocking(drop_partial_block=True)``;
the clip embedding is the mean of the block embeddings.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._weights import wheel_asset

SAMPLE_RATE = 44100
N_FFT = 2048
HOP = 1024
N_MELS = 96
SPEC_MAX = 9.457798957824707  # aisfx spectrogram_normalize(spec_norm="original")
BLOCK = 100
BLOCK_HOP = 50
PIP_SPEC = "aisfx==0.1.2"


def htk_mel_filterbank(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS,
                       fmin: float = 0.0, fmax: float = SAMPLE_RATE / 2) -> np.ndarray:
    """HTK-scale triangular mel filters, each row summing to 1: float32 [n_mels, n_fft//2+1].

    Same construction as ``librosa.filters.mel(htk=True, norm=1)``.
    """
    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)

    fft_freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper)).astype(np.float32)
    sums = np.abs(weights).sum(axis=1, keepdims=True)
    return np.where(sums > np.finfo(np.float32).tiny, weights / np.maximum(sums, 1e-30),
                    weights).astype(np.float32)


class _ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, pool: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.max_pool2d(x, self.pool) if self.pool > 1 else x


class AisfxNet(nn.Module):
    """Spectrogram blocks [N, time, mel] -> embeddings [N, 512] (aisfx's EmbeddingNet)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_block1 = _ConvBlock(1, 64, 2)
        self.conv_block2 = _ConvBlock(64, 128, 2)
        self.conv_block3 = _ConvBlock(128, 256, 2)
        self.conv_block4 = _ConvBlock(256, 512, 1)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        x = spec.unsqueeze(1)
        x = self.conv_block4(self.conv_block3(self.conv_block2(self.conv_block1(x))))
        return x.mean(dim=3).amax(dim=2)


class AisfxEmbedding(nn.Module):
    """Waveform at 44.1 kHz [B, T] -> clip embeddings [B, 512] (float32). Scriptable."""

    def __init__(self) -> None:
        super().__init__()
        self.net = AisfxNet()
        self.register_buffer("window", torch.hann_window(N_FFT, periodic=True), persistent=False)
        self.register_buffer("mel_fb", torch.from_numpy(htk_mel_filterbank()), persistent=False)
        self.sample_rate = SAMPLE_RATE
        self.embed_dim = 512
        self.n_fft = N_FFT
        self.hop = HOP
        self.block = BLOCK
        self.block_hop = BLOCK_HOP
        self.spec_max = SPEC_MAX

    def spectrogram(self, wav: torch.Tensor) -> torch.Tensor:
        """[B, T] -> normalised log-mel [B, frames, 96], frames = 1 + T // 1024."""
        if wav.dim() != 2:
            raise ValueError("aisfx teacher expects a waveform [B, T]")
        peak = wav.abs().amax(dim=1, keepdim=True)
        wav = wav / torch.where(peak == 0, torch.ones_like(peak), peak)
        stft = torch.stft(wav, self.n_fft, self.hop, self.n_fft, self.window, center=True,
                          pad_mode="constant", return_complex=True)
        power = stft.real.square() + stft.imag.square()
        mel = torch.matmul(self.mel_fb, power)
        return (torch.log10(mel * 1e4 + 1.0) / self.spec_max).transpose(1, 2)

    def blocks(self, spec: torch.Tensor) -> torch.Tensor:
        """[B, frames, 96] -> [B, n_blocks, 100, 96] (aisfx ``blocking``, partial block dropped)."""
        frames = spec.shape[1]
        n = int(math.ceil((frames - self.block) / self.block_hop + 1))
        if (frames - self.block) % self.block_hop != 0:
            n -= 1
        n = max(n, 1)
        padded = F.pad(spec, [0, 0, 0, self.block])
        out = padded.unfold(1, self.block, self.block_hop)[:, :n]
        return out.transpose(2, 3)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        blocks = self.blocks(self.spectrogram(wav))
        b, n = blocks.shape[0], blocks.shape[1]
        emb = self.net(blocks.reshape(b * n, self.block, blocks.shape[3]))
        return emb.reshape(b, n, self.embed_dim).mean(dim=1)


def aisfx_weights_path():
    """Path of aisfx's ``models/checkpoint.pth`` (no aisfx code is imported)."""
    return wheel_asset("aisfx", "models/checkpoint.pth", PIP_SPEC)


def load_aisfx_state(path) -> dict:
    """The checkpoint's network weights, loaded with ``weights_only=True``.

    The file holds ``(state_dict, ds_dict)``; ds_dict holds numpy integers, allowed explicitly.
    """
    allowed = [(np._core.multiarray.scalar, "numpy.core.multiarray.scalar"), np.dtype,
               type(np.dtype("int64"))]
    with torch.serialization.safe_globals(allowed):
        state, _ = torch.load(path, map_location="cpu", weights_only=True)
    prefix = "embedding_net."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def load_aisfx() -> AisfxEmbedding:
    """:class:`AisfxEmbedding` with the pretrained weights from the aisfx wheel, in eval mode."""
    model = AisfxEmbedding()
    model.net.load_state_dict(load_aisfx_state(aisfx_weights_path()), strict=True)
    return model.eval()
