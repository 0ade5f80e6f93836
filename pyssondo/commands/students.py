"""ssondo students: the student architectures with their size and cost."""
from __future__ import annotations

import argparse

from pyssondo.names import STUDENTS

HELP = "list the student architectures: parameters, embedding size, MACs, CPU latency, size"
SORT_KEYS = ("name", "params", "macs", "latency")
DESCRIPTION = """\
Prints every registered student with its family, parameter count (backbone only; the mapping
head used during distillation is discarded at export), embedding size, multiply-accumulates
for one input of --frames log-mel frames (default: 10 s at the default front end, 32 kHz, hop
512 = 624 frames), and, measured here, the latency of the exported student (TorchScript, the
log-mel front end inside, untrained weights) on one 10 s clip at 1 thread (median of 2 runs
after a warm-up) and the size of that export in MB, with a one-line description.

Measuring scripts and runs every export: a few seconds per student, about 1-2 minutes for all
of them on one core. --no-latency skips the two measured columns; --students measures only
the named ones. Latency is noisy on a busy machine: compare rows of one run.

examples:
  ssondo students
  ssondo students --sort latency
  ssondo students --students mn01,micronet-m0,mobilevitv2-050 --sort macs
  ssondo students --no-latency --frames 312       # 5 s, no measurement
  ssondo students --n-mels 64
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=int, default=None,
                   help="log-mel frames of the input the MACs are counted for "
                        "(default: 10 s with the default front end)")
    p.add_argument("--n-mels", type=int, default=None,
                   help="mel bands (default: the default front end's, 128)")
    p.add_argument("--students", default=None, metavar="NAMES",
                   help=f"comma-separated students to list, from {STUDENTS} (default: all)")
    p.add_argument("--sort", choices=SORT_KEYS, default="name",
                   help="row order, ascending (default: name, i.e. registration order)")
    p.add_argument("--no-latency", action="store_true",
                   help="skip exporting and timing each student (latency and size columns)")


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def measure_export(student, mel_cfg) -> tuple:
    """(latency in ms of a 10 s clip at 1 thread, size in bytes) of ``student`` exported as
    TorchScript with its front end (:func:`pyssondo.export.wrap`) as ``ssondo export`` writes
    it (:func:`pyssondo.export.script_float32`), saved and reloaded."""
    import io
    import warnings

    import torch

    from pyssondo.export import latency_ms, script_float32, wrap

    module = wrap(student, None, mel_cfg, window_s=10.0)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.* is deprecated in 2.13
        torch.jit.save(script_float32(module), buf)
        size = len(buf.getvalue())
        buf.seek(0)
        loaded = torch.jit.load(buf)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return latency_ms(loaded, mel_cfg.sample_rate, seconds=10.0, repeats=2), size
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from pyssondo.errors import ParameterError
    from pyssondo.frontend import MelConfig
    from pyssondo.students import list_students

    cfg = MelConfig()
    n_mels = cfg.n_mels if args.n_mels is None else args.n_mels
    frames = cfg.num_frames(10 * cfg.sample_rate) if args.frames is None else args.frames
    if frames < 1:
        raise ParameterError(f"--frames {frames} is invalid: expected >= 1")
    if n_mels < 1:
        raise ParameterError(f"--n-mels {n_mels} is invalid: expected >= 1")
    if args.sort == "latency" and args.no_latency:
        raise ParameterError("--sort latency needs the latency column: drop --no-latency")
    names = list_students()
    if args.students is not None:
        names = [s for s in args.students.split(",") if s]
        unknown = [s for s in names if s not in list_students()]
        if unknown or not names:
            raise ParameterError(f"--students {args.students!r}: unknown "
                                 f"{', '.join(unknown) or 'empty list'}; known students: "
                                 f"{', '.join(list_students())}")

    from pyssondo.students import count_macs, count_params, create_student, student_entry

    mel_cfg = replace(cfg, n_mels=n_mels)
    rows = []
    for name in names:
        model = create_student(name, n_mels=n_mels)
        latency, size = (None, None) if args.no_latency else measure_export(model, mel_cfg)
        rows.append((name, student_entry(name), model.embed_dim, count_params(model),
                     count_macs(model, n_mels, frames), latency, size))
    key = {"params": 3, "macs": 4, "latency": 5}.get(args.sort)
    if key is not None:
        rows.sort(key=lambda r: r[key])

    print(f"MACs for one input of {n_mels} mels x {frames} frames; latency: the exported "
          f"student on one 10 s clip, 1 thread" + (" (not measured)" if args.no_latency else ""))
    print(f"{'name':<16} {'family':<12} {'params':>8} {'dim':>5} {'MACs':>8} {'ms/10s':>7} "
          f"{'MB':>6}  description")
    for name, entry, dim, params, macs, latency, size in rows:
        lat = "-" if latency is None else f"{latency:.0f}"
        mb = "-" if size is None else f"{size / 1e6:.2f}"
        print(f"{name:<16} {entry.family:<12} {params / 1e6:>7.2f}M {dim:>5} {_human(macs):>8} "
              f"{lat:>7} {mb:>6}  {entry.description}")
    return 0
