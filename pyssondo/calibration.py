"""Calibration data for static int8 quantisation: training-length windows of real audio.

Two sources: the run's own segments (its teacher cache lists them; their log-mel is read from
the run's float16 log-mel cache when it exists, so nothing is decoded), or the audio files of a
folder given with ``--calibrate`` (decoded, resampled to the student's rate and cut into
windows; tails zero-padded like training segments). Windows are taken evenly spaced over the
source, so a few dozen cover all of it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

# Windows gathered: half calibrate the ranges, half check the result. With 32 + 32 (the earlier
# 64) the result was a draw of the windows: a trained mn04 with every block int8 agreed 0.82 on
# the export's 32 check windows and 0.966 (32 other calibration windows) on 256 held-out ones;
# 128 calibration windows gave 0.977, and the trained eres2net16 with its stem float32 agreed
# 0.52 (32) or 0.986 (128) on those 256 (bench/int8_quality.py gives the probe scores).
DEFAULT_WINDOWS = 256


@dataclass
class Calibration:
    """``waveforms``: float32 [N, W] at the student's rate; ``logmel``: float32 [N, M, F] when
    read from the run's log-mel cache (else None: compute it with the front end); ``source``:
    where they came from, in words."""

    waveforms: Optional[np.ndarray]
    logmel: Optional[np.ndarray]
    source: str

    def halves(self) -> "tuple[Calibration, Calibration]":
        """(even windows, odd windows): one half to calibrate on, the other to check the
        int8 student on audio it was not calibrated on. Raises ValueError below 2 windows."""
        rows = self.waveforms if self.waveforms is not None else self.logmel
        if len(rows) < 2:
            raise ValueError(f"int8: {len(rows)} calibration window(s) ({self.source}); need "
                             f"at least 2 (one to calibrate, one to check)")

        def part(i: int) -> "Calibration":
            return Calibration(None if self.waveforms is None else self.waveforms[i::2],
                               None if self.logmel is None else self.logmel[i::2], self.source)

        return part(0), part(1)

    def logmel_batches(self, frontend: Any, batch: int = 8):
        """float32 torch log-mel batches [<= batch, M, F] (from the cache or ``frontend``)."""
        import torch

        if self.logmel is not None:
            data = self.logmel
            for i in range(0, len(data), batch):
                yield torch.from_numpy(np.asarray(data[i:i + batch], dtype=np.float32))
            return
        with torch.no_grad():
            for i in range(0, len(self.waveforms), batch):
                yield frontend(torch.from_numpy(self.waveforms[i:i + batch]))


def from_audio_dir(folder: Any, sample_rate: int, window: int, n: int = DEFAULT_WINDOWS
                   ) -> Calibration:
    """Up to ``n`` windows of ``window`` samples from the audio files under ``folder``.

    Raises:
        FileNotFoundError / ValueError: no such folder, or no audio in it.
    """
    from .audio import load_audio
    from .commands.embed import audio_files
    from .segments import cut_segment, plan_segments

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: --calibrate expects a folder of audio files")
    files = audio_files([folder])
    per_file = [(path, start) for path in files
                for start, _ in plan_segments(_frames(path, sample_rate), window, window)]
    if not per_file:
        raise ValueError(f"{folder}: no audio samples to calibrate on")
    picks = _evenly(len(per_file), n)
    decoded: dict = {}
    rows = []
    for i in picks:
        path, start = per_file[i]
        if path not in decoded:
            decoded = {path: load_audio(path, sample_rate)[0]}  # keep one file decoded at a time
        rows.append(cut_segment(decoded[path], start, window))
    return Calibration(np.stack(rows), None,
                       f"{len(rows)} windows of {len(files)} files in {folder}")


def from_run(run_config: Path, mel_cfg: Any, window_s: float, n: int = DEFAULT_WINDOWS, *,
             need_waveforms: bool) -> Calibration:
    """Up to ``n`` of the run's own training segments (the segments of its teacher cache).

    With ``need_waveforms`` False and the run's log-mel cache on disk, only log-mel rows are
    read from it; otherwise the segments are decoded from the audio files.

    Raises:
        FileNotFoundError: the run's cache (or its audio) is gone; the message says to pass
            --calibrate AUDIO_DIR.
    """
    from .cache import EmbeddingCache
    from .train.data import SegmentAudio, mel_cache_path
    from .train.rundir import RunDir

    recorded = RunDir(Path(run_config).parent).read_config()
    cache_dir = recorded.get("cache")
    hint = "; pass --calibrate AUDIO_DIR"
    if not cache_dir or not Path(cache_dir).is_dir():
        raise FileNotFoundError(f"{run_config}: the run's teacher cache {cache_dir!r} is not "
                                f"there to calibrate on{hint}")
    cache = EmbeddingCache(cache_dir)
    segments = cache.segments()
    audio = SegmentAudio(segments, mel_cfg.sample_rate, window_s)
    picks = _evenly(len(segments), n)
    mel_path = mel_cache_path(Path(cache_dir), audio, mel_cfg, cache.ids)
    where = f"{len(picks)} of the run's {len(segments)} training segments"
    if not need_waveforms and mel_path.is_file():
        mel = np.load(mel_path, mmap_mode="r")
        return Calibration(None, np.asarray(mel[picks], dtype=np.float32),
                           f"{where} (cached log-mel {mel_path.name})")
    try:
        wavs = np.stack([audio(int(i)) for i in picks])
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"{run_config}: cannot read the run's audio to calibrate on "
                                f"({e}){hint}") from None
    return Calibration(wavs, None, f"{where} (decoded audio)")


def _evenly(total: int, n: int) -> np.ndarray:
    """min(n, total) indices spread evenly over range(total)."""
    return np.unique(np.linspace(0, total - 1, num=min(n, total)).round().astype(np.int64))


def _frames(path: Path, sample_rate: int) -> int:
    from .audio import audio_info

    info = audio_info(path)
    return int(round(info.frames * sample_rate / info.sample_rate))
