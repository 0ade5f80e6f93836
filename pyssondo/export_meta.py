"""The ``ssondo.json`` metadata of an exported student: one dataclass, written and read here.

TorchScript exports hold it as the extra file ``ssondo.json``, ONNX exports as the
metadata_props entry of that name (:data:`pyssondo.loading.META_FILE`); ``ssondo export``,
``ssondo merge`` and the ONNX writer all build it through :meth:`ExportMeta.of`, and readers
parse it with :meth:`ExportMeta.from_json`. The JSON object has one key per field; fields that
are None are left out. Standard library only (no torch), so readers stay light.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, List, Optional

from .loading import META_FILE

FORMAT = "ssondo-student"
VERSION = 1
POOLING = "mean over windows weighted by real samples"


@dataclass(frozen=True)
class ExportMeta:
    """What an exported student file says about itself.

    Attributes:
        sample_rate: input rate in Hz (> 0).
        embed_dim: D, the output's last axis (> 0).
        segment_samples: the window W in samples at ``sample_rate`` that inputs are cut into.
        params: parameters of the float32 student (and head when projected).
        torch_version: the torch that wrote the file.
        int8: convolutions and linears quantised to int8.
        mel: the front end's MelConfig as a dict; window_s: W in seconds.
        projected: outputs in the teacher's space (through the mapping head).
        frontend: "fft" or "dft"; frontend_choice: why, in words.
        student: the student's registry name; teacher: the teacher record (name, fingerprint,
            dim, sample_rate) or a description.
        ssondo_version: the ssondo that wrote the file.
        training: run, checkpoint, epochs, steps, loss, best metric, config hash.
        merge: base, runs, lambdas, batch-norm mode, search (``ssondo merge`` only).
        int8_calibration: what the int8 ranges were calibrated on, in words.
        int8_check: the int8 student's agreement with float32 (:mod:`pyssondo.export`).
        container: "onnx" for ONNX files (None: TorchScript); opset: its ONNX opset;
        outputs: its output names.
        format, version, pooling: fixed: what kind of file, schema version, how windows pool.
    """

    sample_rate: int
    embed_dim: int
    segment_samples: int
    params: int
    torch_version: str
    int8: bool = False
    mel: Optional[Dict[str, Any]] = None
    window_s: Optional[float] = None
    projected: bool = False
    frontend: Optional[str] = None
    frontend_choice: Optional[str] = None
    student: Optional[str] = None
    teacher: Any = None
    ssondo_version: Optional[str] = None
    training: Optional[Dict[str, Any]] = None
    merge: Optional[Dict[str, Any]] = None
    int8_calibration: Optional[str] = None
    int8_check: Optional[Dict[str, Any]] = None
    container: Optional[str] = None
    opset: Optional[int] = None
    outputs: Optional[List[str]] = None
    format: str = FORMAT
    version: int = VERSION
    pooling: str = POOLING

    @classmethod
    def of(cls, module: Any, **known: Any) -> "ExportMeta":
        """The metadata of an :class:`pyssondo.export.ExportedStudent` ``module`` (rate,
        dim, window and parameters read from it; the torch version from torch) plus the
        caller's ``known`` fields.

        Raises:
            TypeError: a name in ``known`` that is not a field.
        """
        import torch

        base = dict(sample_rate=int(module.sample_rate), embed_dim=int(module.embed_dim),
                    segment_samples=int(module.window),
                    params=int(sum(p.numel() for p in module.parameters())),
                    torch_version=torch.__version__)
        return cls(**{**base, **known})

    def to_dict(self) -> Dict[str, Any]:
        """The JSON object: one key per field that is not None."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "ExportMeta":
        """Parses a decoded ``ssondo.json``; ValueError naming ``where`` (the file) and the
        problem: not an object, another format, a missing or ill-typed field."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: {META_FILE} is not a JSON object")
        if data.get("format") != FORMAT:
            raise ValueError(f"{where}: {META_FILE} format {data.get('format')!r} is not "
                             f"{FORMAT!r} (not an exported student)")
        if isinstance(data.get("version"), int) and data["version"] > VERSION:
            raise ValueError(f"{where}: {META_FILE} schema version {data['version']} is newer "
                             f"than this ssondo's ({VERSION}); upgrade ssondo to read it")
        for key in ("sample_rate", "embed_dim", "segment_samples", "params"):
            v = data.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if key == "params" else 1):
                raise ValueError(f"{where}: {META_FILE} {key!r} is {v!r}; expected a positive "
                                 f"integer")
        for key, kind in (("torch_version", str), ("int8", bool), ("projected", bool),
                          ("version", int), ("pooling", str)):
            if key in data and not isinstance(data[key], kind):
                raise ValueError(f"{where}: {META_FILE} {key!r} is {data[key]!r}; expected "
                                 f"{kind.__name__}")
        if "torch_version" not in data:
            raise ValueError(f"{where}: {META_FILE} lacks 'torch_version'")
        names = {f.name for f in fields(cls)}  # keys a newer ssondo added are skipped: a new
        return cls(**{k: v for k, v in data.items() if k in names})  # meaning bumps VERSION

    @classmethod
    def from_json(cls, text: str, where: str) -> "ExportMeta":
        """:meth:`from_dict` of JSON text; ValueError naming ``where`` when it is not JSON."""
        try:
            data = json.loads(text)
        except ValueError:
            raise ValueError(f"{where}: {META_FILE} is not valid JSON") from None
        return cls.from_dict(data, where)


def is_student_meta(data: Any) -> bool:
    """True when a decoded ``ssondo.json`` claims to be an exported student's (teachers write
    ``ssondo.json`` too, with another schema)."""
    return isinstance(data, dict) and data.get("format") == FORMAT

