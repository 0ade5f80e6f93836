"""ssondo doctor: versions, core build info, threads, and the log-mel computed both ways."""
from __future__ import annotations

import argparse

HELP = "check the installation: versions, C++ core, threads, C++ vs torch log-mel"
DESCRIPTION = """\
Prints versions, how the C++ core was built, the thread counts, and computes the default
(S-SONDO) log-mel of 2 s of a test signal with the C++ core and with the TorchScript front end,
reporting the largest difference. Exits non-zero if they disagree by more than 1e-3.

examples:
  ssondo doctor
  ssondo doctor --threads 2
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=0,
                   help="C++ core threads (default: all cores)")


def run(args: argparse.Namespace) -> int:
    import platform
    import time

    import numpy as np
    import torch

    import pyssondo
    from pyssondo import MelConfig, log_mel
    from pyssondo import _core
    from pyssondo.frontend import LogMel

    if args.threads:
        pyssondo.set_num_threads(args.threads)
    info = _core.build_info()
    print(f"ssondo        {pyssondo.__version__}")
    print(f"python        {platform.python_version()} ({platform.machine()})")
    print(f"numpy         {np.__version__}")
    print(f"torch         {torch.__version__} (threads {torch.get_num_threads()})")
    print(f"C++ core      {info['compiler']}, C++{int(info['cxx_standard']) // 100 % 100}, "
          f"{info['build_type']}, threads {pyssondo.get_num_threads()}")

    cfg = MelConfig()
    t = np.arange(2 * cfg.sample_rate) / cfg.sample_rate
    sweep = np.sin(2 * np.pi * (100 + 4000 * t) * t).astype(np.float32)
    wav = 0.5 * sweep + 0.01 * np.random.default_rng(0).standard_normal(t.size).astype(np.float32)
    module = torch.jit.script(LogMel(cfg))
    with torch.no_grad():  # first calls build the C++ plan and optimise the script
        log_mel(wav, cfg)
        for _ in range(3):
            module(torch.from_numpy(wav)[None])
    t0 = time.perf_counter()
    ours = log_mel(wav, cfg)
    t_cpp = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        ref = module(torch.from_numpy(wav)[None])[0].numpy()
    t_torch = time.perf_counter() - t0
    err = float(np.abs(ours - ref).max())
    print(f"log-mel       {ours.shape[0]} bands x {ours.shape[1]} frames; C++ {1e3 * t_cpp:.1f} ms, "
          f"TorchScript {1e3 * t_torch:.1f} ms; max |C++ - torch| = {err:.2e}")
    ok = err <= 1e-3
    print("status        " + ("OK" if ok else "MISMATCH (expected <= 1e-3)"))
    return 0 if ok else 1
