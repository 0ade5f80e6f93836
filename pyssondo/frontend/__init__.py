"""The log-mel front end: one settings object, one window and filterbank, two backends.

- :mod:`.config`: :class:`MelConfig`, every front-end setting (and the valid choices).
- :mod:`.filters`: the window, the mel filterbank and the factored DFT of a config, in numpy.
- :mod:`.mel`: :func:`log_mel`, the C++ core's log-mel (numpy in, numpy out; training data,
  evaluation baselines).
- :mod:`.torch_mel`: :class:`LogMel` / :class:`DftLogMel`, the same log-mel as a TorchScript-able
  ``nn.Module`` (inside exported students), and :func:`make_frontend`.

The torch names load lazily, so importing this package (or :class:`MelConfig`) never imports
torch.
"""
from __future__ import annotations

import importlib
from typing import Any

from .config import FRONTENDS, MelConfig
from .filters import dft_factors, factored_dft, mel_filterbank, window
from .mel import log_mel

_TORCH = ("LogMel", "DftLogMel", "make_frontend")

__all__ = ["FRONTENDS", "MelConfig", "dft_factors", "factored_dft", "log_mel", "mel_filterbank",
           "window", *_TORCH]


def __getattr__(name: str) -> Any:
    if name not in _TORCH:
        raise AttributeError(f"module 'pyssondo.frontend' has no attribute {name!r}")
    value = getattr(importlib.import_module(".torch_mel", __name__), name)
    globals()[name] = value
    return value
