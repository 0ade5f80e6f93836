"""Log-mel throughput: our C++ core vs torch (torch.stft + matmul + log) vs librosa.

Prints seconds of audio processed per second of wall time at 1 and 2 threads, on a batch of
64 x 10 s clips and on one 10-minute signal, S-SONDO config (32 kHz, 1024/1024/512, 128 mels),
and the ratio ours / torch (target >= 2).

usage: python bench/mel.py [--repeats 3] [--threads 1 2] [--no-librosa]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import pyssondo
from pyssondo import MelConfig, log_mel
from pyssondo.frontend import mel_filterbank, window


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up (plans, caches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def torch_log_mel(x: torch.Tensor, cfg: MelConfig, win: torch.Tensor, fb: torch.Tensor):
    """What torchaudio's MelSpectrogram + log does: stft, |.|^2, dense matmul, log."""
    spec = torch.stft(x, cfg.n_fft, cfg.hop_length, win_length=cfg.n_fft, window=win,
                      center=False, return_complex=True)
    return torch.log(torch.matmul(fb, spec.abs().pow(2)) + cfg.log_offset)


def librosa_log_mel(x: np.ndarray, cfg: MelConfig):
    import librosa

    mel = librosa.feature.melspectrogram(
        y=x, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
        win_length=cfg.win_length, window="hann", center=False, power=2.0, n_mels=cfg.n_mels,
        fmin=cfg.f_min, fmax=cfg.f_max, htk=False, norm="slaney")
    return np.log(mel + cfg.log_offset)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--no-librosa", action="store_true")
    args = ap.parse_args()

    cfg = MelConfig()
    rng = np.random.default_rng(0)
    sr = cfg.sample_rate
    inputs = {
        "64 x 10 s": (0.1 * rng.standard_normal((64, 10 * sr))).astype(np.float32),
        "1 x 10 min": (0.1 * rng.standard_normal((1, 600 * sr))).astype(np.float32),
    }
    win = torch.from_numpy(window(cfg))
    fb = torch.from_numpy(mel_filterbank(cfg))
    print(f"log-mel throughput (seconds of audio per second), {cfg.sample_rate} Hz, "
          f"n_fft {cfg.n_fft}, hop {cfg.hop_length}, {cfg.n_mels} mels; best of {args.repeats}")
    print(f"{'input':<11} {'threads':>7} {'ours C++':>10} {'torch':>10} {'librosa':>10} "
          f"{'ours/torch':>11}")
    for threads in args.threads:
        pyssondo.set_num_threads(threads)
        torch.set_num_threads(threads)
        for name, x in inputs.items():
            audio_s = x.size / sr
            xt = torch.from_numpy(x)
            with torch.no_grad():
                t_ours = best_time(lambda: log_mel(x, cfg), args.repeats)
                t_torch = best_time(lambda: torch_log_mel(xt, cfg, win, fb), args.repeats)
            lib = "-"
            if not args.no_librosa:
                # librosa is single-threaded numpy; one run is enough for a reference.
                t_lib = best_time(lambda: librosa_log_mel(x, cfg), 1)
                lib = f"{audio_s / t_lib:10.0f}"
            print(f"{name:<11} {threads:>7} {audio_s / t_ours:10.0f} {audio_s / t_torch:10.0f} "
                  f"{lib:>10} {t_torch / t_ours:10.2f}x", flush=True)


if __name__ == "__main__":
    main()
