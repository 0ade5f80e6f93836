"""The exported student: one TorchScript file that maps a waveform to an embedding.

Contract (../shared/DESIGN.md, "Exported student")::

    forward(wav: Tensor[B, T]) -> Tensor[B, D]        float32 mono at the student's rate, T >= 1
    segments(wav: Tensor[B, T]) -> Tensor[B, S, D]    one embedding per window of the input

The log-mel front end (:class:`pyssondo.frontend.LogMel`, the settings the student was trained
with) is inside. An input is cut into S = ceil(T / W) windows of the training window W (10 s by
default; the last window is zero-padded exactly like a short clip during training), each window
is embedded, and ``forward`` returns the mean of the window embeddings weighted by how many
real samples each window holds (a 0.5 s tail counts 1/20 of a 10 s window). With
``projected=True`` the mapping head is kept and the output lies in the teacher's space
(D = teacher dim); otherwise the head is discarded and D is the backbone's dim.

Metadata in the file's extra file ``ssondo.json`` (read by :func:`pyssondo.models.load_model`
and the C++ app): format, sample_rate, mel (MelConfig dict), embed_dim, projected, window_s,
segment_samples, pooling, student, params, teacher (name, fingerprint, dim, sample_rate),
torch_version, ssondo_version, int8, training (epochs, steps, best validation cosine, ...).
"""
from __future__ import annotations

import io
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
from torch import nn

from .atomic import atomic_write_bytes
from .models import META_FILE

FORMAT = "ssondo-student"
PathLike = Union[str, "os.PathLike[str]"]
# Scripted and eager outputs must agree to this (max |diff| / max(1, max |eager|)).
RELATIVE_TOLERANCE = 1e-4


class ExportedStudent(nn.Module):
    """Waveform [B, T] at ``sample_rate`` -> embedding [B, D]; see the module docstring.

    Args:
        frontend: a LogMel module (waveform [N, W] -> log-mel [N, M, F]).
        backbone: the student (log-mel -> [N, d]).
        head: the mapping head for teacher-space outputs, or None for the backbone's.
        window: segment length W in samples at ``sample_rate``.
        sample_rate: input rate in Hz.
        embed_dim: D.
        chunk: windows embedded per backbone call (bounds memory for long inputs).
    """

    def __init__(self, frontend: nn.Module, backbone: nn.Module, head: Optional[nn.Module],
                 window: int, sample_rate: int, embed_dim: int, chunk: int = 16) -> None:
        super().__init__()
        self.frontend = frontend
        self.backbone = backbone
        self.head = head if head is not None else nn.Identity()
        self.window = int(window)
        self.sample_rate = int(sample_rate)
        self.embed_dim = int(embed_dim)
        self.chunk = int(chunk)

    @torch.jit.export
    def segments(self, wav: torch.Tensor) -> torch.Tensor:
        """Per-window embeddings [B, S, D], S = ceil(T / window)."""
        if wav.dim() != 2:
            raise ValueError("expected a waveform batch [B, T]")
        b, t = wav.shape[0], wav.shape[1]
        if t < 1:
            raise ValueError("expected at least one sample (T >= 1)")
        s = (t + self.window - 1) // self.window
        x = torch.nn.functional.pad(wav.float(), [0, s * self.window - t])
        x = x.reshape(b * s, self.window)
        parts: List[torch.Tensor] = []
        for i in range(0, b * s, self.chunk):
            parts.append(self.head(self.backbone(self.frontend(x[i:i + self.chunk]))))
        return torch.cat(parts, 0).reshape(b, s, -1)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """Embeddings [B, D]: window embeddings averaged, weighted by real samples per window."""
        seg = self.segments(wav)
        t = wav.shape[1]
        starts = torch.arange(seg.shape[1], device=wav.device) * self.window
        real = torch.clamp(starts.neg().add(t), max=self.window).to(seg.dtype)
        return (seg * (real / float(t)).reshape(1, -1, 1)).sum(1)


def wrap(student: nn.Module, head: Optional[nn.Module], mel_cfg: Any, window_s: float
         ) -> ExportedStudent:
    """The eager export wrapper around a trained (or untrained) student, in eval mode."""
    from .frontend import LogMel
    from .segments import seconds_to_samples

    window = seconds_to_samples(window_s, mel_cfg.sample_rate)
    dim = int(student.embed_dim)
    if head is not None:
        with torch.no_grad():
            head.eval()
            dim = int(head(torch.zeros(1, dim)).shape[-1])
    return ExportedStudent(LogMel(mel_cfg), student, head, window, mel_cfg.sample_rate,
                           dim).eval()


@dataclass
class ExportReport:
    """What :func:`save_export` wrote and measured."""

    path: Path
    size_bytes: int
    params: int
    embed_dim: int
    sample_rate: int
    max_rel_diff: float                   # scripted vs eager, relative to max(1, max |eager|)
    latency_ms: Optional[float] = None    # 10 s of audio, batch 1, median
    int8: Dict[str, Any] = field(default_factory=dict)  # fp32 size (latency), cosine to fp32
    meta: Dict[str, Any] = field(default_factory=dict)


def save_export(module: ExportedStudent, out: PathLike, meta: Dict[str, Any], *,
                int8: bool = False, measure: bool = True) -> ExportReport:
    """Scripts ``module`` (optionally int8-quantised), writes it atomically with ``ssondo.json``,
    reloads the file and checks it against eager output.

    Raises:
        RuntimeError: the reloaded export disagrees with eager output beyond
            RELATIVE_TOLERANCE (nothing is left at ``out`` then).
    """
    out = Path(out)
    fp32 = module.eval()
    model = quantize_int8(fp32) if int8 else fp32
    params = sum(p.numel() for p in fp32.parameters())
    meta = {"format": FORMAT, "version": 1, "sample_rate": fp32.sample_rate,
            "embed_dim": fp32.embed_dim, "segment_samples": fp32.window,
            "pooling": "mean over windows weighted by real samples", "params": params,
            "torch_version": torch.__version__, "int8": bool(int8), **meta}
    scripted = torch.jit.script(model)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf, _extra_files={META_FILE: json.dumps(meta, sort_keys=True)})
    data = buf.getvalue()
    atomic_write_bytes(out, data)
    try:
        extra = {META_FILE: ""}
        loaded = torch.jit.load(str(out), _extra_files=extra)
        if json.loads(extra[META_FILE]) != meta:
            raise RuntimeError(f"{out}: {META_FILE} did not survive the round trip")
        diff = check_against_eager(loaded, model)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    report = ExportReport(out, len(data), params, fp32.embed_dim, fp32.sample_rate, diff, meta=meta)
    ref = torch.jit.script(fp32) if int8 else None
    if int8:
        fbuf = io.BytesIO()
        torch.jit.save(ref, fbuf)
        report.int8 = {"fp32_size_bytes": len(fbuf.getvalue()), "cosine_to_fp32": cosine_to(loaded, fp32)}
    if measure:
        report.latency_ms = latency_ms(loaded, fp32.sample_rate)
        if int8:
            report.int8["fp32_latency_ms"] = latency_ms(ref, fp32.sample_rate)
    return report


def quantize_int8(module: ExportedStudent) -> ExportedStudent:
    """Dynamic int8 quantisation of the Linear layers (weights int8, activations quantised on
    the fly); convolutions stay float32, so the gain depends on how much of the model is Linear."""
    import warnings

    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch 2.13 flags its own quantize_per_tensor as deprecated
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        return quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8)


def probe_signals(sample_rate: int, window: int) -> List[torch.Tensor]:
    """Fixed inputs used to compare an export with eager output: 1 sample, a fraction of a
    window, and 1.5 windows (two windows, the last one padded), batch 2."""
    g = torch.Generator().manual_seed(0)
    out = []
    for t in (1, max(2, window // 3), window + window // 2):
        tt = torch.arange(t) / sample_rate
        tone = 0.3 * torch.sin(2 * torch.pi * 440.0 * tt)
        out.append(torch.stack([tone, 0.1 * torch.randn(t, generator=g)]).float())
    return out


@torch.no_grad()
def check_against_eager(loaded: Any, eager: ExportedStudent) -> float:
    """Largest relative difference between a loaded export and the eager module; raises
    RuntimeError above RELATIVE_TOLERANCE."""
    worst = 0.0
    for wav in probe_signals(eager.sample_rate, eager.window):
        a, b = loaded(wav), eager(wav)
        if a.shape != b.shape:
            raise RuntimeError(f"export check: scripted output {tuple(a.shape)} != eager "
                               f"{tuple(b.shape)} for input {tuple(wav.shape)}")
        rel = float((a - b).abs().max()) / max(1.0, float(b.abs().max()))
        worst = max(worst, rel)
        if not rel <= RELATIVE_TOLERANCE:
            raise RuntimeError(f"export check: scripted output differs from eager by {rel:.2e} "
                               f"(relative) for input {tuple(wav.shape)}; tolerance "
                               f"{RELATIVE_TOLERANCE:g}")
    return worst


@torch.no_grad()
def latency_ms(module: Any, sample_rate: int, seconds: float = 10.0, repeats: int = 5) -> float:
    """Median wall time of one forward on ``seconds`` of audio, batch 1, after one warm-up."""
    wav = 0.1 * torch.randn(1, int(seconds * sample_rate), generator=torch.Generator().manual_seed(1))
    module(wav)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        module(wav)
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


@torch.no_grad()
def cosine_to(a: Any, b: Any) -> float:
    """Mean cosine similarity between two models' outputs on the test signals."""
    sims = [torch.nn.functional.cosine_similarity(a(w), b(w), dim=-1).mean()
            for w in probe_signals(b.sample_rate, b.window)]
    return float(torch.stack(sims).mean())


def export_run(run_dir: PathLike, out: PathLike, *, projected: bool = False, int8: bool = False,
               which: str = "best", measure: bool = True, quiet: bool = False) -> ExportReport:
    """Exports the student of a run folder (``which`` = "best" or "last" checkpoint).

    Raises:
        FileNotFoundError: no run folder/checkpoint. ValueError: unknown ``which``.
    """
    from .train.checkpoint import load_checkpoint
    from .train.model import model_from_checkpoint
    from .train.rundir import RunDir

    if which not in ("best", "last"):
        raise ValueError(f"export: --checkpoint {which!r} is invalid: expected best or last")
    run = RunDir(run_dir)
    if not run.config.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run folder (no config.json)")
    path = run.best if which == "best" and run.best.is_file() else run.last
    state = load_checkpoint(path)
    cfg, model, projection = model_from_checkpoint(state)
    teacher = dict(state["teacher"])
    module = wrap(model.student, projection if projected else None, cfg.mel, cfg.window_s)
    meta = {"mel": cfg.mel.to_dict(), "projected": bool(projected), "window_s": cfg.window_s,
            "student": cfg.student, "teacher": teacher, "ssondo_version": _version(),
            "training": {"run": run.path.name, "checkpoint": path.name,
                         "epochs_done": int(state["epochs_done"]), "epochs": cfg.epochs,
                         "steps": int(state["step"]), "loss": cfg.loss,
                         "best_metric": state.get("best_metric"), "config_hash": cfg.hash()}}
    report = save_export(module, out, meta, int8=int8, measure=measure)
    if not quiet:
        print(format_report(report))
    return report


def format_report(r: ExportReport) -> str:
    """Human-readable summary of an export, with the command that builds the C++ app."""
    lines = [f"wrote {r.path}: {r.size_bytes / 1e6:.2f} MB, {r.params / 1e6:.2f} M params, "
             f"{r.embed_dim}-dim embeddings at {r.sample_rate} Hz"
             f"{' (teacher space, through the head)' if r.meta.get('projected') else ''}",
             f"checked: reloaded TorchScript == eager within {r.max_rel_diff:.1e} relative "
             f"(tolerance {RELATIVE_TOLERANCE:g})"]
    if r.latency_ms is not None:
        lines.append(f"latency: {r.latency_ms:.1f} ms per 10 s of audio (batch 1, "
                     f"{torch.get_num_threads()} threads)")
    if r.int8:
        i = r.int8
        speed = (f", {r.latency_ms:.1f} ms vs fp32 {i['fp32_latency_ms']:.1f} ms"
                 if "fp32_latency_ms" in i else "")
        lines.append(f"int8: {r.size_bytes / 1e6:.2f} MB vs fp32 {i['fp32_size_bytes'] / 1e6:.2f} MB"
                     f"{speed}, cosine to fp32 output {i['cosine_to_fp32']:.6f} "
                     f"(1 - cos = {1 - i['cosine_to_fp32']:.1e})")
    lines.append("C++ app: cmake -S . -B build -DSSONDO_BUILD_APP=ON -DCMAKE_PREFIX_PATH=\"$(python -c "
                 "'import torch;print(torch.utils.cmake_prefix_path)')\" && cmake --build build")
    lines.append(f"          build/ssondo-embed {r.path} input.wav")
    return "\n".join(lines)


def _version() -> str:
    from . import __version__

    return __version__
