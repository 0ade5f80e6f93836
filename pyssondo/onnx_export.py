"""Writing the exported student as one ONNX file (front end inside), optionally int8 (QDQ).

The graph (see :mod:`pyssondo.onnx_model` for its contract) is the TorchScript export's
:class:`~pyssondo.export.ExportedStudent` traced by ``torch.onnx.export(dynamo=True)`` with a
dynamic batch and length: the same windowing and weighted mean, every window embedded in one
call. The log-mel front end becomes the ONNX ``DFT`` op (opset >= 17) with ``frontend="fft"``,
or matrix products of a factored DFT with ``frontend="dft"`` (any opset, runtimes without FFT;
in onnxruntime 3x faster than its DFT op, hence the default for ONNX).

int8: onnxruntime's ``quantize_static`` in QDQ format (per-channel int8 weights, uint8
activations, MinMax ranges) on the nodes of :data:`QDQ_OPS` in the backbone and head; the
front end's nodes stay float32, and so do the first block (:data:`ONNX_MIN_FLOAT_FRONT`) and
the fewest further leading blocks that keep the output's agreement with float32
(:func:`_int8_onnx`). Calibration runs the float graph on
training-length windows of real audio (:mod:`pyssondo.calibration`).

Like :func:`pyssondo.export.save_export`, :func:`save_onnx` writes atomically, reloads the file
in onnxruntime and compares it with the eager module before it reports success.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .atomic import atomic_write_bytes
from .errors import Int8Refused
from .export import (FLOAT_FRONT_LADDER, MIN_INT8_AGREEMENT, ExportedStudent, ExportReport,
                     agreement, choose_int8, export_report, probe_signals, quantize_student,
                     relative_difference)
from .export_meta import ExportMeta
from .loading import META_FILE
from .onnx_model import INPUT, OUTPUTS, OnnxStudent, import_onnxruntime

if TYPE_CHECKING:
    from .calibration import Calibration

PathLike = Union[str, "os.PathLike[str]"]
OPSET = 18             # ONNX opset of the written graph (DFT needs >= 17)
FRONTEND_SCOPE = "pyssondo.frontend."  # module path of the front end in the nodes' metadata
# Node types quantised (QDQ). Beyond the weighted ones, the element-wise and pooling ops that
# onnxruntime runs in int8 (QLinearAdd, QLinearMul, ...): each one left float32 costs a
# dequantize / quantize pair around it (mn04: 12.5 instead of 17 ms).
QDQ_OPS = ("Conv", "Gemm", "MatMul", "Add", "Mul", "GlobalAveragePool", "AveragePool", "Sigmoid",
           "Relu", "Clip", "Concat")
# Leading units (blocks) that ONNX int8 always keeps float32: the first one convolves the
# 1-channel log-mel, where onnxruntime's uint8 convolution gains nothing (trained mn04, x86,
# 1 thread: 3.4x its float32 time; the int8 file 1.12x the float32 one's latency with it
# float32, 1.22x without) and rounding hurts most (agreement 0.9885 instead of 0.983), for
# 0.3% of the file.
ONNX_MIN_FLOAT_FRONT = 1


class _Graph(nn.Module):
    """wav [B, T] -> (embedding [B, D], segments [B, S, D]) of an ExportedStudent, all windows
    in one backbone call."""

    def __init__(self, m: ExportedStudent) -> None:
        super().__init__()
        head = None if isinstance(m.head, nn.Identity) else m.head
        self.student = ExportedStudent(m.frontend, m.backbone, head, m.window, m.sample_rate,
                                       m.embed_dim, chunk=0)

    def forward(self, wav: torch.Tensor):
        seg = self.student.segments(wav)
        return self.student.pool(seg, wav.shape[1]), seg


def onnx_bytes(module: ExportedStudent, meta: ExportMeta) -> bytes:
    """The serialized ONNX model of ``module`` with ``meta`` as metadata_props[ssondo.json].

    The exporter's optimiser runs with the front end left unfolded (:func:`_optimize`).
    """
    graph = _Graph(module.eval()).eval()
    example = probe_signals(module.sample_rate, module.window)[-1]
    dims = {"wav": {0: torch.export.Dim("batch", min=1), 1: torch.export.Dim("samples", min=1)}}
    with _quiet():
        program = torch.onnx.export(graph, (example,), None, dynamo=True, opset_version=OPSET,
                                    input_names=[INPUT], output_names=list(OUTPUTS),
                                    dynamic_shapes=dims, external_data=False, verbose=False,
                                    optimize=False)
        _optimize(program.model)
    proto = program.model_proto
    _set_meta(proto, meta)
    return proto.SerializeToString()  # provenance kept: quantize_qdq finds the front end by it


def _optimize(model: Any) -> None:
    """The exporter's own optimisation (constant folding, batch norm into convolutions, ...)
    of the ONNX IR ``model``, in place, except that no front-end node is folded: folding
    would store what the front end builds on every call from a few numbers (the filterbank's
    263 KB of zeros, the DFT front end's 70 KB of outer matrices) as dense initializers;
    onnxruntime folds them in memory when it loads the file."""
    import onnxscript

    def fold(node: Any) -> Optional[bool]:
        return False if FRONTEND_SCOPE in node.metadata_props.get(
            "pkg.torch.onnx.class_hierarchy", "") else None

    onnxscript.optimizer.optimize_ir(model, should_fold=fold)
    onnxscript.rewriter.onnx_fusions.fuse(model)


@contextlib.contextmanager
def _quiet():
    """The exporter and the quantiser print progress, log INFO lines and warn about optional
    packages; none of it concerns the user."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _finish(proto: Any, meta: ExportMeta) -> bytes:
    """``proto`` without the exporter's per-node provenance (about half the file), compacted
    (:func:`_compact`), with ``meta`` as metadata_props[ssondo.json], serialized."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    _compact(proto.graph)
    _set_meta(proto, meta)
    return proto.SerializeToString()


def _compact(graph: Any) -> None:
    """Shrinks ``graph`` in place without changing what it computes: every tensor but the
    inputs and outputs gets a short name (``t1f``, ...) and nodes lose theirs (the module
    paths made 15-20% of an int8 mn04 file), shape annotations go (onnxruntime infers them),
    and all-zero zero points of DequantizeLinear (the symmetric int8 weights' and the int32
    biases') are dropped, 0 being the default. Graphs with subgraphs are left as they are."""
    import onnx
    from onnx import numpy_helper

    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for node in graph.node for a in node.attribute):
        return
    zeros = {t.name for t in graph.initializer if not numpy_helper.to_array(t).any()}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and len(node.input) == 3 \
                and node.input[2] in zeros:
            del node.input[2]
    used = {name for node in graph.node for name in node.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    fixed = {v.name for v in graph.input} | {v.name for v in graph.output} | {""}
    short: Dict[str, str] = {}

    def rename(name: str) -> str:
        if name in fixed:
            return name
        return short.setdefault(name, f"t{len(short):x}")

    for t in graph.initializer:
        t.name = rename(t.name)
    for node in graph.node:
        node.name = ""
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
    del graph.value_info[:]


def _set_meta(proto: Any, meta: ExportMeta) -> None:
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_FILE, meta.to_json()


def quantize_qdq(data: bytes, calibration: np.ndarray, float_units: Sequence[str] = ()
                 ) -> bytes:
    """The int8 (QDQ) version of a float ONNX student, calibrated on waveform windows
    float32 [N, W]; the nodes of the front end and of ``float_units`` (module names inside
    the ExportedStudent, e.g. ``backbone.features.0``) stay float32."""
    import onnx

    import_onnxruntime()  # ImportError with the install hint when missing
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    model = onnx.load_from_string(data)
    scopes = [f"'student.{u}'" for u in float_units]
    frontend = [n.name for n in model.graph.node
                if any(p.key == "pkg.torch.onnx.class_hierarchy" and FRONTEND_SCOPE in p.value
                       or p.key == "pkg.torch.onnx.name_scopes"
                       and any(u in p.value for u in scopes) for p in n.metadata_props)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter(range(0, len(calibration), 8))

        def get_next(self):
            i = next(self.rows, None)
            return None if i is None else {INPUT: calibration[i:i + 8].astype(np.float32)}

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(data)
        with _quiet():
            quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(QDQ_OPS), per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=frontend,
                            extra_options={"ActivationSymmetric": False,
                                           "WeightSymmetric": True})
        return dst.read_bytes()


def save_onnx(module: ExportedStudent, out: PathLike, meta: Dict[str, Any], *,
              int8: Optional["Calibration"] = None, measure: bool = True,
              min_agreement: float = MIN_INT8_AGREEMENT) -> ExportReport:
    """Writes ``module`` as ONNX (int8 QDQ calibrated on ``int8``'s waveform windows when
    given), reloads it in onnxruntime and checks it against the eager module.

    ``meta`` (the caller's :class:`~pyssondo.export_meta.ExportMeta` fields) is completed
    like :func:`pyssondo.export.save_export` does and stored in metadata_props;
    ``min_agreement`` is its int8 bar too. Checks: float32, max relative difference <=
    RELATIVE_TOLERANCE on :func:`pyssondo.export.probe_signals`; int8, the output shapes and
    finite values (its distance to float32 is reported as ``int8["cosine_to_fp32"]``).

    Raises:
        RuntimeError: the check failed (nothing is left at ``out`` then).
        Int8Refused: int8 breaks the student (nothing is written).
        ImportError: onnx / onnxruntime / onnxscript are not installed.
    """
    out = Path(out)
    fp32 = module.eval()
    if int8 is not None and int8.waveforms is None:
        raise ValueError("ONNX int8 calibrates on waveforms; the calibration has only log-mel")
    info = ExportMeta.of(fp32, int8=int8 is not None, container="onnx", opset=OPSET,
                         outputs=list(OUTPUTS), **meta)
    traced = onnx_bytes(fp32, info)
    float_data = _finish(_load(traced), info)
    data = float_data
    if int8 is not None:
        data, check = _int8_onnx(fp32, traced, int8, min_agreement)
        info = replace(info, int8_check=check)
        data = _finish(_load(data), info)
    atomic_write_bytes(out, data)
    try:
        loaded = OnnxStudent(out)
        if ExportMeta.from_dict(loaded.meta, str(out)) != info:
            raise RuntimeError(f"{out}: {META_FILE} did not survive the round trip")
        diff = check_onnx(loaded, fp32, exact=int8 is None)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    reference = (_session_of(float_data), len(float_data)) if int8 is not None else None
    return export_report(out, len(data), info, fp32, diff, loaded, measure, reference)


def _int8_onnx(fp32: ExportedStudent, traced: bytes, calibration: "Calibration",
               min_agreement: float) -> Tuple[bytes, Dict[str, Any]]:
    """The QDQ int8 model of ``traced`` and its check, like
    :func:`pyssondo.export.choose_int8`: the fewest float32 front units, starting from those
    that torch needs and at least :data:`ONNX_MIN_FLOAT_FRONT`, whose ONNX output agrees with
    float32 >= ``min_agreement`` on the held-out half of ``calibration``'s windows
    (onnxruntime's int8 activations round more coarsely than torch's, so it may need more).

    Raises:
        Int8Refused: no rung agrees enough (nothing is written then).
    """
    _, check = choose_int8(fp32, calibration, min_agreement)
    fit, held = calibration.halves()
    x = torch.from_numpy(np.ascontiguousarray(held.waveforms, dtype=np.float32))
    with torch.no_grad():
        want = fp32(x)
    tried = []
    first = max(check["float_front"], ONNX_MIN_FLOAT_FRONT)
    for k in (r for r in FLOAT_FRONT_LADDER if r >= first):
        units: List[str] = []
        quantize_student(fp32, fit, float_front=k, kept=units)
        if len(units) < k:
            break  # fewer units than that: nothing would be int8
        data = quantize_qdq(traced, fit.waveforms, units)
        got = torch.from_numpy(_session_of(data).run(x)[0])
        tried.append([k, round(agreement(got, want), 6)])
        if tried[-1][1] >= min_agreement:
            return data, {**check, "float_front": k, "float_units": units,
                          "agreement": tried[-1][1], "tried": tried,
                          "torch": {"float_front": check["float_front"],
                                    "agreement": check["agreement"]}}
    raise Int8Refused(f"int8: the ONNX student's embeddings agree with float32 at most "
                      f"{max((b for _, b in tried), default=0.0):.3f} (< {min_agreement}) "
                      f"on {len(want)} held-out windows of {calibration.source}, with "
                      + ", ".join(f"{a} float front units: {b:.3f}" for a, b in tried)
                      + f" (torch int8: {check['agreement']:.3f}); nothing was written")


def _load(data: bytes) -> Any:
    import onnx

    return onnx.load_from_string(data)


def _session_of(data: bytes) -> OnnxStudent:
    tmp = tempfile.NamedTemporaryFile(suffix=".onnx", delete=False)
    try:
        tmp.write(data)
        tmp.close()
        return OnnxStudent(tmp.name)  # the session keeps the model in memory
    finally:
        os.unlink(tmp.name)


@torch.no_grad()
def check_onnx(loaded: OnnxStudent, eager: ExportedStudent, exact: bool = True) -> float:
    """Largest relative difference (both outputs) between onnxruntime and the eager module on
    :func:`pyssondo.export.probe_signals`; raises RuntimeError above RELATIVE_TOLERANCE (only
    shapes and finiteness are checked when ``exact`` is False)."""
    worst = 0.0
    for wav in probe_signals(eager.sample_rate, eager.window):
        got = [torch.from_numpy(a) for a in loaded.run(wav)]
        seg = eager.segments(wav)
        for a, b, what in zip(got, (eager.pool(seg, wav.shape[1]), seg), OUTPUTS):
            if a.shape != b.shape or not bool(torch.isfinite(a).all()):
                raise RuntimeError(f"export check: ONNX {what} {tuple(a.shape)} vs eager "
                                   f"{tuple(b.shape)} (or not finite) for input {tuple(wav.shape)}")
            if not exact:
                continue
            worst = max(worst, relative_difference(a, b, f"onnxruntime {what}", wav))
    return worst
