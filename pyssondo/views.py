"""Teacher-side augmentation views of a segment (../shared/DESIGN.md, "Views").

A cached segment may have K views. View 0 is the clean segment; view v >= 1 is the segment
after, in this order, a speed change (resampling, so pitch and tempo move together), an EQ
(a low shelf, a high shelf and ``eq_bands`` peaking biquads), a time shift, mixing with a
partner segment at a random SNR, and a gain. Every random number of view v of segment
``(file key, start sample)`` comes from a numpy generator seeded by
``SeedSequence(sha256(file key, start, v, settings hash))``, so the view is a pure function of
(segment, view, settings, partner audio): the teacher cache and the student's data path both
call :func:`render_view` and see bit-identical audio, after any resume, in any process.

Views are rendered at the file's own sample rate from the segment cut out of the decoded file
(W samples, zero-padded past its end); each model then resamples the view to its rate as it
does clean audio. The mixing partner is drawn (:func:`choose_partner`) from the same seed over
the sorted file keys of the build that computes the segment, and the cache records it with the
segment's rows, so later readers mix with the same partner even after files are added.

Pure numpy and the C++ resampler; no torch.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from .errors import ParameterError, check_known_settings

SHIFT_MODES = ("circular", "pad")
SPEED_STEPS = 100   # speed factors are multiples of 1 / SPEED_STEPS (resampling 100 s -> 100)
DEFAULT_SPEC = "gain=-6:6,eq=-6:6,bands=2,shift=0.5,mix=5:20,speed=0.95:1.05"
# Views per segment of 'ssondo distill' and 'ssondo cache' by default: on bench/quality.py 4
# views took mn01 from 63.4% to 67.3% and mn04 from 74.9% to 82.5% of the teacher (30 epochs),
# and changed nothing on 400 FSDD clips (51.7 -> 51.6); the teacher runs 4 times per segment.
DEFAULT_VIEWS = 4
Range = Tuple[float, float]


@dataclass(frozen=True)
class ViewConfig:
    """Settings of the augmented views of every cached segment.

    Attributes:
        count: views per segment K (>= 1); view 0 is always the clean segment, so K = 1 means
            no augmentation.
        gain_db: (low, high) gain in dB, drawn uniformly; None = off.
        eq_db: (low, high) gain in dB of each EQ band (a low shelf at 60-300 Hz, a high shelf
            at 2-8 kHz and ``eq_bands`` peaking bands at 150 Hz-6 kHz with Q in [0.5, 2],
            frequencies log-uniform and capped at 0.45 x the rate); None = off.
        eq_bands: peaking bands of the EQ (>= 0).
        shift_s: largest time shift in seconds (|shift| <= shift_s, a whole number of samples
            at the file's rate); None = off.
        shift_mode: "circular" (np.roll) or "pad" (zeros enter, samples leave the window).
        mix_snr_db: (low, high) SNR in dB of the segment over the added partner segment; None
            = off.
        speed: (low, high) speed factor (> 0; 1.05 = 5% faster and higher), rounded to a
            multiple of 1/100; the result is cut or zero-padded to the window. None = off.

    ``ViewConfig.from_spec(K, "gain=-6:6,eq=-6:6,bands=2,shift=0.5,mix=5:20,speed=0.95:1.05")``
    reads the command-line form (a single number ``x`` means ``-x:x`` for gain and eq; "none"
    turns every augmentation off); :meth:`spec` writes it back.
    """

    count: int = 1
    gain_db: Optional[Range] = None
    eq_db: Optional[Range] = None
    eq_bands: int = 2
    shift_s: Optional[float] = None
    shift_mode: str = "circular"
    mix_snr_db: Optional[Range] = None
    speed: Optional[Range] = None

    def __post_init__(self) -> None:
        for name in ("gain_db", "eq_db", "mix_snr_db", "speed"):
            value = getattr(self, name)
            if value is not None:  # lists from JSON
                object.__setattr__(self, name, tuple(float(v) for v in value))

    @property
    def active(self) -> bool:
        """True when views beyond the clean one exist."""
        return self.count > 1

    def validate(self) -> None:
        """Raises ParameterError naming the first invalid setting and its valid range."""
        def bad(name: str, valid: str) -> ParameterError:
            return ParameterError(f"views: {name}={getattr(self, name)!r} is invalid: {valid}")

        if not isinstance(self.count, int) or self.count < 1:
            raise bad("count", "expected an integer >= 1 (1 = the clean segment only)")
        for name in ("gain_db", "eq_db", "mix_snr_db", "speed"):
            r = getattr(self, name)
            if r is not None and (len(r) != 2 or not all(np.isfinite(r)) or r[0] > r[1]):
                raise bad(name, "expected (low, high) with low <= high, or None (off)")
        if self.gain_db is not None and max(abs(v) for v in self.gain_db) > 40:
            raise bad("gain_db", "expected within [-40, 40] dB")
        if self.eq_db is not None and max(abs(v) for v in self.eq_db) > 24:
            raise bad("eq_db", "expected within [-24, 24] dB")
        if not isinstance(self.eq_bands, int) or not 0 <= self.eq_bands <= 8:
            raise bad("eq_bands", "expected an integer in [0, 8]")
        if self.shift_s is not None and not (np.isfinite(self.shift_s) and self.shift_s >= 0):
            raise bad("shift_s", "expected seconds >= 0, or None (off)")
        if self.shift_mode not in SHIFT_MODES:
            raise bad("shift_mode", f"expected one of {SHIFT_MODES}")
        if self.speed is not None and not 0.5 <= self.speed[0] <= self.speed[1] <= 2.0:
            raise bad("speed", "expected 0.5 <= low <= high <= 2")

    # -- forms -----------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ViewConfig":
        check_known_settings(d, (f.name for f in dataclasses.fields(cls)), "views")
        return cls(**d)

    def settings_hash(self) -> str:
        """sha256 (16 hex digits) of the augmentation settings, without ``count``: view v of
        a segment is the same audio whatever K is."""
        d = self.to_dict()
        d.pop("count")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_spec(cls, count: int, spec: str) -> "ViewConfig":
        """``count`` views with the augmentations of ``spec`` (see the class docstring)."""
        kw: Dict[str, Any] = {"count": count}
        spec = spec.strip()
        if spec and spec != "none":
            keys = {"gain": "gain_db", "eq": "eq_db", "bands": "eq_bands", "shift": "shift_s",
                    "shift_mode": "shift_mode", "mix": "mix_snr_db", "speed": "speed"}
            for item in spec.split(","):
                name, sep, value = item.strip().partition("=")
                if not sep or name not in keys:
                    raise ParameterError(f"views: {item!r} in {spec!r} is not NAME=VALUE with "
                                         f"NAME one of {sorted(keys)}")
                try:
                    kw[keys[name]] = _spec_value(name, value.strip())
                except ValueError:
                    raise ParameterError(f"views: {item!r} in {spec!r}: bad value") from None
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    def spec(self) -> str:
        """The command-line form of the augmentations ("none" when all are off)."""
        parts = []
        for name, value in (("gain", self.gain_db), ("eq", self.eq_db),
                            ("bands", self.eq_bands if self.eq_db else None),
                            ("shift", self.shift_s),
                            ("shift_mode", self.shift_mode if self.shift_s and
                             self.shift_mode != "circular" else None),
                            ("mix", self.mix_snr_db), ("speed", self.speed)):
            if value is not None:
                parts.append(f"{name}={value[0]:g}:{value[1]:g}" if isinstance(value, tuple)
                             else f"{name}={value:g}" if isinstance(value, float)
                             else f"{name}={value}")
        return ",".join(parts) or "none"

    def describe(self) -> str:
        """One line for summaries: the count and the augmentations."""
        if not self.active:
            return "1 (the clean segment only)"
        return (f"{self.count} per segment (view 0 clean; {self.spec()}; settings "
                f"{self.settings_hash()})")


def _spec_value(name: str, value: str) -> Any:
    if name == "shift_mode":
        return value
    if name == "bands":
        return int(value)
    if name == "shift":
        return float(value)
    lo, sep, hi = value.partition(":")
    if not sep:
        if name in ("gain", "eq"):
            return (-abs(float(lo)), abs(float(lo)))
        return (float(lo), float(lo))
    return (float(lo), float(hi))


# ---------------------------------------------------------------------------------------------
# Seeds and drawn parameters
# ---------------------------------------------------------------------------------------------
def view_seed(file_key: str, start: int, view: int, settings_hash: str) -> np.random.SeedSequence:
    """The seed of view ``view`` of segment ``(file_key, start)``: a SeedSequence of the sha256
    of the four (identical on every machine and Python version)."""
    text = json.dumps([str(file_key), int(start), int(view), str(settings_hash)])
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return np.random.SeedSequence(list(np.frombuffer(digest, dtype="<u4").astype(int)))


class Biquad(NamedTuple):
    """One EQ band: ``kind`` "low_shelf" | "high_shelf" | "peak", centre/corner frequency in
    Hz, gain in dB, quality factor (shelves use slope 1, i.e. Q = 1/sqrt(2))."""

    kind: str
    freq: float
    gain_db: float
    q: float


class ViewParams(NamedTuple):
    """What :func:`draw_view` drew for one view (None: that augmentation is off)."""

    speed: Optional[int]           # resampling SPEED_STEPS * factor -> SPEED_STEPS
    eq: Tuple[Biquad, ...]
    shift: Optional[int]           # samples, > 0 moves the audio later
    mix_snr_db: Optional[float]
    gain_db: Optional[float]


def draw_view(cfg: ViewConfig, segment_id: Tuple[str, int], view: int, sample_rate: int,
              ) -> ViewParams:
    """The random parameters of view ``view`` >= 1 of ``segment_id`` at ``sample_rate`` Hz.

    Each augmentation draws from its own child of :func:`view_seed`, so turning one on or off
    changes no other's draws (the settings hash still changes every view).
    """
    speed_rng, eq_rng, shift_rng, mix_rng, gain_rng = _streams(cfg, segment_id, view)[:5]
    speed = None
    if cfg.speed is not None:
        speed = int(round(speed_rng.uniform(*cfg.speed) * SPEED_STEPS))
    eq: List[Biquad] = []
    if cfg.eq_db is not None:
        cap = 0.45 * sample_rate

        def logu(lo: float, hi: float) -> float:
            hi = min(hi, cap)
            lo = min(lo, hi)
            return float(np.exp(eq_rng.uniform(np.log(lo), np.log(hi))))

        eq.append(Biquad("low_shelf", logu(60, 300), float(eq_rng.uniform(*cfg.eq_db)),
                         float(np.sqrt(0.5))))
        eq.append(Biquad("high_shelf", logu(2000, 8000), float(eq_rng.uniform(*cfg.eq_db)),
                         float(np.sqrt(0.5))))
        for _ in range(cfg.eq_bands):
            eq.append(Biquad("peak", logu(150, 6000), float(eq_rng.uniform(*cfg.eq_db)),
                             float(np.exp(eq_rng.uniform(np.log(0.5), np.log(2.0))))))
    shift = None
    if cfg.shift_s is not None:
        most = int(round(cfg.shift_s * sample_rate))
        shift = int(shift_rng.integers(-most, most + 1))
    snr = float(mix_rng.uniform(*cfg.mix_snr_db)) if cfg.mix_snr_db is not None else None
    gain = float(gain_rng.uniform(*cfg.gain_db)) if cfg.gain_db is not None else None
    return ViewParams(speed, tuple(eq), shift, snr, gain)


def _streams(cfg: ViewConfig, segment_id: Tuple[str, int], view: int) -> List[Any]:
    """Six generators of one view: speed, EQ, shift, mix SNR, gain, partner choice."""
    ss = view_seed(segment_id[0], segment_id[1], view, cfg.settings_hash())
    return [np.random.default_rng(s) for s in ss.spawn(6)]


def choose_partner(cfg: ViewConfig, segment_id: Tuple[str, int], view: int,
                   keys: Sequence[str]) -> Optional[Tuple[str, float]]:
    """The mixing partner of a view: ``(file key, position in [0, 1))`` drawn from its seed
    over ``keys`` (sorted file keys; the segment's own file only when it is the only one),
    or None when mixing is off or ``keys`` is empty. The position picks the partner file's
    segment: ``starts[int(position * len(starts))]`` (:func:`partner_start`)."""
    if cfg.mix_snr_db is None or not keys:
        return None
    rng = _streams(cfg, segment_id, view)[5]
    pick, position = int(rng.integers(1 << 62)), float(rng.random())
    others = [k for k in keys if k != segment_id[0]] or list(keys)
    return others[pick % len(others)], position


def partner_start(starts: Sequence[int], position: float) -> int:
    """The start sample of the partner segment at ``position`` in [0, 1) of a file's segments."""
    return int(starts[min(len(starts) - 1, int(position * len(starts)))])


# ---------------------------------------------------------------------------------------------
# The augmentations
# ---------------------------------------------------------------------------------------------
def biquad_coefficients(band: Biquad, sample_rate: int) -> Tuple[np.ndarray, np.ndarray]:
    """(b [3], a [3]) of ``band`` at ``sample_rate`` (Robert Bristow-Johnson's Audio EQ
    Cookbook), normalised so a[0] = 1."""
    amp = 10.0 ** (band.gain_db / 40.0)
    w0 = 2.0 * np.pi * band.freq / sample_rate
    cos, alpha = np.cos(w0), np.sin(w0) / (2.0 * band.q)
    if band.kind == "peak":
        b = [1 + alpha * amp, -2 * cos, 1 - alpha * amp]
        a = [1 + alpha / amp, -2 * cos, 1 - alpha / amp]
    elif band.kind in ("low_shelf", "high_shelf"):
        s = 1.0 if band.kind == "low_shelf" else -1.0
        r = 2 * np.sqrt(amp) * alpha
        b = [amp * ((amp + 1) - s * (amp - 1) * cos + r),
             s * 2 * amp * ((amp - 1) - s * (amp + 1) * cos),
             amp * ((amp + 1) - s * (amp - 1) * cos - r)]
        a = [(amp + 1) + s * (amp - 1) * cos + r, -s * 2 * ((amp - 1) + s * (amp + 1) * cos),
             (amp + 1) + s * (amp - 1) * cos - r]
    else:
        raise ParameterError(f"views: unknown EQ band kind {band.kind!r}")
    b, a = np.asarray(b, np.float64), np.asarray(a, np.float64)
    return b / a[0], a / a[0]


def apply_eq(x: np.ndarray, bands: Sequence[Biquad], sample_rate: int) -> np.ndarray:
    """``x`` [T] through the cascade of ``bands``: the biquads' frequency response applied to
    the FFT of ``x`` zero-padded to 2T (the causal IIR filter of the first T samples, up to
    the part of its impulse response longer than T). float64 [T]."""
    if not bands:
        return np.asarray(x, np.float64)
    n = 2 * x.shape[0]
    num, den = np.ones(1), np.ones(1)  # the cascade's polynomials in z^-1
    for band in bands:
        b, a = biquad_coefficients(band, sample_rate)
        num, den = np.convolve(num, b), np.convolve(den, a)
    # rfft of a coefficient vector = the polynomial at e^{-jw} on the rfft grid
    h = np.fft.rfft(num, n) / np.fft.rfft(den, n)
    return np.fft.irfft(np.fft.rfft(x, n) * h, n)[: x.shape[0]]


def apply_speed(x: np.ndarray, speed: int) -> np.ndarray:
    """``x`` [T] played ``speed / SPEED_STEPS`` times faster (C++ resampler from a rate of
    ``speed`` to SPEED_STEPS), cut or zero-padded to T samples. float64 [T]."""
    from .audio import resample

    out = np.zeros(x.shape[0], np.float64)
    if speed == SPEED_STEPS:
        out[:] = x
        return out
    y = resample(np.asarray(x, np.float32), int(speed), SPEED_STEPS)
    out[: min(len(y), len(out))] = y[: len(out)]
    return out


def apply_shift(x: np.ndarray, shift: int, mode: str) -> np.ndarray:
    """``x`` [T] moved ``shift`` samples later (earlier when < 0): rolled ("circular") or with
    zeros entering ("pad")."""
    if mode == "circular":
        return np.roll(x, shift)
    out = np.zeros_like(x)
    if shift >= 0:
        out[shift:] = x[: x.shape[0] - shift]
    else:
        out[:shift] = x[-shift:]
    return out


def mix_at_snr(x: np.ndarray, partner: np.ndarray, snr_db: float) -> np.ndarray:
    """``x + a * partner`` with ``a`` such that sum(x^2) / sum((a partner)^2) = 10^(snr/10);
    ``x`` unchanged when either is silent."""
    # np.sum, not np.dot: BLAS would bring its own threads (and their rounding) into a view.
    px, pp = float(np.sum(np.square(x))), float(np.sum(np.square(partner)))
    if px == 0.0 or pp == 0.0:
        return x
    return x + np.sqrt(px / (pp * 10.0 ** (snr_db / 10.0))) * partner


def render_view(segment: np.ndarray, sample_rate: int, cfg: ViewConfig,
                segment_id: Tuple[str, int], view: int,
                partner: Optional[np.ndarray] = None) -> np.ndarray:
    """View ``view`` of a segment, float32 [W].

    Args:
        segment: the clean segment float32 [W] at ``sample_rate`` Hz (the file's own rate),
            cut from the decoded file and zero-padded past its end.
        cfg: the view settings (validated).
        segment_id: ``(file key, start sample at the file's rate)``.
        view: 0 (returns the clean segment) .. ``cfg.count - 1``.
        partner: the mixing partner's segment [W] at the same rate (see
            :func:`choose_partner`); None = no mixing for this view.
    """
    x = np.asarray(segment, dtype=np.float32)
    if view == 0:
        return x.copy()
    if not 0 < view < cfg.count:
        raise ParameterError(f"views: view={view} must be in [0, {cfg.count})")
    p = draw_view(cfg, segment_id, view, sample_rate)
    y = x.astype(np.float64)
    if p.speed is not None:
        y = apply_speed(y, p.speed)
    y = apply_eq(y, p.eq, sample_rate)
    if p.shift is not None:
        y = apply_shift(y, p.shift, cfg.shift_mode)
    if p.mix_snr_db is not None and partner is not None:
        y = mix_at_snr(y, np.asarray(partner, np.float64), p.mix_snr_db)
    if p.gain_db is not None:
        y = y * 10.0 ** (p.gain_db / 20.0)
    return y.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Partner audio, shared by the cache builder and the student's data path
# ---------------------------------------------------------------------------------------------
class FileAudio:
    """Decoded files at a given rate through a small LRU, safe to share between threads.

    Args:
        max_samples: LRU budget in samples (default 16M = 64 MB of float32).
    """

    def __init__(self, max_samples: int = 16_000_000) -> None:
        self.max_samples = max_samples
        self._lru: "collections.OrderedDict[Tuple[str, int], np.ndarray]" = \
            collections.OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> Dict[str, Any]:  # DataLoader workers started by spawn
        return {"max_samples": self.max_samples}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(state["max_samples"])

    def __call__(self, path: Path, sample_rate: int) -> np.ndarray:
        """float32 [T]: ``path`` decoded to mono at ``sample_rate`` Hz (:func:`load_audio`)."""
        from .audio import load_audio

        key = (str(path), int(sample_rate))
        with self._lock:
            wav = self._lru.get(key)
            if wav is not None:
                self._lru.move_to_end(key)
                return wav
        wav, _ = load_audio(path, int(sample_rate))
        with self._lock:
            if key not in self._lru:
                self._lru[key] = wav
                self._held += wav.shape[0]
            while self._held > self.max_samples and len(self._lru) > 1:
                _, old = self._lru.popitem(last=False)
                self._held -= old.shape[0]
        return wav


def segment_view(wav: np.ndarray, file_sr: int, segment_id: Tuple[str, int], view: int,
                 cfg: ViewConfig, window_s: float, sample_rate: int,
                 partner: Optional[np.ndarray] = None) -> np.ndarray:
    """View ``view`` >= 1 of a segment as a model sees it, float32 [W] at ``sample_rate``: cut
    from ``wav`` (the whole file, mono at its rate ``file_sr``), rendered at the file's rate
    (:func:`render_view`, ``partner`` from :func:`partner_segment`), resampled to
    ``sample_rate`` and cut or zero-padded to the window. The teacher cache and the student's
    data path both call it."""
    from .audio import resample
    from .segments import cut_segment, seconds_to_samples

    y = render_view(cut_segment(wav, segment_id[1], seconds_to_samples(window_s, file_sr)),
                    file_sr, cfg, segment_id, view, partner)
    if file_sr != sample_rate:
        y = resample(y, file_sr, sample_rate)
    return cut_segment(y, 0, seconds_to_samples(window_s, sample_rate))


def partner_segment(files: FileAudio, path: Path, start: int, partner_sr: int,
                    sample_rate: int, window: int) -> np.ndarray:
    """The partner segment float32 [window] at ``sample_rate``: the partner file decoded at that
    rate and cut at its segment ``start`` (samples at the partner's own rate ``partner_sr``),
    as the student's data path cuts segments."""
    from .segments import cut_segment

    wav = files(path, sample_rate)
    return cut_segment(wav, int(round(start * sample_rate / partner_sr)), window)
