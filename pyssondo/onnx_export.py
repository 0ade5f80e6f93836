"""Writing the exported student as one ONNX file (front end inside), optionally int8 (QDQ).

The graph (see :mod:`pyssondo.onnx_model` for its contract) is the TorchScript export's
:class:`~pyssondo.export.ExportedStudent` traced by ``torch.onnx.export(dynamo=True)`` with a
dynamic batch and length: the same windowing and weighted mean, every window embedded in one
call. The log-mel front end becomes the ONNX ``STFT`` op (opset >= 17) with ``frontend="fft"``,
or a Conv over the fixed DFT basis with ``frontend="dft"`` (any opset, runtimes without FFT).

int8: onnxruntime's ``quantize_static`` in QDQ format (per-channel int8 weights, int8
activations, MinMax ranges) on the Conv, Gemm and MatMul nodes of the backbone and head; the
front end's nodes (STFT or DFT Conv, mel MatMul, Log) stay float32. Calibration runs the float
graph on training-length windows of real audio (:mod:`pyssondo.calibration`).

Like :func:`pyssondo.export.save_export`, :func:`save_onnx` writes atomically, reloads the file
in onnxruntime and compares it with the eager module before it reports success.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Union

import numpy as np
import torch
from torch import nn

from .atomic import atomic_write_bytes
from .export import (FORMAT, ExportedStudent, ExportReport, latency_ms, probe_signals,
                     relative_difference)
from .loading import META_FILE
from .onnx_model import INPUT, OUTPUTS, OnnxStudent, import_onnxruntime

if TYPE_CHECKING:
    from .calibration import Calibration

PathLike = Union[str, "os.PathLike[str]"]
OPSET = 18             # ONNX opset of the written graph (STFT needs >= 17)
FRONTEND_SCOPE = "pyssondo.frontend."  # module path of the front end in the nodes' metadata


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


def onnx_bytes(module: ExportedStudent, meta: Dict[str, Any]) -> bytes:
    """The serialized ONNX model of ``module`` with ``meta`` as metadata_props[ssondo.json]."""
    graph = _Graph(module.eval()).eval()
    example = probe_signals(module.sample_rate, module.window)[-1]
    dims = {"wav": {0: torch.export.Dim("batch", min=1), 1: torch.export.Dim("samples", min=1)}}
    with _quiet():
        program = torch.onnx.export(graph, (example,), None, dynamo=True, opset_version=OPSET,
                                    input_names=[INPUT], output_names=list(OUTPUTS),
                                    dynamic_shapes=dims, external_data=False, verbose=False)
    proto = program.model_proto
    _set_meta(proto, meta)
    return proto.SerializeToString()  # provenance kept: quantize_qdq finds the front end by it


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


def _finish(proto: Any, meta: Dict[str, Any]) -> bytes:
    """``proto`` without the exporter's per-node provenance (about half the file), with
    ``meta`` as metadata_props[ssondo.json], serialized."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    _set_meta(proto, meta)
    return proto.SerializeToString()


def _set_meta(proto: Any, meta: Dict[str, Any]) -> None:
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_FILE, json.dumps(meta, sort_keys=True)


def quantize_qdq(data: bytes, calibration: np.ndarray, meta: Dict[str, Any]) -> bytes:
    """The int8 (QDQ) version of a float ONNX student, calibrated on waveform windows
    float32 [N, W]; ``meta`` replaces its metadata."""
    import onnx

    import_onnxruntime()  # ImportError with the install hint when missing
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    model = onnx.load_from_string(data)
    frontend = [n.name for n in model.graph.node
                if any(p.key == "pkg.torch.onnx.class_hierarchy" and FRONTEND_SCOPE in p.value
                       for p in n.metadata_props)]

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
                            op_types_to_quantize=["Conv", "Gemm", "MatMul"], per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=frontend,
                            extra_options={"ActivationSymmetric": False,
                                           "WeightSymmetric": True})
        quantized = onnx.load(str(dst))
    return _finish(quantized, meta)


def save_onnx(module: ExportedStudent, out: PathLike, meta: Dict[str, Any], *,
              int8: Optional["Calibration"] = None, measure: bool = True) -> ExportReport:
    """Writes ``module`` as ONNX (int8 QDQ calibrated on ``int8``'s waveform windows when
    given), reloads it in onnxruntime and checks it against the eager module.

    ``meta`` is completed like :func:`pyssondo.export.save_export` does and stored in
    metadata_props. Checks: float32, max relative difference <= RELATIVE_TOLERANCE on
    :func:`pyssondo.export.probe_signals`; int8, the output shapes and finite values (its
    distance to float32 is reported as ``int8["cosine_to_fp32"]``).

    Raises:
        RuntimeError: the check failed (nothing is left at ``out`` then).
        ImportError: onnx / onnxruntime / onnxscript are not installed.
    """
    out = Path(out)
    fp32 = module.eval()
    if int8 is not None and int8.waveforms is None:
        raise ValueError("ONNX int8 calibrates on waveforms; the calibration has only log-mel")
    params = sum(p.numel() for p in fp32.parameters())
    meta = {"format": FORMAT, "version": 1, "container": "onnx", "opset": OPSET,
            "sample_rate": fp32.sample_rate, "embed_dim": fp32.embed_dim,
            "segment_samples": fp32.window, "outputs": list(OUTPUTS),
            "pooling": "mean over windows weighted by real samples", "params": params,
            "torch_version": torch.__version__, "int8": int8 is not None, **meta}
    traced = onnx_bytes(fp32, meta)
    float_data = _finish(_load(traced), meta)
    data = quantize_qdq(traced, int8.waveforms, meta) if int8 is not None else float_data
    atomic_write_bytes(out, data)
    try:
        loaded = OnnxStudent(out)
        if loaded.meta != meta:
            raise RuntimeError(f"{out}: {META_FILE} did not survive the round trip")
        diff = check_onnx(loaded, fp32, exact=int8 is None)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    report = ExportReport(out, len(data), params, fp32.embed_dim, fp32.sample_rate, diff, meta=meta)
    if int8 is not None:
        from .export import check_int8

        ref = _session_of(float_data)
        report.int8 = {"fp32_size_bytes": len(float_data),
                       "cosine_to_fp32": check_int8(out, loaded, fp32)}
    if measure:
        report.latency_ms = latency_ms(loaded, fp32.sample_rate)
        if int8 is not None:
            report.int8["fp32_latency_ms"] = latency_ms(ref, fp32.sample_rate)
    return report


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
