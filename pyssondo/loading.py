"""Loading any waveform-to-embedding model: a TorchScript file or a Python factory.

Contract (../shared/DESIGN.md, "Teacher"): ``forward(wav: Tensor[B, T]) -> Tensor[B, D]``
(clip embeddings) or ``Tensor[B, F, D]`` (frame embeddings), float32 mono at the model's sample
rate. The rate comes from, in order: the caller's override, ``ssondo.json`` among the file's
extra files (an ONNX file's metadata_props), a module attribute ``sample_rate``. Teachers,
exported students and eval models all load here; ``.onnx`` files run through onnxruntime
(:class:`pyssondo.onnx_model.OnnxStudent`). An hf teacher that TorchScript cannot hold is a
"state" zip (config + safetensors weights) rebuilt here with ``transformers``
(:mod:`pyssondo.teachers.hf`).
"""
from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

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
        targets: what the output's last axis holds, in order (:func:`teacher_targets`).
    """

    module: Any
    sample_rate: int
    name: str
    fingerprint: str
    source: str
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def targets(self) -> Optional[List[Dict[str, Any]]]:
        return teacher_targets(self.meta, self.source)


def teacher_targets(meta: Dict[str, Any],
                    where: str = "teacher") -> Optional[List[Dict[str, Any]]]:
    """The targets a teacher's ``ssondo.json`` lists: ``[{"name": str, "dim": int}, ...]`` in
    the order their dims are concatenated on the output's last axis (several layers of an hf
    teacher); None when it lists none (one target, the whole output).

    Raises:
        ValueError: a malformed list, or dims that do not sum to the stated ``dim``.
    """
    raw = meta.get("targets")
    if raw is None:
        return None
    try:
        targets = [{"name": str(t["name"]), "dim": int(t["dim"])} for t in raw]
    except (KeyError, TypeError, ValueError):
        targets = []
    if not targets or any(t["dim"] < 1 for t in targets) or (
            meta.get("dim") is not None and sum(t["dim"] for t in targets) != meta["dim"]):
        raise ValueError(f"{where}: {META_FILE} 'targets' must be a list of "
                         f"{{name, dim >= 1}} whose dims sum to 'dim' ({meta.get('dim')})")
    return targets


def is_factory_spec(spec: str) -> bool:
    """True for ``pkg.mod:fn`` (and not an existing file path)."""
    return ":" in spec and not Path(spec).exists() and "/" not in spec.split(":", 1)[0]


def teacher_name(spec: str) -> str:
    """Short id of a teacher spec: the factory's function name, or the file's stem."""
    return spec.split(":", 1)[1] if is_factory_spec(spec) else Path(spec).stem


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
        from .teachers.hf import is_state_file, load_state_teacher

        if path.suffix.lower() == ONNX_SUFFIX:
            from .onnx_model import OnnxStudent

            module = OnnxStudent(path)
            meta = module.meta
        elif is_state_file(path):  # an hf teacher TorchScript cannot hold: rebuilt eagerly
            module, meta = load_state_teacher(path)
        else:
            extra = {META_FILE: ""}
            try:
                module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
            except Exception as e:
                raise ValueError(f"{path}: not a TorchScript {role} file ({_first_line(e)}); "
                                 f"a Python model can be given as pkg.module:factory") from None
            meta = _parse_meta(path, extra[META_FILE])
        fingerprint, name = file_sha256(path), path.stem
    if sample_rate is not None:
        rate, where = sample_rate, "as given"
    elif meta.get("sample_rate") is not None:
        rate, where = meta["sample_rate"], f"from its {META_FILE}"
    else:
        rate, where = _attr_rate(module), "from its sample_rate attribute"
    if rate is None:
        option = "--teacher-sr" if role == "teacher" else "--sr"
        raise ValueError(f"{text}: the {role}'s sample rate is unknown (no 'sample_rate' attribute "
                         f"or {META_FILE}); pass it with {option}")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < 1e9 \
            or int(rate) != rate:
        raise ParameterError(f"{text}: sample rate {rate!r} ({where}) must be a positive "
                             f"integer (Hz)")
    module = module.to(device).eval()
    return LoadedModel(module=module, sample_rate=int(rate), name=name, fingerprint=fingerprint,
                       source=text, meta=meta)


def describe_files(paths) -> str:
    """'a, b, c and N more': the files of a batch, for error messages."""
    paths = sorted({str(p) for p in paths})
    return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def forward_checked(module: Any, batch: Any, *, what: str, names: str, finite: bool = True):
    """``module(batch)`` for a waveform batch [B, T] cut from the files ``names``, checked
    against the contract: a tensor [B, D] or [B, F, D] (a tuple's first element is taken),
    finite unless ``finite`` is False (a caller that locates bad rows itself).

    Args:
        what: the model in messages, e.g. "teacher crepe.pt".

    Raises:
        ValueError: one line naming ``what``, the batch shape and ``names``: the model raised
            (its exception type and last message line), returned another shape, or NaN/inf.
    """
    import torch

    b, t = int(batch.shape[0]), int(batch.shape[1])
    try:
        with torch.inference_mode():
            out = module(batch)
    except Exception as e:
        text = str(e).strip()
        raise ValueError(f"{what} failed on a batch [{b}, {t}] from {names}: "
                         f"{type(e).__name__}: {text.splitlines()[-1] if text else ''}") from e
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if not isinstance(out, torch.Tensor) or out.dim() not in (2, 3) or out.shape[0] != b:
        raise ValueError(f"{what} returned {shape} for a batch [{b}, {t}] from {names}; "
                         f"expected [{b}, D] or [{b}, F, D]")
    if finite and not bool(torch.isfinite(out).all()):
        raise ValueError(f"{what} returned NaN/inf for a batch [{b}, {t}] from {names}; "
                         f"output shape {shape}")
    return out


def _from_factory(spec: str):
    import torch

    mod_name, fn_name = spec.split(":", 1)
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{spec}: cannot import factory ({_first_line(e)})") from None
    try:
        module = fn()
    except Exception as e:
        raise ValueError(f"{spec}: the factory raised {type(e).__name__}: {_first_line(e)}"
                         ) from None
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
    from .export_meta import ExportMeta, is_student_meta

    if is_student_meta(meta):  # an exported student's: its schema is checked
        ExportMeta.from_dict(meta, str(path))
    return meta


def _attr_rate(module: Any) -> Optional[int]:
    rate = getattr(module, "sample_rate", None)
    return int(rate) if isinstance(rate, (int, float)) and rate > 0 else None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
