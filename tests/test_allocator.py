"""pyssondo.allocator: freed memory stays mapped, so repeated allocations stop page-faulting."""
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# glibc's malloc (which torch's CPU tensors come from) asked for three 1 MB blocks, each
# written, then all freed (3 MB free at the top of the heap, which glibc trims by default),
# 20 times; prints keep_freed_memory's result and the minor page faults per round.
ROUNDS = """
import ctypes, resource, sys
from pyssondo.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def round_():
    blocks = [libc.malloc(1 << 20) for _ in range(3)]
    for b in blocks:
        ctypes.memset(b, 1, 1 << 20)
    for b in blocks:
        libc.free(b)
for _ in range(3):
    round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    round_()
print(kept, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def faults_per_round(mode: str):
    out = subprocess.run([sys.executable, "-c", ROUNDS, mode], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_stops_page_faults():
    kept, with_call = faults_per_round("keep")
    _, default = faults_per_round("default")
    assert kept == "True"
    assert default >= 384, default  # glibc's own thresholds: most of the 768 pages fault again
    assert with_call < 16, with_call


def test_ssondo_sets_the_allocator_before_a_command(monkeypatch, capsys, tmp_path):
    import pyssondo.allocator
    from pyssondo.cli import main

    calls = []
    monkeypatch.setattr(pyssondo.allocator, "keep_freed_memory", lambda: calls.append(1))
    missing = str(tmp_path / "a.wav")
    assert main(["embed", str(tmp_path / "m.pt"), missing, "-o", str(tmp_path / "e.npy")]) == 1
    assert missing in capsys.readouterr().err
    assert calls == [1]
    assert main([]) == 2 and calls == [1]  # no command: nothing to run, nothing set
