"""ssondo export: a run folder -> one TorchScript or ONNX student file with the front end inside."""
from __future__ import annotations

import argparse

HELP = "export a trained student to TorchScript or ONNX (waveform in, embedding out)"
DESCRIPTION = """\
Writes the student of RUN_DIR as one file: forward(wav [B, T]) -> [B, D] at the student's
sample rate with the log-mel front end inside, any length T >= 1 (long inputs are cut into
training-length windows and averaged), plus the per-window embeddings [B, S, D] (TorchScript:
segments(wav); ONNX: a second output 'segments'). Metadata (sample rate, front end, teacher,
training summary) is stored as ssondo.json inside (ONNX: in metadata_props). The file is
reloaded (ONNX: in onnxruntime) and compared with eager output before success is reported;
size, parameters and latency for 10 s of audio are printed.

--frontend dft computes the STFT as matrix products of a factored DFT, for runtimes without
FFT ops (ONNX opsets < 17, CoreML, TFLite, ExecuTorch); the default is the fastest each format
supports (TorchScript: fft, torch.fft.rfft; ONNX: dft, 3x faster in onnxruntime than its DFT op),
and the choice is printed and stored.
--int8 quantises the convolutions and linears statically (int8 weights and activations),
calibrated on the run's cached log-mel (ONNX: its segments' audio) or on --calibrate AUDIO_DIR,
keeping the fewest leading blocks float32 (ONNX: at least the first) whose embeddings agree
with float32 (mean centred cosine >= 0.95 on held-out calibration windows; nothing is written
otherwise), and prints size, latency, that agreement and the cosine to the float32 export
(with --eval DATA, also the share of the float32 student's probe score that int8 keeps). ONNX
needs pip install 'ssondo[onnx]'.

examples:
  ssondo export runs/20260101-120000-mn10-teacher -o student.pt
  ssondo export runs/20260101-120000-mn10-teacher -o student.onnx
  ssondo export runs/20260101-120000-mn10-teacher -o student-dft.pt --frontend dft
  ssondo export runs/20260101-120000-mn10-teacher -o student-proj.pt --projected
  ssondo export runs/20260101-120000-mn10-teacher -o student-int8.pt --int8 --threads 1
  ssondo export runs/20260101-120000-mn10-teacher -o student-int8.onnx --int8 --calibrate audio/
  ssondo export runs/20260101-120000-mn10-teacher -o student-int8.pt --int8 \\
      --eval data/labels.csv --label-column digit --split-column split
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pyssondo.frontend import FRONTENDS

    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder written by 'ssondo distill'")
    p.add_argument("-o", "--output", required=True, help="file to write (.pt, or .onnx for ONNX)")
    p.add_argument("--format", choices=("torchscript", "onnx"), default=None,
                   help="file format (default: onnx when --output ends in .onnx, else torchscript)")
    p.add_argument("--frontend", choices=FRONTENDS, default=None,
                   help="STFT as FFT or as factored DFT matrix products (default: the fastest "
                        "the format supports: fft for TorchScript, dft for ONNX)")
    p.add_argument("--projected", action="store_true",
                   help="keep the mapping head: output embeddings in the teacher's space")
    p.add_argument("--int8", action="store_true",
                   help="static int8 quantisation of convolutions and linears; reports size, "
                        "latency and cosine similarity to the float32 export")
    p.add_argument("--calibrate", metavar="AUDIO_DIR", default=None,
                   help="with --int8: calibrate on these audio files (default: the run's own "
                        "training segments)")
    p.add_argument("--eval", metavar="DATA", default=None,
                   help="with --int8: also score the int8 and float32 students with linear probe "
                        "+ kNN on this labeled folder or CSV, and print the share kept")
    p.add_argument("--label-column", default=None, help="--eval CSV: the label column")
    p.add_argument("--split-column", default=None, help="--eval CSV: the train/test column")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="which checkpoint to export (default: best)")
    p.add_argument("--threads", type=int, default=0, help="torch threads for the latency check")


def run(args: argparse.Namespace) -> int:
    import torch

    from pyssondo.export import export_run

    if args.eval and not args.int8:
        raise ValueError("--eval applies to --int8 (it scores int8 against float32)")
    tasks = [_task(args)] if args.eval else []
    if args.threads:
        torch.set_num_threads(args.threads)
    kw = dict(projected=args.projected, which=args.checkpoint, fmt=args.format,
              frontend=args.frontend)
    report = export_run(args.run_dir, args.output, int8=args.int8, calibrate=args.calibrate, **kw)
    if tasks:
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            fp32 = Path(tmp) / f"fp32{report.path.suffix}"
            export_run(args.run_dir, fp32, measure=False, quiet=True, **kw)
            print(score_kept(report.path, fp32, tasks))
    return 0


def _task(args):
    from pyssondo.evaluation.data import load_labeled

    return load_labeled(args.eval, label_column=args.label_column, split_column=args.split_column)


def score_kept(int8_path, fp32_path, tasks) -> str:
    """One line per probe: the int8 student's average primary score as a share of fp32's."""
    from pyssondo.evaluation.embed import open_embedder
    from pyssondo.evaluation.evaluate import evaluate
    from pyssondo.evaluation.report import compare

    models = [open_embedder(str(int8_path)), open_embedder(str(fp32_path))]
    models[0].name, models[1].name = "int8", "fp32"
    report = evaluate(models, tasks, progress=False).report
    probes = compare(report, "int8", "fp32")["probes"]
    return "\n".join(f"--eval {p}: int8 keeps {v['average']['percent']:.1f}% of the float32 "
                     f"student's score ({100 * v['average']['student']:.1f} vs "
                     f"{100 * v['average']['teacher']:.1f})" for p, v in probes.items())
