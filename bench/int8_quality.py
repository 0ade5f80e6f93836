"""int8 on trained students: the share of the float32 student's probe score that the int8
export keeps, TorchScript and ONNX (QDQ), on real held-out labeled audio, in one process.

For each RUN_DIR (a finished ``ssondo distill`` run) the student is exported as float32 and with
``--int8`` (calibrated on the run's own training segments, as ``ssondo export --int8`` does), in
both formats, exactly through :func:`pyssondo.export.export_run`; each export is scored with
``ssondo eval``'s linear probe and kNN on FSDD digit and speaker (its train/test split) and on
../shared/data/notes program (5-fold). Prints per run and format: the float32 front units the
export chose, its agreement with float32 on held-out calibration windows, size and latency
ratios (10 s, batch 1, --threads), and per probe and task the int8 score as a share of float32's.

usage: python bench/int8_quality.py RUN_DIR... [--threads 1] [--formats torchscript onnx]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pyssondo.allocator import keep_freed_memory  # noqa: E402
from pyssondo.evaluation.config import EvalConfig  # noqa: E402
from pyssondo.evaluation.data import load_labeled  # noqa: E402
from pyssondo.evaluation.embed import open_embedder  # noqa: E402
from pyssondo.evaluation.evaluate import evaluate  # noqa: E402
from pyssondo.evaluation.report import compare  # noqa: E402
from pyssondo.export import export_run  # noqa: E402

DATA = Path(os.environ.get("SSONDO_DATA", ROOT.parent / "shared" / "data"))
SUFFIX = {"torchscript": ".pt", "onnx": ".onnx"}


def tasks():
    fsdd = DATA / "fsdd" / "labels.csv"
    return [load_labeled(fsdd, name="digit", label_column="digit", split_column="split"),
            load_labeled(fsdd, name="speaker", label_column="speaker", split_column="split"),
            load_labeled(DATA / "notes" / "labels.csv", name="program", label_column="program")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--formats", nargs="+", choices=tuple(SUFFIX), default=list(SUFFIX))
    args = ap.parse_args()
    keep_freed_memory()  # as every ssondo command does (pyssondo/allocator.py)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    labeled = tasks()
    with tempfile.TemporaryDirectory() as tmp:
        for run in map(Path, args.runs):
            for fmt in args.formats:
                f32 = export_run(run, Path(tmp) / f"{run.name}-fp32{SUFFIX[fmt]}", quiet=True,
                                 measure=False)  # the int8 report times float32 in turns
                q = export_run(run, Path(tmp) / f"{run.name}-int8{SUFFIX[fmt]}", int8=True,
                               quiet=True)
                check = q.meta.int8_check
                models = [open_embedder(str(q.path)), open_embedder(str(f32.path))]
                models[0].name, models[1].name = "int8", "fp32"
                cfg = EvalConfig(window_s=float(q.meta.window_s))
                report = evaluate(models, labeled, cfg, progress=False).report
                print(f"{run.name} {fmt}: float32 front {check['float_units']}, agreement "
                      f"{check['agreement']:.3f} (tried {check['tried']}); size "
                      f"{q.size_bytes / f32.size_bytes:.2f}x, latency "
                      f"{q.latency_ms / q.int8['fp32_latency_ms']:.2f}x ({args.threads} "
                      f"thread(s), best of 3 alternating rounds)",
                      flush=True)
                for probe, v in compare(report, "int8", "fp32")["probes"].items():
                    per = ", ".join(f"{t} {x['percent']:.1f}% ({100 * x['student']:.1f} vs "
                                    f"{100 * x['teacher']:.1f})" for t, x in v["tasks"].items())
                    print(f"  {probe}: int8 keeps {v['average']['percent']:.1f}% of float32 on "
                          f"average; {per}", flush=True)


if __name__ == "__main__":
    main()
