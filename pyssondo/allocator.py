"""Keeping freed memory mapped (glibc), so that a model's forward does not page-fault.

glibc's malloc returns memory to the system as soon as a few MB are free at the top of its
heap, and serves blocks above a threshold that moves with the program's history from fresh
mappings. torch on CPU allocates every intermediate tensor anew, so each forward touches pages
that the kernel must map again: exported mn04 students (32 kHz, 10 s) took up to 2650 minor
page faults per forward, up to 3.7 ms on top of 5-7 ms at 1 thread, with the count set by the
order of allocations, so it differed between the float32 and int8 files and from run to run.
Setting only one of the two thresholds made it worse (8600 faults, 12 ms).
:func:`keep_freed_memory` fixes both thresholds: no faults after the first forward.

``ssondo`` calls it before every command, the C++ apps in ``main`` (``cli/app.cpp``) and the
benchmarks at their start. A program that loads an exported student itself calls
``pyssondo.keep_freed_memory()`` once, or sets, before it starts,
``GLIBC_TUNABLES=glibc.malloc.trim_threshold=268435456:glibc.malloc.mmap_threshold=33554432``.
onnxruntime allocates from its own arena and did not fault.
"""
from __future__ import annotations

import ctypes
import ctypes.util

TRIM_BYTES = 256 << 20  # free memory kept at the top of the heap (glibc default: 128 KB, moving)
MMAP_BYTES = 32 << 20   # blocks this large or larger get their own mapping (glibc's maximum)
_M_TRIM_THRESHOLD = -1  # mallopt parameters, <malloc.h>
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Sets glibc malloc's trim threshold to :data:`TRIM_BYTES` and its mmap threshold to
    :data:`MMAP_BYTES` for this process. Returns whether both took effect (False where the C
    library is not glibc: nothing is changed there)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # no C library to load, or one without mallopt (musl)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES)) and bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_BYTES))
