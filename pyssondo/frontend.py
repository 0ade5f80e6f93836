"""LogMel: the log-mel front end as a TorchScript-able ``nn.Module`` (torch.stft, no torchaudio).

It is the front end inside exported students and the torch twin of :func:`pyssondo.log_mel`
(C++): same window and filterbank (:mod:`pyssondo.filters`), same padding and framing
(:meth:`MelConfig.num_frames`), same numbers within 1e-3.
"""
import torch
from torch import Tensor, nn

from .config import MelConfig
from .filters import mel_filterbank, window


class LogMel(nn.Module):
    """log(mel + log_offset) of a batch of mono signals.

    Input: float32 [B, T] at cfg.sample_rate, T >= 1 (a single signal must be passed as
    [1, T]). Output: float32 [B, n_mels, frames], frames = cfg.num_frames(T).

    Padding: with cfg.center, n_fft // 2 samples on the left and n_fft - n_fft // 2 on the
    right, mode "reflect" (numpy's np.pad reflect, repeated for signals shorter than the pad)
    or "constant" (zeros); without centering a signal shorter than n_fft is zero-padded on the
    right to one frame. The window and the filterbank are buffers (computed once from cfg).
    Attribute ``cfg_json`` holds the config (:meth:`MelConfig.from_json` restores it).
    Works eagerly and under ``torch.jit.script``.
    """

    cfg_json: str

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
        self.register_buffer("filterbank", torch.from_numpy(mel_filterbank(cfg)))

    def forward(self, wav: Tensor) -> Tensor:
        if wav.dim() != 2 or wav.size(1) < 1:
            raise ValueError("LogMel expects a [B, T] tensor with T >= 1 samples")
        x = self._pad(wav)
        spec = torch.stft(x, self.n_fft, self.hop_length, win_length=self.n_fft,
                          window=self.window, center=False, return_complex=True)
        if self.magnitude:
            power = spec.abs()
        else:
            power = spec.real.square() + spec.imag.square()
        return torch.log(torch.matmul(self.filterbank, power) + self.log_offset)

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
