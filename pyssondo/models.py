"""Loading any waveform-to-embedding model: a TorchScript file or a Python factory.

Contract (../shared/DESIGN.md, "Teacher"): ``forward(wav: Tensor[B, T]) -> Tensor[B, D]``
(clip embeddings) or ``Tensor[B, F, D]`` (frame embeddings), float32 mono at the model's sample
rate. The rate comes from, in order: the caller's override, ``ssondo.json`` among the file's
extra files (an ONNX file's metadata_props), a module attribute ``sample_rate``. Teachers,
exported students and eval models all load here; ``.onnx`` files run through onnxruntime
(:class:`pyssondo.onnx_model.OnnxStudent`).
"""
from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Union

from .errors import ParameterError

META_FILE = "ssondo.json"  # name of the metadata entry in a TorchScript file's extra files
ONNX_SUFFIX = ".onnx"      # files ending so are ONNX models, run by onnxruntime

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class LoadedModel:
    """A model ready to embed audio.

    Attributes:
        module: ``nn.Module`` / ScriptModule mapping float32 [B, T] to [B, D] or [B, F, D].
        sample_rate: input rate in Hz.
        name: short human-readable id (file stem or factory spec).
        fingerprint: sha256 hex of the file's bytes (or of the factory spec and its weights):
            two different models never share a fingerprint, so it keys caches.
        meta: the parsed ``ssondo.json`` (empty when absent).
        source: the path or spec the model was loaded from.
    """

    module: Any
    sample_rate: int
    name: str
    fingerprint: str
    source: str
    meta: Dict[str, Any] = field(default_factory=dict)


def is_factory_spec(spec: str) -> bool:
    """True for ``pkg.mod:fn`` (and not an existing file path)."""
    return ":" in spec and not Path(spec).exists() and "/" not in spec.split(":", 1)[0]


def file_sha256(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def load_model(spec: PathLike, sample_rate: Optional[int] = None, *, device: str = "cpu",
               role: str = "model") -> LoadedModel:
    """Loads a TorchScript file or calls a ``pkg.mod:fn`` factory; puts it in eval mode.

    Args:
        spec: path to a TorchScript file, an ``.onnx`` file, or ``pkg.mod:fn`` returning an
            ``nn.Module``.
        sample_rate: overrides the model's own rate (Hz); required when the model has none.
        device: torch device to load onto.
        role: word used in error messages ("teacher", "student", ...).

    Raises:
        FileNotFoundError: no such file. ValueError: not TorchScript, factory failed, or no
        sample rate known (the message says to pass ``--teacher-sr`` / ``--sr``).
    """
    import torch

    text = os.fspath(spec)
    if is_factory_spec(text):
        module, meta = _from_factory(text), {}
        h = hashlib.sha256(text.encode())
        buf = io.BytesIO()
        torch.save(module.state_dict(), buf)
        h.update(buf.getvalue())
        fingerprint, name = h.hexdigest(), text.split(":", 1)[1]
    else:
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: {role} file not found")
        if path.suffix.lower() == ONNX_SUFFIX:
            from .onnx_model import OnnxStudent

            module = OnnxStudent(path)
            meta = module.meta
        else:
            extra = {META_FILE: ""}
            try:
                module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
            except Exception as e:
                raise ValueError(f"{path}: not a TorchScript {role} file ({_first_line(e)}); "
                                 f"a Python model can be given as pkg.module:factory") from None
            meta = _parse_meta(path, extra[META_FILE])
        fingerprint, name = file_sha256(path), path.stem
    rate = sample_rate or meta.get("sample_rate") or _attr_rate(module)
    if not rate:
        raise ValueError(f"{text}: the {role}'s sample rate is unknown (no 'sample_rate' attribute "
                         f"or {META_FILE}); pass it with --teacher-sr / --sr")
    if int(rate) <= 0:
        raise ParameterError(f"{text}: sample rate {rate!r} must be a positive integer (Hz)")
    module = module.to(device).eval()
    return LoadedModel(module=module, sample_rate=int(rate), name=name, fingerprint=fingerprint,
                       source=text, meta=meta)


def _from_factory(spec: str):
    import torch

    mod_name, fn_name = spec.split(":", 1)
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{spec}: cannot import factory ({_first_line(e)})") from None
    module = fn()
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"{spec}: factory returned {type(module).__name__}, expected an nn.Module")
    return module


def _parse_meta(path: Path, raw: Union[str, bytes]) -> Dict[str, Any]:
    if not raw:
        return {}
    try:
        meta = json.loads(raw)
    except ValueError:
        raise ValueError(f"{path}: {META_FILE} inside the file is not valid JSON") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: {META_FILE} inside the file is not a JSON object")
    return meta


def _attr_rate(module: Any) -> Optional[int]:
    rate = getattr(module, "sample_rate", None)
    return int(rate) if isinstance(rate, (int, float)) and rate > 0 else None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
