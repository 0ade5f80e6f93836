"""ssondo: distill large audio embedding models into small, fast students, and export them.

The top-level names load lazily so that ``import pyssondo`` (and ``ssondo --help``) stays instant:
nothing here imports torch, and the compiled core loads on first use.
"""
from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any

from .errors import AudioError, ParameterError

try:  # one source: pyproject.toml's version, as installed (the C++ core is built with it too)
    __version__ = metadata.version("ssondo")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "unknown"

_LAZY = {
    "MelConfig": "pyssondo.frontend",
    "load_audio": "pyssondo.audio",
    "resample": "pyssondo.audio",
    "log_mel": "pyssondo.frontend",
    "set_num_threads": "pyssondo.threads",
    "get_num_threads": "pyssondo.threads",
    "keep_freed_memory": "pyssondo.allocator",
}

__all__ = ["AudioError", "ParameterError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pyssondo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
