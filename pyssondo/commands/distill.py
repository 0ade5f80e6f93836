"""ssondo distill: teacher + unlabeled audio -> a small exported student (the main job)."""
from __future__ import annotations

import argparse
import dataclasses

from pyssondo.names import HEADS, LOSSES, STUDENTS, TEACHERS

HELP = "distill a teacher into a small student on unlabeled audio (the main job)"
DESCRIPTION = """\
Distills TEACHER (a TorchScript file or pkg.module:factory) into a small student using only the
teacher's embeddings of the audio in AUDIO_DIR (S-SONDO): fills or reuses the teacher cache
(by default with 4 views of every segment: the clean one and 3 augmented ones, each seen by
the teacher), clusters it for balanced sampling, trains student + mapping head (InfoNCE by
default), and writes a run folder OUT/<date-time>-<student>-<teacher>/ holding config.json
(every setting), log.jsonl, checkpoints/{last,best}.pt, loss.png and student.pt (the export).

Settings come from the defaults below, then --config FILE (TOML or JSON; keys are the names
used in a run's config.json, e.g. window_s, batch_size, with the front end in a [mel] table),
then the options given.
The student's front end runs at its own rate (--student-sr, default 32 kHz), independent of the
teacher's; a warning says when source audio is upsampled for it.

examples:
  ssondo distill crepe-tiny.pt audio/                        # the defaults: mn10, InfoNCE, 4 views
  ssondo distill crepe-tiny.pt aisfx.pt audio/ --teacher-weights 1,1  # two teachers, two heads
  ssondo distill aisfx.pt audio/ --eval labeled.csv --label-column program  # % of teacher kept
  ssondo distill teacher.pt audio/ --student mn04 --epochs 20 --batch-size 32
  ssondo distill teacher.pt audio/ --config cfg.toml --device cuda --precision bf16
  ssondo distill teacher.pt audio/ --views 1                  # clean segments only (4x less teacher time)
  ssondo distill teacher.pt audio/ --resume auto              # continue an interrupted run
  ssondo distill --resume runs/20260101-120000-mn10-teacher   # continue that run
"""

# (flag, DistillConfig field, type, help). Defaults are read from DistillConfig.
OPTIONS = [
    ("--teacher-sr", "teacher_sr", int, "teacher input rate in Hz, when the file does not say"),
    ("--cache-dir", "cache_dir", str,
     "teacher cache root or one cache folder (default OUT/cache/<audio folder>-<hash>)"),
    ("--window", "window_s", float, "segment window in seconds"),
    ("--hop", "hop_s", float, "segment hop in seconds (default: the window)"),
    ("--cache-dtype", "cache_dtype", str, "float16 or float32 teacher embeddings on disk"),
    ("--teacher-batch-size", "teacher_batch_size", int,
     "segments per teacher forward while filling the cache"),
    ("--student", "student", str, f"student architecture: {STUDENTS} (sizes: 'ssondo students')"),
    ("--head", "head", str, f"mapping head: {HEADS}"),
    ("--init", "init", str, "start from these student weights (run folder or checkpoint)"),
    ("--loss", "loss", str, f"distillation loss NAME[@tau=T][:WEIGHT], several joined by commas; "
                            f"NAME: {LOSSES}"),
    ("--target-norm", "target_norm", str,
     "targets normalised with the cache's statistics: none, center, standardize, whiten"),
    ("--teacher-weights", "teacher_weights", "floats", "loss weight per teacher, e.g. 1,0.5"),
    ("--target-weights", "target_weights", "floats",
     "loss weight per target (teachers' layers in order), e.g. 1,1,2"),
    ("--best-metric", "best_metric", str,
     "validation measure best.pt follows: val_cos, val_cos_centered, knn_agree_backbone, ..."),
    ("--clusters", "clusters", int, "K of the k-means behind balanced sampling"),
    ("--cluster-metric", "cluster_metric", str, "k-means metric: cosine or euclidean"),
    ("--balance-alpha", "balance_alpha", float, "0 = uniform, 1 = every cluster equally often"),
    ("--val-fraction", "val_fraction", float, "share of files held out for validation"),
    ("--epochs", "epochs", int, "training epochs"),
    ("--batch-size", "batch_size", int, "segments per step"),
    ("--samples-per-epoch", "samples_per_epoch", int,
     "segments per epoch (default: one pass, raised for small data to --min-steps-per-epoch)"),
    ("--min-steps-per-epoch", "min_steps_per_epoch", int,
     "small data: at least this many steps per epoch, at most --max-passes passes over the "
     "training segments (0 = one pass); sets under 1000 segments keep one pass (default: by "
     "student size, 400 under 100k parameters (mn01), else 200)"),
    ("--max-passes", "max_passes", int, "passes over the training segments that "
     "--min-steps-per-epoch may raise an epoch to (default: by student size, 8 under 100k "
     "parameters, else 4)"),
    ("--lr", "lr", float, "peak Adam learning rate"),
    ("--warmup-epochs", "warmup_epochs", int, "warm-up epochs (default min(8, epochs // 4))"),
    ("--final-lr-scale", "final_lr_scale", float, "lr at the end as a fraction of --lr"),
    ("--weight-decay", "weight_decay", float, "Adam weight decay"),
    ("--rounding-noise", "rounding_noise", float, "int8 steps of uniform noise added to the "
     "student's batch-norm outputs while training: a better student, and one that int8 "
     "rounding cannot break (0 = off; default: 1 from 1000 training segments, else 0)"),
    ("--grad-clip", "grad_clip", float, "max gradient norm (0 = off)"),
    ("--ema", "ema", float, "decay per step of the weight average that validation, best.pt "
     "and the export use (e.g. 0.995; 0 = off)"),
    ("--seed", "seed", int, "seed of sampling, augmentation and initialisation"),
    ("--precision", "precision", str,
     "fp32, bf16 or fp16 (autocast; fp16 uses a grad scaler on cuda)"),
    ("--device", "device", str, "cpu or cuda"),
    ("--workers", "workers", int, "DataLoader worker processes (0 = load in the main process)"),
    ("--threads", "threads", int, "torch and C++ threads (0 = library default)"),
    ("--compile", "compile", str, "training step: auto (on CPU, time eager, channels-last and "
     "torch.compile in the first steps of a run long enough to repay a compile, keep the "
     "fastest if >= 1.3x eager), on (torch.compile) or off (eager)"),
    ("--gain-db", "gain_db", float, "augmentation: random gain within +-dB (0 = off)"),
    ("--time-mask", "time_mask", int, "augmentation: max masked frames (0 = off)"),
    ("--freq-mask", "freq_mask", int, "augmentation: max masked mel bands (0 = off)"),
    ("--mixup", "mixup", float, "augmentation: Beta(a, a) mixup of inputs and targets (0 = off)"),
    ("--views", "views", int,
     "teacher-side views per segment in the teacher cache, view 0 clean (1 = none)"),
    ("--view-augment", "view_augment", str,
     "augmentations of views >= 1 (see 'ssondo cache --help')"),
    ("--out", "out", str, "folder that receives the run folder"),
    ("--save-every", "save_every", int, "also checkpoint every N steps (0 = each epoch only)"),
    ("--log-every", "log_every", int, "steps between log.jsonl lines"),
    ("--eval", "eval_data", str, "labeled data (class folders or CSV) scored at the end with "
                                 "'ssondo eval --compare': the share of the teacher kept"),
    ("--label-column", "eval_label_column", str, "label column of the --eval CSV"),
]
FLAGS = [
    ("--projected", "projected", "export the teacher-space embedding (through the head)"),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pyssondo.frontend import MelConfig
    from pyssondo.train.config import DistillConfig

    defaults = DistillConfig()
    p.add_argument("inputs", nargs="*", metavar="TEACHER... AUDIO_DIR",
                   help="one or more teachers (TorchScript files or pkg.module:factory; several "
                        "= ensemble distillation, one head each), then the folder of unlabeled "
                        "audio (scanned recursively). 'ssondo teacher build NAME' writes a "
                        f"teacher file: NAME is {TEACHERS} or hf:PATH_OR_ID")
    p.add_argument("--config", help="TOML or JSON file of settings (options override it)")
    p.add_argument("--resume", metavar="auto|PATH",
                   help="'auto': continue the newest run under --out with the same settings; "
                        "or a run folder / checkpoint to continue")
    for flag, name, typ, text in OPTIONS:
        parse, metavar = ((_floats, "W,W,...") if typ == "floats"
                          else (typ, typ.__name__.upper().replace("STR", "TEXT")))
        p.add_argument(flag, dest=name, type=parse, default=argparse.SUPPRESS, metavar=metavar,
                       help=text if getattr(defaults, name) is None  # the text says
                       else f"{text} (default: {getattr(defaults, name)})")
    for flag, name, text in FLAGS:
        p.add_argument(flag, dest=name, action="store_true", default=argparse.SUPPRESS, help=text)
    p.add_argument("--cache-mel", dest="cache_mel", nargs="?", const="on",
                   choices=("auto", "on", "off"), default=argparse.SUPPRESS,
                   help="keep the students' log-mel in a float16 file next to the teacher cache, "
                        "computed once instead of every epoch; auto: when it needs at most a "
                        "quarter of the free disk space (default: auto; bare flag: on)")
    mel = MelConfig()
    p.add_argument("--student-sr", dest="mel_sample_rate", type=int, default=argparse.SUPPRESS,
                   help=f"student front-end rate in Hz; f_max becomes min(f_max, rate / 2) "
                        f"(default: {mel.sample_rate})")
    p.add_argument("--n-mels", dest="mel_n_mels", type=int, default=argparse.SUPPRESS,
                   help=f"student mel bands (default: {mel.n_mels})")


def resolve_config(args: argparse.Namespace):
    """DistillConfig from defaults < --config file < options given."""
    from pyssondo.train.config import DistillConfig, read_settings

    settings = read_settings(args.config) if args.config else {}
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(DistillConfig)
             if f.name != "mel" and hasattr(args, f.name)}
    if args.inputs:
        *teachers, given["audio"] = args.inputs
        if teachers:
            given["teacher"] = teachers[0] if len(teachers) == 1 else teachers
    cfg = DistillConfig.from_dict({**settings, **given}, source=args.config or "options")
    mel = {}
    if hasattr(args, "mel_sample_rate"):
        mel["sample_rate"] = args.mel_sample_rate
        mel["f_max"] = min(cfg.mel.f_max, args.mel_sample_rate / 2)
    if hasattr(args, "mel_n_mels"):
        mel["n_mels"] = args.mel_n_mels
    if mel:
        cfg = cfg.replace(mel=cfg.mel.replace(**mel))
    from pyssondo.loading import is_factory_spec

    def absolute(spec: str) -> str:
        return spec if not spec or is_factory_spec(spec) else _absolute(spec)

    cfg = cfg.replace(audio=absolute(cfg.audio), init=absolute(cfg.init),
                      eval_data=absolute(cfg.eval_data),
                      teacher=([absolute(t) for t in cfg.teacher]
                               if isinstance(cfg.teacher, list) else absolute(cfg.teacher)))
    return cfg


def run(args: argparse.Namespace) -> int:
    from pyssondo.commands.training import resume_hint, run_training
    from pyssondo.train.distill import distill

    cfg = resolve_config(args)
    if not args.resume and not (cfg.teachers and cfg.audio) and not cfg.cache_dir:
        raise ValueError("give TEACHER and AUDIO_DIR (or --resume, or --cache-dir of a cache)")
    result, code = run_training(
        "distill", cfg.device, lambda: distill(cfg, resume=args.resume),
        interrupted=lambda: resume_hint("ssondo distill", cfg.out, cfg.hash(), args.resume))
    if result is None:
        return code
    run_dir = result.run
    print(f"run folder   {run_dir.path}")
    print(f"config       {run_dir.config}")
    print(f"log          {run_dir.log}")
    print(f"checkpoints  {run_dir.last} (best: {run_dir.best})")
    if run_dir.plot.is_file():
        print(f"plot         {run_dir.plot}")
    final = result.summary.get("final") or {}
    if final.get("val_cos") is not None:
        print(f"validation   held-out segments, last epoch: cosine to the teacher "
              f"{final['val_cos']:.4f}, after removing the teacher's mean "
              f"{final['val_cos_centered']:.4f}; neighbours shared with the teacher "
              f"{final['knn_agree_backbone']:.1%}; CKA {final['cka_backbone']:.3f}")
    if result.best_metric is not None:
        print(f"best.pt      best {result.summary['best_metric']} {result.best_metric:.4f}")
    kept = result.summary.get("kept")
    if kept is not None:
        print(f"quality      the student keeps {kept:.1%} of the teacher's probe score on "
              f"{result.summary['eval_data']} (report: {result.summary['eval_report']})")
    if result.export:
        print(f"export       {result.export}  (embed with: ssondo embed {result.export} audio.wav)")
    return 0


def _floats(text: str):
    """'1,0.5' -> [1.0, 0.5] (argparse type)."""
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}")


def _absolute(path: str) -> str:
    from pathlib import Path

    return str(Path(path).expanduser().resolve())
