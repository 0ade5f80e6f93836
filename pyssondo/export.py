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

Metadata in the file's extra file ``ssondo.json`` (read by :func:`pyssondo.loading.load_model`
and the C++ app): :class:`pyssondo.export_meta.ExportMeta`.
"""
from __future__ import annotations

import io
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from .atomic import atomic_write_bytes
from .errors import Int8Refused
from .export_meta import ExportMeta
from .folding import fold_batch_norm
from .loading import META_FILE

if TYPE_CHECKING:
    from .calibration import Calibration

PathLike = Union[str, "os.PathLike[str]"]
# Scripted and eager outputs must agree to this (max |diff| / max(1, max |eager|)).
RELATIVE_TOLERANCE = 1e-4
# An int8 student whose embeddings agree less than this with float32 (:func:`agreement` on
# held-out calibration windows) is not used; at 0.967-0.992, trained mn04/mn01 students kept
# 96-100% of their float32 probe scores on average (bench/int8_quality.py, README).
MIN_INT8_AGREEMENT = 0.95
# Below this spread of the float32 embeddings (mean distance to their mean / its norm) they
# tell inputs apart too little to centre them (randomly initialised students: ~1e-3).
MIN_SPREAD = 0.01
# Leading units (blocks) kept float32, tried in this order until the agreement is reached.
# ERes2Net's first three stages are 10 units (stem conv, BN, ReLU; 3 + 4 blocks): an
# eres2net16 at epoch 3 of 6 agreed 0.405 with every block int8, 0.855 with 8 units float32
# and 0.996 with 10 (at epoch 6 every block int8 agreed 0.38 or 0.98, as calibration rounding
# fell, and the stem conv float32 0.99).
FLOAT_FRONT_LADDER = (0, 1, 2, 4, 8, 10, 12, 16)


class ExportedStudent(nn.Module):
    """Waveform [B, T] at ``sample_rate`` -> embedding [B, D]; see the module docstring.

    Args:
        frontend: a LogMel module (waveform [N, W] -> log-mel [N, M, F]).
        backbone: the student (log-mel -> [N, d]).
        head: the mapping head for teacher-space outputs, or None for the backbone's.
        window: segment length W in samples at ``sample_rate``.
        sample_rate: input rate in Hz.
        embed_dim: D.
        chunk: windows embedded per backbone call (bounds memory for long inputs); 0 embeds
            all windows in one call (no Python loop, as graph exporters need).
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
        x = wav.float()
        if self.chunk < 1 or s * self.window != t:  # a tail to pad (graphs: always, no branch)
            x = torch.nn.functional.pad(x, [0, s * self.window - t])
        x = x.reshape(b * s, self.window)
        if self.chunk < 1:  # one call for all windows: a graph with dynamic shapes (ONNX)
            return self.head(self.backbone(self.frontend(x))).reshape(b, s, -1)
        parts: List[torch.Tensor] = []
        for i in range(0, b * s, self.chunk):
            parts.append(self.head(self.backbone(self.frontend(x[i:i + self.chunk]))))
        return torch.cat(parts, 0).reshape(b, s, -1)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """Embeddings [B, D]: window embeddings averaged, weighted by real samples per window."""
        return self.pool(self.segments(wav), wav.shape[1])

    @torch.jit.export
    def pool(self, seg: torch.Tensor, t: int) -> torch.Tensor:
        """Window embeddings [B, S, D] of a T-sample input -> [B, D], weighted by the real
        samples in each window (T - start, at most the window)."""
        starts = torch.arange(seg.shape[1], device=seg.device) * self.window
        real = torch.clamp(starts.neg().add(t), max=self.window).to(seg.dtype)
        return (seg * (real / t).reshape(1, -1, 1)).sum(1)


def wrap(student: nn.Module, head: Optional[nn.Module], mel_cfg: Any, window_s: float,
         frontend: str = "fft") -> ExportedStudent:
    """The eager export wrapper around a trained (or untrained) student, in eval mode, with the
    log-mel front end ``frontend`` ("fft" or "dft", :func:`pyssondo.frontend.make_frontend`)."""
    from .frontend import make_frontend
    from .segments import seconds_to_samples

    window = seconds_to_samples(window_s, mel_cfg.sample_rate)
    dim = int(student.embed_dim)
    if head is not None:
        with torch.no_grad():
            head.eval()
            dim = int(head(torch.zeros(1, dim)).shape[-1])
    return ExportedStudent(make_frontend(mel_cfg, frontend), student, head, window,
                           mel_cfg.sample_rate, dim).eval()


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
    meta: Optional[ExportMeta] = None     # what the file's ssondo.json says


def save_export(module: ExportedStudent, out: PathLike, meta: Dict[str, Any], *,
                int8: Optional["Calibration"] = None, measure: bool = True,
                min_agreement: float = MIN_INT8_AGREEMENT) -> ExportReport:
    """Scripts ``module`` (int8-quantised with these calibration windows when ``int8`` is
    given, :func:`quantize_student`; else with its batch norms folded into the convolutions
    before them, :func:`pyssondo.folding.fold_batch_norm`), writes it atomically with
    ``ssondo.json`` (an :class:`~pyssondo.export_meta.ExportMeta` of ``module`` and the
    caller's fields ``meta``), reloads the file and checks it against the eager ``module``
    (the int8 one's against the eager int8 model). ``min_agreement``: the int8 search's
    bar (:func:`choose_int8`; 0 takes every block int8, to measure a student that fails it).

    Raises:
        RuntimeError: the reloaded export disagrees with eager output beyond
            RELATIVE_TOLERANCE (nothing is left at ``out`` then).
        Int8Refused: int8 breaks the student (:func:`choose_int8`; nothing is written).
    """
    out = Path(out)
    fp32 = module.eval()
    if int8 is not None:
        from .quantize import with_compact_weights

        model, check = choose_int8(fp32, int8, min_agreement)
        scripted = torch.jit.script(with_compact_weights(model))
    else:
        model, check = fp32, None
        scripted = script_float32(fp32)
    info = ExportMeta.of(fp32, int8=int8 is not None, int8_check=check, **meta)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf, _extra_files={META_FILE: info.to_json()})
    data = buf.getvalue()
    atomic_write_bytes(out, data)
    try:
        extra = {META_FILE: ""}
        loaded = torch.jit.load(str(out), _extra_files=extra)
        if ExportMeta.from_json(extra[META_FILE], str(out)) != info:
            raise RuntimeError(f"{out}: {META_FILE} did not survive the round trip")
        diff = check_against_eager(loaded, model)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    reference = None
    if int8 is not None:  # the float32 file as 'ssondo export' writes and loads it
        fbuf = io.BytesIO()
        torch.jit.save(script_float32(fp32), fbuf)
        fbuf.seek(0)
        reference = (torch.jit.load(fbuf), len(fbuf.getvalue()))
    fresh = torch.jit.load(io.BytesIO(data)) if measure else None
    return export_report(out, len(data), info, fp32, diff, loaded, measure, reference, fresh)


def script_float32(module: ExportedStudent) -> Any:
    """The float32 TorchScript model of ``module`` as ``ssondo export`` writes it: batch norms
    folded into the convolutions before them (:func:`pyssondo.folding.fold_batch_norm`), the
    backbone's weights in channels-last memory when its family says it runs faster so
    (``channels_last_export``; the convolutions then return channels-last maps, which the
    next ones take without reordering), scripted."""
    folded = fold_batch_norm(module)  # a copy: ``module`` keeps its memory format
    if getattr(folded.backbone, "channels_last_export", False):
        folded.backbone.to(memory_format=torch.channels_last)
    return torch.jit.script(folded)


def export_report(out: Path, size: int, info: ExportMeta, fp32: "ExportedStudent", diff: float,
                  loaded: Any, measure: bool, reference: Optional[Tuple[Any, int]] = None,
                  timed: Any = None) -> "ExportReport":
    """The report of a written export (any format): ``loaded`` is the file as reloaded,
    ``size`` its bytes; for int8, ``reference`` is (the float32 model in the same runtime as
    freshly loaded, its file's bytes), and the report adds the size, cosine and (with
    ``measure``) latency of float32. Latency: a 10 s clip at the current threads (int8 and
    float32 in turns, :func:`latencies_ms`), of ``timed`` (default ``loaded``): a fresh load
    of a TorchScript file, since torch's int8 convolutions keep what they prepared for the
    first input shape they run and take a slower path for others (eager too), and the checks
    run several (a trained mn04 int8 export at 10 s: 7.0 instead of 5.1 ms)."""
    report = ExportReport(out, size, info.params, fp32.embed_dim, fp32.sample_rate, diff,
                          meta=info)
    if reference is not None:
        report.int8 = {"fp32_size_bytes": reference[1], "cosine_to_fp32": cosine_to(loaded, fp32)}
    timed = loaded if timed is None else timed
    if measure and reference is None:
        report.latency_ms = latency_ms(timed, fp32.sample_rate)
    elif measure:
        both = latencies_ms({"int8": timed, "fp32": reference[0]}, fp32.sample_rate)
        report.latency_ms, report.int8["fp32_latency_ms"] = both["int8"], both["fp32"]
    return report


def quantize_student(module: ExportedStudent, calibration: "Calibration", float_front: int = 0,
                     kept: Optional[List[str]] = None) -> ExportedStudent:
    """A copy of ``module`` whose backbone and head have int8 convolutions and linears (static
    post-training quantisation, :func:`pyssondo.quantize.quantize_static`, calibrated on the
    log-mel of ``calibration``, its first ``float_front`` units left float32 and named in
    ``kept``, e.g. ``backbone.features.0``); the front end, windowing and pooling stay
    float32."""
    from .quantize import quantize_static

    names: List[str] = []
    net = quantize_static(nn.Sequential(module.backbone, module.head),
                          calibration.logmel_batches(module.frontend), float_front=float_front,
                          kept=names)
    if kept is not None:
        kept += [("backbone" if n.startswith("0.") else "head") + n[1:] for n in names]
    return ExportedStudent(module.frontend, net[0], net[1], module.window, module.sample_rate,
                           module.embed_dim, module.chunk).eval()


def choose_int8(module: ExportedStudent, calibration: "Calibration",
                min_agreement: float = MIN_INT8_AGREEMENT
                ) -> Tuple[ExportedStudent, Dict[str, Any]]:
    """The int8 student with the fewest float32 front units (FLOAT_FRONT_LADDER) whose
    embeddings agree with float32 (:func:`agreement`) >= ``min_agreement`` on the windows of
    ``calibration`` it was not calibrated on (:meth:`Calibration.halves`).

    Trained students amplify rounding in their first layers (mn04 at 30 epochs, all layers
    int8: agreement 0.84, 93% of the float32 probe score kept; its first 4 blocks float32:
    0.95, 98%), randomly initialised ones do not, hence a search rather than a fixed split.

    Returns:
        (the int8 student, the check: float_front, float_units (their module names),
        agreement, threshold, windows, tried: [float_front, agreement] pairs).

    Raises:
        Int8Refused: no rung of the ladder agrees enough (the message gives each agreement).
    """
    fit, held = calibration.halves()
    with torch.no_grad():
        mels = list(held.logmel_batches(module.frontend))
        want = torch.cat([module.head(module.backbone(m)) for m in mels])
    tried: List[Tuple[int, float]] = []
    for k in FLOAT_FRONT_LADDER:
        kept: List[str] = []
        q = quantize_student(module, fit, float_front=k, kept=kept)
        if not any("quantized" in type(m).__module__ for m in q.modules()):
            break  # everything is float32 from here on: not an int8 student
        with torch.no_grad():
            got = torch.cat([q.head(q.backbone(m)) for m in mels])
        tried.append((k, agreement(got, want)))
        if tried[-1][1] >= min_agreement:
            return q, {"float_front": k, "float_units": kept,
                       "agreement": round(tried[-1][1], 6),
                       "threshold": min_agreement, "windows": int(len(want)),
                       "tried": [[a, round(b, 6)] for a, b in tried]}
    raise Int8Refused(f"int8: the student's embeddings agree with float32 at most "
                      f"{max((b for _, b in tried), default=0.0):.3f} (< {min_agreement}) on "
                      f"{len(want)} held-out windows of {calibration.source}, with "
                      + ", ".join(f"{a} float front units: {b:.3f}" for a, b in tried)
                      + "; quantisation breaks this student, nothing was written")


def agreement(got: torch.Tensor, want: torch.Tensor) -> float:
    """Mean cosine between rows of ``got`` and ``want`` [N, D] after subtracting ``want``'s
    mean row from both: how well an approximation keeps what tells the inputs apart (a raw
    cosine is dominated by the mean embedding that all inputs share). When ``want``'s rows
    barely differ (mean distance to their mean < MIN_SPREAD of its norm: an untrained student,
    nothing to tell apart) or N < 2, the raw cosine."""
    mu = want.mean(0, keepdim=True)
    spread = float((want - mu).norm(dim=-1).mean() / mu.norm().clamp_min(1e-12))
    if len(want) < 2 or spread < MIN_SPREAD:
        mu = torch.zeros_like(mu)
    return float(torch.nn.functional.cosine_similarity(got - mu, want - mu, dim=-1).mean())


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
        worst = max(worst, relative_difference(a, b, "scripted output", wav))
    return worst


def relative_difference(got: torch.Tensor, want: torch.Tensor, what: str,
                        wav: torch.Tensor) -> float:
    """max |got - want| / max(1, max |want|) of an export's output ``what`` on input ``wav``;
    RuntimeError above RELATIVE_TOLERANCE."""
    rel = float((got - want).abs().max()) / max(1.0, float(want.abs().max()))
    if not rel <= RELATIVE_TOLERANCE:
        raise RuntimeError(f"export check: {what} differs from eager by {rel:.2e} (relative) "
                           f"for input {tuple(wav.shape)}; tolerance {RELATIVE_TOLERANCE:g}")
    return rel


@torch.no_grad()
def latency_ms(module: Any, sample_rate: int, seconds: float = 10.0, repeats: int = 5) -> float:
    """Median wall time of one forward on ``seconds`` of audio, batch 1, after two warm-ups:
    TorchScript's profiling executor records shapes on the first call and optimises the graph
    on the second (mn04 at 10 s, 1 thread: 157, 93, then 11-12 ms)."""
    wav = 0.1 * torch.randn(1, int(seconds * sample_rate), generator=torch.Generator().manual_seed(1))
    for _ in range(2):
        module(wav)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        module(wav)
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def latencies_ms(models: Dict[str, Any], sample_rate: int, rounds: int = 3,
                 repeats: int = 5) -> Dict[str, float]:
    """Each model's best :func:`latency_ms` over ``rounds`` rounds in which every model is
    measured in turn (in alternating order), so that a shared machine's slow spells reach them
    all (a trained mn04's int8 export, timed after its float32 one and after running the
    checks' other input shapes, read 1.11-1.29x its latency at 1 thread; fresh and in turns,
    0.72x)."""
    best: Dict[str, float] = {}
    for r in range(rounds):
        for name in (list(models) if r % 2 == 0 else list(models)[::-1]):
            t = latency_ms(models[name], sample_rate, repeats=repeats)
            best[name] = min(t, best.get(name, t))
    return best


@torch.no_grad()
def cosine_to(a: Any, b: Any) -> float:
    """Mean cosine similarity between two models' outputs on the test signals."""
    sims = [torch.nn.functional.cosine_similarity(a(w), b(w), dim=-1).mean()
            for w in probe_signals(b.sample_rate, b.window)]
    return float(torch.stack(sims).mean())


FORMATS = ("torchscript", "onnx")
# The fastest front end each format supports, measured by bench/export.py (mn04, 10 s, 1 thread):
# torch's FFT beats the factored DFT (log-mel 1.4 vs 3.2-3.4 ms); onnxruntime's DFT op is 3x
# slower than it (mn04: 21 vs 6.9 ms per 10 s at 32 kHz), so ONNX files use the factored DFT.
DEFAULT_FRONTEND = {"torchscript": "fft", "onnx": "dft"}


def export_run(run_dir: PathLike, out: PathLike, *, projected: bool = False, int8: bool = False,
               which: str = "best", measure: bool = True, quiet: bool = False,
               fmt: Optional[str] = None, frontend: Optional[str] = None,
               calibrate: Optional[PathLike] = None) -> ExportReport:
    """Exports the student of a run folder (``which`` = "best" or "last" checkpoint).

    Args:
        fmt: "torchscript" or "onnx"; None: "onnx" when ``out`` ends in .onnx.
        frontend: "fft" or "dft"; None: DEFAULT_FRONTEND[fmt] (stated in the metadata).
        int8: static int8 quantisation, calibrated on ``calibrate`` (a folder of audio) or,
            when None, on the run's own training segments (:mod:`pyssondo.calibration`).

    Raises:
        FileNotFoundError: no run folder/checkpoint/calibration audio. ValueError: unknown
        ``which``, ``fmt`` or ``frontend``. MissingExtra: ONNX without onnx/onnxruntime.
    """
    from .calibration import from_audio_dir, from_run
    from .frontend import FRONTENDS
    from .train.checkpoint import load_checkpoint
    from .train.model import model_from_checkpoint
    from .train.rundir import RunDir

    fmt = fmt or ("onnx" if str(out).lower().endswith(".onnx") else "torchscript")
    if which not in ("best", "last"):
        raise ValueError(f"export: --checkpoint {which!r} is invalid: expected best or last")
    if fmt not in FORMATS:
        raise ValueError(f"export: --format {fmt!r} is invalid: expected one of {FORMATS}")
    if frontend is not None and frontend not in FRONTENDS:
        raise ValueError(f"export: --frontend {frontend!r} is invalid: expected one of {FRONTENDS}")
    if calibrate is not None and not int8:
        raise ValueError("export: --calibrate applies to --int8")
    if calibrate is not None and not Path(calibrate).is_dir():
        raise FileNotFoundError(f"{calibrate}: --calibrate expects a folder of audio files")
    if fmt == "onnx":
        from .onnx_model import import_onnxruntime

        import_onnxruntime()  # MissingExtra with the install hint, before any work
        from .onnx_export import save_onnx
    run = RunDir(run_dir)
    if not run.config.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run folder (no config.json)")
    path = run.best if which == "best" and run.best.is_file() else run.last
    state = load_checkpoint(path)
    cfg, model, projection = model_from_checkpoint(state)
    teacher = dict(state["teacher"])
    chosen = frontend or DEFAULT_FRONTEND[fmt]
    module = wrap(model.student, projection if projected else None, cfg.mel, cfg.window_s,
                  frontend=chosen)
    meta = {**config_fields(cfg, projected),
            "frontend": chosen, "frontend_choice": "--frontend" if frontend else
            f"default for {fmt} (the fastest it supports)", "teacher": teacher,
            "training": {"run": run.path.name, "checkpoint": path.name,
                         "epochs_done": int(state["epochs_done"]), "epochs": cfg.epochs,
                         "steps": int(state["step"]), "loss": cfg.loss,
                         "best_metric": state.get("best_metric"), "config_hash": cfg.hash()}}
    calibration = None
    if int8:
        calibration = (from_audio_dir(calibrate, cfg.mel.sample_rate, module.window)
                       if calibrate is not None else
                       from_run(run.config, cfg.mel, cfg.window_s, need_waveforms=fmt == "onnx"))
        meta["int8_calibration"] = calibration.source
    if fmt == "onnx":
        report = save_onnx(module, out, meta, int8=calibration, measure=measure)
    else:
        report = save_export(module, out, meta, int8=calibration, measure=measure)
    if not quiet:
        print(format_report(report))
    return report


def config_fields(cfg: Any, projected: bool) -> Dict[str, Any]:
    """The :class:`~pyssondo.export_meta.ExportMeta` fields that a run's DistillConfig
    ``cfg`` decides (front end, window, student) and this ssondo's version."""
    return {"mel": cfg.mel.to_dict(), "projected": bool(projected), "window_s": cfg.window_s,
            "student": cfg.student, "ssondo_version": _version()}


def format_report(r: ExportReport) -> str:
    """Human-readable summary of an export, with how to run it."""
    m = r.meta
    onnx = m.container == "onnx"
    runtime = "onnxruntime" if onnx else "TorchScript"
    lines = [f"wrote {r.path}: {r.size_bytes / 1e6:.2f} MB, {r.params / 1e6:.2f} M params, "
             f"{r.embed_dim}-dim embeddings at {r.sample_rate} Hz"
             f"{' (teacher space, through the head)' if m.projected else ''}"]
    if m.frontend:
        lines.append(f"front end: {m.frontend} ({m.frontend_choice})")
    if onnx and r.int8:
        lines.append("checked: reloaded in onnxruntime, output shapes and finite values")
    else:
        lines.append(f"checked: reloaded {runtime} == eager within {r.max_rel_diff:.1e} relative "
                     f"(tolerance {RELATIVE_TOLERANCE:g})")
    threads = torch.get_num_threads()
    if r.latency_ms is not None:
        lines.append(f"latency: {r.latency_ms:.1f} ms per 10 s of audio ({runtime}, batch 1, "
                     f"{threads} thread{'s' if threads != 1 else ''})")
    if r.int8:
        i = r.int8
        speed = (f", {r.latency_ms:.1f} ms vs fp32 {i['fp32_latency_ms']:.1f} ms "
                 f"({r.latency_ms / i['fp32_latency_ms']:.2f}x)" if "fp32_latency_ms" in i else "")
        lines.append(f"int8: {r.size_bytes / 1e6:.2f} MB vs fp32 "
                     f"{i['fp32_size_bytes'] / 1e6:.2f} MB "
                     f"({r.size_bytes / i['fp32_size_bytes']:.2f}x){speed}, cosine to fp32 output "
                     f"{i['cosine_to_fp32']:.6f} on the test signals; calibrated on "
                     f"{'half of ' if m.int8_check else ''}"
                     f"{m.int8_calibration or 'the given windows'}")
        if "fp32_latency_ms" in i and r.latency_ms >= i["fp32_latency_ms"]:
            lines.append(f"int8 is not faster than float32 in {runtime} on this CPU: it buys "
                         f"size, not speed (the float32 export is the faster one here)")
        c = m.int8_check or {}
        if c:
            lines.append(f"int8 check: {c['float_front']} leading block(s) kept float32 "
                         f"({', '.join(c['float_units']) or 'none'}); embeddings agree with "
                         f"float32 {c['agreement']:.3f} (>= {c['threshold']}) on the "
                         f"other {c['windows']} windows")
    if onnx:
        lines.append(f"run it: ssondo embed {r.path} input.wav -o emb.npy   "
                     f"(pip install 'ssondo[onnx]')")
        return "\n".join(lines)
    lines.append("C++ app: cmake -S . -B build -DSSONDO_BUILD_APP=ON -DCMAKE_PREFIX_PATH=\"$(python -c "
                 "'import torch;print(torch.utils.cmake_prefix_path)')\" && cmake --build build")
    lines.append(f"          build/ssondo-embed {r.path} input.wav")
    return "\n".join(lines)


def _version() -> str:
    from . import __version__

    return __version__
