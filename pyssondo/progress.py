"""A dependency-free progress bar for long work (caching, clustering, training, eval).

Draws on stderr only when it is a terminal (or when forced), at most every 0.1 s; otherwise it
stays silent so logs and CI output are not flooded. Shows count/total, rate, ETA and
caller-provided fields such as the loss.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Dict, Optional, TextIO


def _fmt_time(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Progress of ``total`` units of work (``None`` when unknown).

    Use as a context manager; call :meth:`update` with the units done and optional fields::

        with Progress(n, desc="cache", unit="seg") as bar:
            bar.update(16, files=3, rate_audio="12.5x")
    """

    def __init__(self, total: Optional[float], desc: str = "", unit: str = "it",
                 stream: Optional[TextIO] = None, enabled: Optional[bool] = None) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            enabled = os.environ.get("SSONDO_PROGRESS", "") == "1" or self.stream.isatty()
        self.enabled = enabled and os.environ.get("SSONDO_PROGRESS", "") != "0"
        self.done = 0.0
        self.fields: Dict[str, Any] = {}
        self._start = time.perf_counter()
        self._last_draw = 0.0

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    @property
    def rate(self) -> float:
        """Units per second so far."""
        return self.done / max(self.elapsed, 1e-9)

    def update(self, n: float = 1, **fields: Any) -> None:
        self.done += n
        self.fields.update(fields)
        now = time.perf_counter()
        if self.enabled and now - self._last_draw >= 0.1:
            self._last_draw = now
            self._draw(final=False)

    def line(self) -> str:
        """The bar's current text (without carriage return)."""
        parts = [self.desc] if self.desc else []
        if self.total:
            frac = min(1.0, self.done / self.total)
            filled = int(frac * 20)
            parts.append(f"{100 * frac:3.0f}% |{'#' * filled}{'.' * (20 - filled)}|")
            parts.append(f"{self.done:g}/{self.total:g} {self.unit}")
            eta = (self.total - self.done) / self.rate if self.done else float("nan")
            parts.append(f"{self.rate:.1f} {self.unit}/s ETA {_fmt_time(eta) if eta == eta else '?'}")
        else:
            parts.append(f"{self.done:g} {self.unit} {self.rate:.1f} {self.unit}/s")
        parts.append(f"[{_fmt_time(self.elapsed)}]")
        parts += [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.fields.items()]
        return " ".join(parts)

    def _draw(self, final: bool) -> None:
        self.stream.write("\r" + self.line() + ("\n" if final else ""))
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(final=True)
            self.enabled = False
