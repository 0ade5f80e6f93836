"""Thread count of the C++ core. Nothing is set at import time; the default is all cores."""
from __future__ import annotations


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in the C++ core (log-mel, resampling, k-means, fused losses).

    ``n <= 0`` restores the default (the machine's hardware concurrency). torch's own thread
    count is separate: see ``torch.set_num_threads``.
    """
    from . import _core

    _core.set_num_threads(int(n))


def get_num_threads() -> int:
    """Threads the C++ core uses (>= 1)."""
    from . import _core

    return int(_core.get_num_threads())
