"""Locating pretrained weight files that ship inside PyPI wheels, without importing the wheel.

Only the wheel's data file is read (``torch.load(weights_only=True)``); the package's own code
never runs, so its import-time dependencies (torchaudio, librosa, essentia, ...) are not needed.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path


def wheel_asset(package: str, relpath: str, pip_spec: str) -> Path:
    """Path of ``relpath`` inside the installed ``package``.

    Raises:
        ValueError: the package is not installed or lacks the file; the message gives the pip
            command that installs it (``pip install --no-deps <pip_spec>``).
    """
    hint = f"install it with: pip install --no-deps {pip_spec}"
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the '{package}' package (which holds the pretrained weights) is not "
                         f"installed; {hint}")
    for root in spec.submodule_search_locations:
        path = Path(root) / relpath
        if path.is_file():
            return path
    raise ValueError(f"{package}: weight file {relpath} not found in the installed package; {hint}")
