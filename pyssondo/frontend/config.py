"""MelConfig: every log-mel front-end setting, in one place.

The same object drives the C++ front end (:func:`pyssondo.frontend.log_mel`), the TorchScript
module (:class:`pyssondo.frontend.LogMel`), training checkpoints and the export metadata
(``ssondo.json``), so the front end a student was trained with is the one it ships with.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Dict

from ..errors import ParameterError, check_known_settings

WINDOWS = ("hann", "hamming", "rectangular")
MEL_SCALES = ("slaney", "htk")
MEL_NORMS = ("slaney", "none")
PAD_MODES = ("reflect", "constant")
FRONTENDS = ("fft", "dft")  # the torch module's STFT: torch.fft.rfft, or factored DFT products


@dataclass(frozen=True)
class MelConfig:
    """Log-mel front-end settings. Defaults are S-SONDO's (EfficientAT's front end).

    Attributes:
        sample_rate: input sample rate in Hz (> 0). Default 32000.
        n_fft: FFT size in samples (>= 2; any size, fastest for powers of two). Default 1024.
        win_length: analysis window length in samples, 1 <= win_length <= n_fft; a shorter
            window is zero-padded on both sides to n_fft (as torch.stft does). Default 1024.
        hop_length: hop between frames in samples (>= 1). Default 512.
        window: "hann" (periodic), "hamming" (periodic) or "rectangular". Default "hann".
        n_mels: number of mel bands (>= 1). Default 128.
        f_min: lowest band edge in Hz, 0 <= f_min < f_max. Default 50.
        f_max: highest band edge in Hz, f_max <= sample_rate / 2. Default 16000.
        mel_scale: "slaney" (linear below 1 kHz, log above) or "htk" (2595 log10(1 + f/700)).
        mel_norm: "slaney" (each band divided by its width in Hz, area-normalised) or "none".
        center: pad n_fft // 2 samples on the left and n_fft - n_fft // 2 on the right (equal
            for even n_fft), so frame t starts at t * hop in the padded signal and is centred
            on sample t * hop of the input. Default False (S-SONDO).
        pad_mode: "reflect" or "constant" (zeros); used only when center is True.
        power: exponent of the magnitude spectrum: 1 (magnitude) or 2 (power). Default 2.
        log_offset: the output is log(mel + log_offset), natural log (> 0). Default 0.001.

    Frames: with center False, a signal of T samples (T >= n_fft) gives
    1 + (T - n_fft) // hop_length frames; a shorter signal is zero-padded to n_fft (one frame).
    With center True, 1 + T // hop_length frames.
    """

    sample_rate: int = 32000
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 512
    window: str = "hann"
    n_mels: int = 128
    f_min: float = 50.0
    f_max: float = 16000.0
    mel_scale: str = "slaney"
    mel_norm: str = "slaney"
    center: bool = False
    pad_mode: str = "reflect"
    power: float = 2.0
    log_offset: float = 0.001

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raises ParameterError naming the first invalid setting and its valid range."""

        def bad(name: str, valid: str) -> ParameterError:
            return ParameterError(f"MelConfig.{name}={getattr(self, name)!r} is invalid: {valid}")

        if not isinstance(self.sample_rate, int) or self.sample_rate <= 0:
            raise bad("sample_rate", "expected a positive integer (Hz)")
        if not isinstance(self.n_fft, int) or self.n_fft < 2:
            raise bad("n_fft", "expected an integer >= 2")
        if not isinstance(self.win_length, int) or not 1 <= self.win_length <= self.n_fft:
            raise bad("win_length", f"expected an integer in [1, n_fft={self.n_fft}]")
        if not isinstance(self.hop_length, int) or self.hop_length < 1:
            raise bad("hop_length", "expected an integer >= 1")
        if self.window not in WINDOWS:
            raise bad("window", f"expected one of {WINDOWS}")
        if not isinstance(self.n_mels, int) or self.n_mels < 1:
            raise bad("n_mels", "expected an integer >= 1")
        if not 0.0 <= self.f_min < self.f_max:
            raise bad("f_min", f"expected 0 <= f_min < f_max={self.f_max}")
        if self.f_max > self.sample_rate / 2:
            raise bad("f_max", f"expected f_max <= sample_rate / 2 = {self.sample_rate / 2}")
        if self.mel_scale not in MEL_SCALES:
            raise bad("mel_scale", f"expected one of {MEL_SCALES}")
        if self.mel_norm not in MEL_NORMS:
            raise bad("mel_norm", f"expected one of {MEL_NORMS}")
        if self.pad_mode not in PAD_MODES:
            raise bad("pad_mode", f"expected one of {PAD_MODES}")
        if self.power not in (1.0, 2.0):
            raise bad("power", "expected 1.0 (magnitude) or 2.0 (power)")
        if not self.log_offset > 0:
            raise bad("log_offset", "expected a positive number")

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for a signal of ``num_samples`` samples (>= 1 for any length >= 0)."""
        if self.center:
            return 1 + num_samples // self.hop_length
        return 1 + max(0, num_samples - self.n_fft) // self.hop_length

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "MelConfig":
        """Builds a config from a dict; unknown keys raise ParameterError (they are typos)."""
        check_known_settings(d, (f.name for f in dataclasses.fields(cls)), "MelConfig")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "MelConfig":
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> "MelConfig":
        return dataclasses.replace(self, **changes)


