"""The input pipelines of Hugging Face audio feature extractors, in torch (scriptable).

Each module maps a float32 waveform [B, T] at the model's rate to the tensor its
``transformers`` model takes, as the model's own feature extractor computes it in numpy. The
window and mel filterbank are the feature extractor's own arrays, copied into buffers once at
build time (numpy is used only then), so the two never disagree. Every module also answers
``valid_frames(T, F)``: how many of the model's F output frames cover a T-sample input (all of
them, except for Whisper, which pads every input to 30 s).

- :class:`WaveNorm` (wav2vec2, HuBERT, WavLM): optional zero-mean unit-variance per clip.
- :class:`WhisperLogMel`: pad/truncate to 30 s, |STFT|^2 (n_fft 400, hop 160, periodic Hann,
  centred, reflect), Slaney mel, log10, floor at max - 8, (x + 4) / 4 -> [B, 80, 3000].
- :class:`KaldiFbank` (AST): Kaldi fbank (25 ms frames, 10 ms hop, no centering, DC removal,
  pre-emphasis 0.97, symmetric Hann, 512-point FFT, log of max(mel, eps)), padded/truncated to
  ``max_length`` frames, normalised (x - mean) / (2 std) -> [B, max_length, n_mels].
- :class:`ClapLogMel`: repeat-pad (or truncate) to ``max_length_s``, |STFT|^2 (centred,
  reflect, periodic Hann), mel, 10 log10(max(., 1e-10)) -> [B, C, frames, n_mels], C = 4
  copies for fusion models (whose "is_longer" is then False for every clip).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _buffer(array) -> torch.Tensor:
    return torch.as_tensor(array, dtype=torch.float32).clone()


class WaveNorm(nn.Module):
    """[B, T] -> [B, T]: (x - mean) / sqrt(var + 1e-7) per clip when ``normalize``, else x."""

    def __init__(self, normalize: bool) -> None:
        super().__init__()
        self.normalize = normalize

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if not self.normalize:
            return wav
        mean = wav.mean(dim=1, keepdim=True)
        var = ((wav - mean) ** 2).mean(dim=1, keepdim=True)
        return (wav - mean) / torch.sqrt(var + 1e-7)

    @torch.jit.export
    def valid_frames(self, samples: int, frames: int) -> int:
        return frames


def _power_spectrogram(wav: torch.Tensor, window: torch.Tensor, n_fft: int,
                       hop: int) -> torch.Tensor:
    """Centred (reflect-padded) |STFT|^2 [B, n_fft // 2 + 1, frames]."""
    spec = torch.stft(wav, n_fft, hop, window=window, center=True, pad_mode="reflect",
                      return_complex=True)
    return spec.real ** 2 + spec.imag ** 2


class WhisperLogMel(nn.Module):
    """[B, T] at 16 kHz -> Whisper log-mel [B, n_mels, n_samples // hop].

    Args:
        mel_filters: the feature extractor's ``mel_filters`` [n_fft // 2 + 1, n_mels].
        n_fft, hop: STFT size and hop in samples (400, 160).
        n_samples: every input is zero-padded or truncated to this many samples (480000).
    """

    def __init__(self, mel_filters, n_fft: int, hop: int, n_samples: int) -> None:
        super().__init__()
        self.register_buffer("mel_t", _buffer(mel_filters).t().contiguous())
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True))
        self.n_fft, self.hop, self.n_samples = n_fft, hop, n_samples

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        wav = F.pad(wav, [0, self.n_samples])[:, :self.n_samples]
        power = _power_spectrogram(wav, self.window, self.n_fft, self.hop)[:, :, :-1]
        log_spec = torch.matmul(self.mel_t, power).clamp_min(1e-10).log10()
        peak = log_spec.amax(dim=(1, 2), keepdim=True)
        return (torch.maximum(log_spec, peak - 8.0) + 4.0) / 4.0

    @torch.jit.export
    def valid_frames(self, samples: int, frames: int) -> int:
        """Encoder frames (2 mel hops each) that cover the input, at most ``frames``."""
        step = 2 * self.hop
        return max(1, min(frames, (min(samples, self.n_samples) + step - 1) // step))


class KaldiFbank(nn.Module):
    """[B, T] at 16 kHz -> AST's normalised Kaldi fbank [B, max_length, n_mels].

    Args:
        window: the feature extractor's ``window`` [400] (symmetric Hann).
        mel_filters: its ``mel_filters`` [257, n_mels] (Kaldi mel scale).
        max_length: frames the model takes (inputs are zero-padded or truncated to it).
        mean, std: normalisation constants; ``normalize`` False skips it.
    Inputs shorter than one 400-sample frame are zero-padded to one frame.
    """

    def __init__(self, window, mel_filters, max_length: int, mean: float, std: float,
                 normalize: bool, frame: int = 400, hop: int = 160, n_fft: int = 512,
                 preemphasis: float = 0.97, floor: float = 1.192092955078125e-07) -> None:
        super().__init__()
        self.register_buffer("window", _buffer(window))
        self.register_buffer("mel", _buffer(mel_filters))
        self.max_length, self.mean, self.std, self.normalize = max_length, mean, std, normalize
        self.frame, self.hop, self.n_fft = frame, hop, n_fft
        self.preemphasis, self.floor = preemphasis, floor

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.shape[1] < self.frame:
            wav = F.pad(wav, [0, self.frame - wav.shape[1]])
        frames = wav.unfold(1, self.frame, self.hop)
        frames = frames - frames.mean(dim=2, keepdim=True)
        frames = torch.cat([frames[:, :, :1] * (1.0 - self.preemphasis),
                            frames[:, :, 1:] - self.preemphasis * frames[:, :, :-1]], dim=2)
        spec = torch.fft.rfft(frames * self.window, n=self.n_fft)
        power = spec.real ** 2 + spec.imag ** 2
        fbank = torch.matmul(power, self.mel).clamp_min(self.floor).log()
        fbank = F.pad(fbank, [0, 0, 0, self.max_length])[:, :self.max_length]
        if self.normalize:
            fbank = (fbank - self.mean) / (self.std * 2.0)
        return fbank

    @torch.jit.export
    def valid_frames(self, samples: int, frames: int) -> int:
        return frames


class ClapLogMel(nn.Module):
    """[B, T] at 48 kHz -> CLAP's log-mel [B, channels, frames, n_mels] (dB).

    Args:
        mel_filters: the feature extractor's filterbank [n_fft // 2 + 1, n_mels] (``mel_filters``
            for fusion models, ``mel_filters_slaney`` otherwise, as the extractor picks).
        n_fft, hop: STFT size and hop in samples.
        max_samples: clip length the model takes; a shorter input is tiled ``max_samples // T``
            times ("repeatpad") or not ("pad"), then zero-padded; a longer one is truncated to
            its first ``max_samples`` (the extractor crops at random there).
        repeat: tile short inputs ("repeatpad") before padding.
        channels: 4 for fusion models (four copies), else 1.
    """

    def __init__(self, mel_filters, n_fft: int, hop: int, max_samples: int, repeat: bool,
                 channels: int) -> None:
        super().__init__()
        self.register_buffer("mel_t", _buffer(mel_filters).t().contiguous())
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True))
        self.n_fft, self.hop, self.max_samples = n_fft, hop, max_samples
        self.repeat, self.channels = repeat, channels

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        samples = wav.shape[1]
        if self.repeat and samples < self.max_samples:
            wav = wav.repeat(1, self.max_samples // samples)
        wav = F.pad(wav, [0, self.max_samples])[:, :self.max_samples]
        power = _power_spectrogram(wav, self.window, self.n_fft, self.hop)
        mel = torch.matmul(self.mel_t, power).clamp_min(1e-10)
        db = (10.0 * torch.log10(mel)).transpose(1, 2)
        return db.unsqueeze(1).expand(-1, self.channels, -1, -1).contiguous()

    @torch.jit.export
    def valid_frames(self, samples: int, frames: int) -> int:
        return frames
