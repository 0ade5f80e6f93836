"""Embedding many files with an exported student, the windows of different files sharing calls.

An exported student (``ssondo export``, TorchScript or ONNX) cuts its input into windows of W
samples (``segment_samples`` in its ssondo.json), embeds each window (its ``segments``) and
averages them, each weighted by its real samples over the input's (its ``pool``).
:func:`embed_files` does the same for many files: it cuts every file into those windows
(:func:`pyssondo.segments.plan_segments`, hop = W, the tail zero-padded), embeds them in calls
of exactly ``batch`` windows whatever file they come from, and pools each file's windows with
the same weights. The result equals calling the student on each file, within float rounding.

Why: one call per file runs a short clip as a batch of one window, the slowest way to run a
small CNN; and every call here has the same shape (only a job's single, partial call differs),
which int8 TorchScript students need to stay fast: torch's int8 convolutions prepare for the
input shape of their first call and take a slower path for other shapes (README, "int8").
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from .export_meta import is_student_meta
from .segments import cut_segment, plan_segments

# Windows per call. mn04 exports at 1 thread, ms per 2 s window at batch 1 / 4 / 8 / 16 / 32:
# TorchScript float32 2.7 / 1.1 / 0.9-1.3 / 1.1-1.4 / 1.3-1.6, int8 2.0 / 1.3 / 0.75 / 0.6-1.1 /
# 1.0, ONNX 1.2 / 0.71 / 0.76 / 0.80 / 0.84 (bigger batches leave the caches); 8 is near the
# best of each, with half the activation memory of 16.
DEFAULT_BATCH = 8


def student_window(meta: Dict[str, Any], module: Any) -> Optional[int]:
    """The window W in samples of an exported student with a ``segments`` method (its
    ``meta`` being its ssondo.json); None for any other model."""
    if not is_student_meta(meta) or not hasattr(module, "segments"):
        return None
    return int(meta["segment_samples"])


def student_segments(module: Any, what: str, device: str = "cpu"
                     ) -> Callable[[np.ndarray, List[Any]], np.ndarray]:
    """The ``segments`` argument of :func:`embed_files` for a loaded student ``module``: windows
    float32 [B, W] and the files they come from -> the student's window embeddings float32
    [B, D], its call checked by :func:`pyssondo.loading.forward_checked` (errors name ``what``,
    e.g. "model student.pt", and the files)."""
    import torch

    from .loading import describe_files, forward_checked

    def segments(x: np.ndarray, files: List[Any]) -> np.ndarray:
        out = forward_checked(module.segments, torch.from_numpy(x).to(device), what=what,
                              names=describe_files(files))
        return out.float()[:, 0].cpu().numpy()

    return segments


def embed_files(segments: Callable[[np.ndarray, List[Any]], np.ndarray],
                files: Iterable[Tuple[Any, np.ndarray]], window: int,
                batch: int = DEFAULT_BATCH) -> Iterator[Tuple[Any, np.ndarray]]:
    """Yields ``(key, embedding float32 [D])`` for each ``(key, waveform float32 [T])`` of
    ``files``, in their order, as soon as all of a file's windows are embedded.

    Args:
        segments: float32 [B, W] windows and the keys of the files they come from (for
            messages) -> their embeddings float32 [B, D]; called with B = ``batch`` windows,
            except for a job's only call, which has as many windows as the job. The last call
            of a longer job is padded with silent windows to ``batch``.
        window: W, the student's window in samples.
        batch: windows per call (>= 1).

    Raises:
        ValueError: a file has no samples (the message names it), or ``batch`` < 1.
    """
    if batch < 1:
        raise ValueError(f"batch={batch} must be >= 1 window per call")
    blocks: List[np.ndarray] = []         # pending windows, float32 [n, W] each, in order
    owners: List[Tuple[int, float]] = []  # per pending window: (file number, weight)
    keys: Dict[int, Any] = {}
    sums: Dict[int, np.ndarray] = {}
    left: Dict[int, int] = {}             # windows of a file not embedded yet
    queue: Deque[int] = deque()           # file numbers not yielded yet, in order
    full_call_done = False

    def take(n: int) -> np.ndarray:
        """The first ``n`` pending windows as one array [n, W] (one copy)."""
        parts, need = [], n
        while need:
            if len(blocks[0]) <= need:
                parts.append(blocks.pop(0))
            else:
                parts.append(blocks[0][:need])
                blocks[0] = blocks[0][need:]
            need -= len(parts[-1])
        return np.concatenate(parts) if len(parts) > 1 else np.array(parts[0])

    def run(n: int) -> None:
        nonlocal full_call_done
        x = take(n)
        if n < batch and full_call_done:
            x = np.concatenate([x, np.zeros((batch - n, window), np.float32)])
        out = np.asarray(segments(x, [keys[i] for i, _ in owners[:n]]), dtype=np.float64)
        for row, (i, weight) in zip(out, owners[:n]):
            sums[i] = sums[i] + weight * row if i in sums else weight * row
            left[i] -= 1
        del owners[:n]
        full_call_done = full_call_done or n == batch

    def finished() -> Iterator[Tuple[Any, np.ndarray]]:
        while queue and left[queue[0]] == 0:
            i = queue.popleft()
            del left[i]
            yield keys.pop(i), sums.pop(i).astype(np.float32)

    for number, (key, wav) in enumerate(files):
        plan = plan_segments(int(wav.shape[0]), window, window)
        if not plan:
            raise ValueError(f"{key}: no samples to embed")
        keys[number], left[number] = key, len(plan)
        queue.append(number)
        wav = np.asarray(wav, dtype=np.float32)
        full = wav.shape[0] // window
        if full:
            blocks.append(wav[:full * window].reshape(full, window))  # a view, no copy
        if full < len(plan):
            blocks.append(cut_segment(wav, full * window, window)[None])
        owners.extend((number, real / wav.shape[0]) for _, real in plan)
        while len(owners) >= batch:
            run(batch)
            yield from finished()
    if owners:
        run(len(owners))
        yield from finished()
