"""ssondo adapt: continue a distilled student on a new domain's audio without forgetting."""
from __future__ import annotations

import argparse

HELP = "adapt a distilled student to a new domain's unlabeled audio without forgetting"
DESCRIPTION = """\
Continual adaptation (SONAR): starts from RUN_DIR, a finished 'ssondo distill' run (its
teacher, teacher cache, student, head and front end), caches the teacher's embeddings of
NEW_AUDIO_DIR with the same teacher, window and hop, and trains on both domains:
  - every batch replays round(--replay-fraction * batch) segments of the run's old training
    files and takes the rest from the new audio, each part balanced over its clusters;
  - the run's k-means codebook grows a new cluster for each new pattern whose cosine to every
    existing centroid is below --grow-threshold (default: the 5th percentile of the old
    segments' cosine to their own centroid, so it follows the data);
  - the loss adds --self-weight * (1 - cos) between the student's embedding and the frozen
    previous student's (computed once and stored in the run folder).
Validation cosine to the teacher and distill's label-free measures (kNN agreement, CKA) are
logged on held-out OLD and NEW files before training and after each epoch (validation.png), so
forgetting is visible; best.pt follows the parent's --best-metric averaged over both. The new run folder has distill's
layout (config.json with the parent, log.jsonl, checkpoints/, loss.png, student.pt).
Training settings not given are the parent run's; the run lands next to the parent.

examples:
  ssondo adapt runs/20260101-120000-mn04-crepe_tiny speech/ --epochs 5
  ssondo adapt runs/<run> speech/ --replay-fraction 0.25 --self-weight 0.5 --lr 2e-4
  ssondo adapt runs/<run> speech/ --replay-fraction 0 --self-weight 0   # plain fine-tuning
  ssondo adapt runs/<run> speech/ --resume auto                         # continue after a kill
"""
# Options whose meaning or default differs from distill's.
OWN_HELP = {
    "cache_dir": "cache root for the new audio's teacher cache (default: <the run's cache "
                 "root>/<audio folder name>-<hash of its path>)",
    "val_fraction": "share of the NEW files held out for validation; the old held-out files "
                    "are the run's own (default: the run's)",
    "samples_per_epoch": "segments per epoch (default: enough for as many new segments as the "
                         "new training files hold)",
    "out": "folder that receives the run folder (default: the one holding RUN_DIR)",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pyssondo.train.adapt import OVERRIDABLE, AdaptConfig
    from pyssondo.commands.distill import FLAGS, OPTIONS

    defaults = AdaptConfig()
    p.add_argument("parent", metavar="RUN_DIR", help="a finished 'ssondo distill' run folder")
    p.add_argument("new_audio", metavar="NEW_AUDIO_DIR",
                   help="folder of the new domain's unlabeled audio (scanned recursively)")
    p.add_argument("--teacher", default=argparse.SUPPRESS,
                   help="the teacher file, when it moved (default: the run's; it must be the "
                        "same teacher, checked by sha256)")
    p.add_argument("--replay-fraction", type=float, default=defaults.replay_fraction,
                   help="share of every batch drawn from the old data, in [0, 1) "
                        "(default: %(default)s)")
    p.add_argument("--self-weight", type=float, default=defaults.self_weight,
                   help="weight of 1 - cos(student, previous student) (0 = off; "
                        "default: %(default)s)")
    p.add_argument("--grow-threshold", type=float, default=None, metavar="COS",
                   help="cosine below which a new pattern starts a cluster (default: the 5th "
                        "percentile of the old data's cosine to its centroid)")
    p.add_argument("--resume", metavar="auto|PATH",
                   help="'auto': continue the newest adapt run under --out with the same "
                        "settings; or a run folder / checkpoint to continue")
    # distill's options that an adaptation may change, with distill's help text.
    for flag, name, typ, text in OPTIONS:
        if name in OVERRIDABLE and name != "teacher":
            p.add_argument(flag, dest=name, type=typ, default=argparse.SUPPRESS,
                           metavar=typ.__name__.upper().replace("STR", "TEXT"),
                           help=OWN_HELP.get(name, f"{text} (default: the run's)"))
    for flag, name, text in FLAGS:
        if name in OVERRIDABLE:
            p.add_argument(flag, dest=name, action="store_true", default=argparse.SUPPRESS,
                           help=text)
    p.add_argument("--cache-mel", dest="cache_mel", nargs="?", const="on",
                   choices=("auto", "on", "off"), default=argparse.SUPPRESS,
                   help="students' log-mel in float16 files next to the teacher caches "
                        "(default: the run's)")


def run(args: argparse.Namespace) -> int:
    from pyssondo.commands.distill import _absolute
    from pyssondo.commands.training import resume_hint, run_training
    from pyssondo.loading import is_factory_spec
    from pyssondo.train.adapt import OVERRIDABLE, adapt, adapt_config

    overrides = {name: getattr(args, name) for name in OVERRIDABLE if hasattr(args, name)}
    for name in ("teacher", "cache_dir", "out"):
        if name in overrides and not (name == "teacher" and is_factory_spec(overrides[name])):
            overrides[name] = _absolute(overrides[name])
    cfg = adapt_config(args.parent, args.new_audio, replay_fraction=args.replay_fraction,
                       self_weight=args.self_weight, grow_threshold=args.grow_threshold,
                       **overrides)
    result, code = run_training(
        "adapt", cfg.train.device, lambda: adapt(cfg, resume=args.resume),
        interrupted=lambda: resume_hint(f"ssondo adapt {args.parent} {args.new_audio}",
                                        cfg.train.out, cfg.hash(), args.resume))
    if result is None:
        return code
    run_dir, s = result.run, result.summary
    growth = s["codebook"]
    print(f"run folder   {run_dir.path}  (adapted from {s['parent']})")
    print(f"codebook     {growth['old_clusters']} clusters + {growth['new_clusters']} grown "
          f"(threshold cosine {growth['threshold']:.4f}: {growth['threshold_rule']})")
    print(f"segments     train old {s['train_segments']['old']}, new "
          f"{s['train_segments']['new']}; held out old {s['val_segments']['old']}, new "
          f"{s['val_segments']['new']}")
    for domain in ("old", "new"):
        before, after = s["before"][f"val_cos_{domain}"], s["after"][f"val_cos_{domain}"]
        if before is None:
            continue
        line = (f"validation   {domain}: cosine to the teacher {before:.4f} -> {after:.4f} "
                f"({after - before:+.4f})")
        knn = [s[when].get(f"knn_agree_backbone_{domain}") for when in ("before", "after")]
        if None not in knn:
            line += f"; kNN agreement {knn[0]:.4f} -> {knn[1]:.4f} ({knn[1] - knn[0]:+.4f})"
        print(line)
    print(f"log          {run_dir.log}")
    print(f"checkpoints  {run_dir.last} (best: {run_dir.best})")
    for plot in (run_dir.plot, run_dir.validation_plot):
        if plot.is_file():
            print(f"plot         {plot}")
    if result.export:
        print(f"export       {result.export}  (embed with: ssondo embed {result.export} audio.wav)")
    return 0

