"""Running an ONNX student (written by ``ssondo export --format onnx``) with onnxruntime.

The file holds one graph: input ``wav`` float32 [B, T] at the student's rate (any B >= 1,
T >= 1), outputs ``embedding`` [B, D] and ``segments`` [B, S, D] (S = ceil(T / window)), the
same contract as the TorchScript export's ``forward`` and ``segments``. Its ``ssondo.json``
metadata is the model's metadata_props entry of that name. :class:`OnnxStudent` wraps a CPU
session so that it is called like a TorchScript module (torch tensors in and out), which lets
``ssondo embed`` and ``ssondo eval`` use it as a MODEL. Needs ``pip install 'ssondo[onnx]'``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Union

from .export_meta import ExportMeta, is_student_meta
from .loading import META_FILE

PathLike = Union[str, "os.PathLike[str]"]
INPUT, OUTPUTS = "wav", ("embedding", "segments")


def import_onnxruntime():
    """The onnxruntime module (onnx and onnxscript are checked too); MissingExtra saying how to
    install them otherwise."""
    from .errors import MissingExtra

    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise MissingExtra(f"ONNX needs onnx, onnxruntime and onnxscript ({e}): "
                           f"pip install 'ssondo[onnx]'") from None
    return onnxruntime


class OnnxStudent:
    """An ONNX student on onnxruntime's CPU provider, called like the TorchScript export.

    Args:
        path: the .onnx file.
        threads: intra-op threads (0: torch's current setting, so ``--threads`` applies to both).

    Attributes: ``meta`` (parsed ssondo.json, {} when absent), ``sample_rate`` (Hz, from the
    metadata or None), ``path``.

    Raises:
        ValueError: not an ONNX model onnxruntime can load, or its ssondo.json is not JSON.
    """

    def __init__(self, path: PathLike, threads: int = 0) -> None:
        import torch

        ort = import_onnxruntime()
        self.path = Path(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only
        try:
            self.session = ort.InferenceSession(str(self.path), opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:
            text = str(e).strip().splitlines()
            raise ValueError(f"{self.path}: not an ONNX model onnxruntime can load "
                             f"({text[0] if text else type(e).__name__})") from None
        raw = self.session.get_modelmeta().custom_metadata_map.get(META_FILE, "")
        try:
            self.meta: Dict[str, Any] = json.loads(raw) if raw else {}
        except ValueError:
            raise ValueError(f"{self.path}: {META_FILE} in metadata_props is not valid "
                             f"JSON") from None
        if not isinstance(self.meta, dict):
            raise ValueError(f"{self.path}: {META_FILE} in metadata_props is not a JSON object")
        if is_student_meta(self.meta):
            ExportMeta.from_dict(self.meta, str(self.path))  # ValueError naming the problem
        rate = self.meta.get("sample_rate")
        self.sample_rate = int(rate) if isinstance(rate, int) and rate > 0 else None
        self.window = int(self.meta.get("segment_samples", 0)) or None
        self.input = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]

    def run(self, wav: Any) -> List[Any]:
        """All outputs (numpy) for float32 [B, T] (numpy or torch)."""
        import numpy as np

        x = wav.detach().cpu().numpy() if hasattr(wav, "detach") else wav
        return self.session.run(None, {self.input: np.ascontiguousarray(x, dtype=np.float32)})

    def __call__(self, wav: Any):
        """Embeddings as a torch tensor [B, D] (the first output)."""
        import torch

        return torch.from_numpy(self.run(wav)[0])

    def segments(self, wav: Any):
        """Per-window embeddings [B, S, D] (the ``segments`` output)."""
        import torch

        if OUTPUTS[1] not in self.outputs:
            raise ValueError(f"{self.path}: the model has no '{OUTPUTS[1]}' output")
        return torch.from_numpy(self.run(wav)[self.outputs.index(OUTPUTS[1])])

    def to(self, device: Any) -> "OnnxStudent":
        if str(device) != "cpu":
            raise ValueError(f"{self.path}: ONNX models run on the CPU here (got --device "
                             f"{device})")
        return self

    def eval(self) -> "OnnxStudent":
        return self

    def parameters(self):
        """The weights (initializers) as torch tensors, for parameter counts."""
        import onnx
        import torch
        from onnx import numpy_helper

        model = onnx.load(str(self.path))
        return [torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer]
