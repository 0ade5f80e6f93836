"""Fixed-length segments of a clip (../shared/DESIGN.md, "Segments").

A clip of T samples is cut into windows of W samples every H samples. A clip shorter than W is
one zero-padded segment; the tail of a longer clip is a final, zero-padded segment, never
dropped. A window is emitted only if it holds samples that the previous window did not, so with
H = W every sample lies in exactly one segment. Segment ids are (file key, start sample) with
the start counted at the file's own sample rate, so ids do not depend on any model's rate.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

from .errors import ParameterError


def plan_segments(num_samples: int, window: int, hop: int) -> List[Tuple[int, int]]:
    """Segments of a clip as ``(start, length)`` pairs, in samples.

    Args:
        num_samples: clip length T (>= 0). An empty clip has no segments.
        window: segment length W in samples (>= 1).
        hop: distance between segment starts H in samples (>= 1; H > W leaves gaps).

    Returns:
        ``length`` is the number of real samples (<= W); the rest of the window is padding.
    """
    if window < 1 or hop < 1:
        raise ParameterError(f"segments: window={window} and hop={hop} must both be >= 1 sample")
    if num_samples <= 0:
        return []
    out = [(0, min(window, num_samples))]
    start = hop
    while start < num_samples and start + window - min(hop, window) < num_samples:
        out.append((start, min(window, num_samples - start)))
        start += hop
    return out


def seconds_to_samples(seconds: float, sample_rate: int) -> int:
    """Rounds a duration in seconds to samples at ``sample_rate`` (at least 1)."""
    return max(1, int(round(seconds * sample_rate)))


def cut_segment(wav: np.ndarray, start: int, window: int) -> np.ndarray:
    """``wav[start:start + window]`` zero-padded to exactly ``window`` samples (float32, [W])."""
    out = np.zeros(window, dtype=np.float32)
    piece = wav[start:start + window]
    out[: piece.shape[0]] = piece
    return out
