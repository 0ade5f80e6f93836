"""Audio loading: decode with soundfile, mix to mono, resample with the C++ core, validate.

Every problem with an input file raises :class:`pyssondo.AudioError` (a ValueError) whose
message names the file and the problem.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import NamedTuple, Optional, Tuple, Union

import numpy as np

from .errors import AudioError, ParameterError

PathLike = Union[str, "os.PathLike[str]"]

# Extensions scanned as audio in folders (decoding is soundfile's; mp3 needs libsndfile >= 1.1).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc")


class AudioInfo(NamedTuple):
    """Header facts of an audio file, read without decoding it."""

    sample_rate: int
    frames: int
    channels: int


def audio_info(path: PathLike) -> AudioInfo:
    """Sample rate (Hz), length (frames) and channel count of ``path``; AudioError if unusable."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    try:
        info = sf.info(str(path))
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise AudioError(f"{path}: not a readable audio file ({_reason(e)})") from None
    return AudioInfo(int(info.samplerate), int(info.frames), int(info.channels))


def load_audio(path: PathLike, sr: Optional[int] = None, *, mono: bool = True,
               ) -> Tuple[np.ndarray, int]:
    """Decodes an audio file to float32 in [-1, 1].

    Args:
        path: any format soundfile reads (wav, flac, ogg, mp3, aiff, ...).
        sr: target sample rate in Hz, or None to keep the file's rate. Resampling uses the
            band-limited C++ resampler (:func:`resample`).
        mono: average the channels to one.

    Returns:
        ``(wav, sample_rate)``: wav is [T] when mono, else [C, T]; float32, C-contiguous.

    Raises:
        AudioError: the file is missing, unreadable, not audio, empty, truncated, or holds
            NaN/inf samples.
    """
    import soundfile as sf

    path = Path(path)
    if sr is not None and (not isinstance(sr, (int, np.integer)) or sr <= 0):
        raise ParameterError(f"load_audio: sr={sr!r} must be a positive integer (Hz) or None")
    info = audio_info(path)
    _check_riff_data_complete(path)
    try:
        data, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(f"{path}: decoding failed ({_reason(e)})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: the file holds no samples")
    if info.frames > 0 and data.shape[0] < info.frames:
        raise AudioError(f"{path}: truncated: header says {info.frames} frames, "
                         f"only {data.shape[0]} could be decoded")
    if not np.isfinite(data).all():
        bad = int(np.flatnonzero(~np.isfinite(data).all(axis=1))[0])
        raise AudioError(f"{path}: NaN or inf sample at frame {bad}")
    wav = data.mean(axis=1) if mono else data.T
    wav = np.ascontiguousarray(wav, dtype=np.float32)
    if sr is not None and sr != file_sr:
        wav = resample(wav, file_sr, int(sr))
        file_sr = int(sr)
    return wav, int(file_sr)


def resample(wav: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited resampling along the last axis (C++ windowed-sinc polyphase filter).

    Args:
        wav: float array [..., T] (converted to float32).
        sr_in, sr_out: positive integer rates in Hz; any ratio (reduced by their gcd).

    Returns:
        float32 [..., ceil(T * sr_out / sr_in)].
    """
    from . import _core

    for name, rate in (("sr_in", sr_in), ("sr_out", sr_out)):
        if not isinstance(rate, (int, np.integer)) or rate <= 0:
            raise ParameterError(f"resample: {name}={rate!r} must be a positive integer (Hz)")
    x = np.asarray(wav)
    if x.ndim < 1 or x.dtype.kind not in "fiu":
        raise ParameterError(f"resample: wav must be a real array [..., T], got shape "
                             f"{x.shape} dtype {x.dtype}")
    if sr_in == sr_out:
        return np.array(x, dtype=np.float32, copy=True)
    lead = x.shape[:-1]
    flat = np.ascontiguousarray(x.reshape(int(np.prod(lead)), x.shape[-1]), dtype=np.float32)
    out = _core.resample(flat, int(sr_in), int(sr_out))
    return out.reshape(*lead, out.shape[-1])


def warn_if_upsampled(path: PathLike, file_sr: int, target_sr: int, what: str) -> None:
    """Warns (once per call) that ``what`` will see an empty band above the file's Nyquist."""
    if file_sr < target_sr:
        warnings.warn(
            f"{path}: recorded at {file_sr} Hz, upsampled to {target_sr} Hz for {what}; "
            f"the band above {file_sr // 2} Hz is empty", stacklevel=2)


def _check_riff_data_complete(path: Path) -> None:
    """AudioError if a RIFF/WAVE file's data chunk declares more bytes than the file holds.

    libsndfile silently decodes the samples that are present in a cut WAV file, so the
    truncation is detected here from the header. Streamed files that leave the size as 0 or
    0xFFFFFFFF are not flagged. Other formats are left to the decoder.
    """
    import struct

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
            if chunk_id == b"data":
                available = size - pos - 8
                if chunk_size not in (0, 0xFFFFFFFF) and chunk_size > available:
                    raise AudioError(f"{path}: truncated: the data chunk declares {chunk_size} "
                                     f"bytes, the file holds {available}")
                return
            pos += 8 + chunk_size + (chunk_size & 1)


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    return text.replace(str(Path.cwd()) + os.sep, "")
