"""The student registry: names -> builder functions, timm style.

A family module (``mobilenetv3.py``, ...) defines its model class, private builders, and one
registered one-line entry point per variant::

    @register_student
    def mn10(**kw) -> MobileNetV3:
        \"\"\"MobileNetV3 (EfficientAT), width 1.0: 2.9M params, 960-d.\"\"\"
        return _mobilenetv3(1.0, **kw)

The registered name is the function's name with underscores as hyphens (``micronet_m0`` ->
"micronet-m0"), the family is the module's last name component and the description is the
first docstring line.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List

from ..errors import ParameterError


@dataclass(frozen=True)
class StudentEntry:
    """One registered variant: ``name`` (e.g. "mn10"), ``family`` (e.g. "mobilenetv3"),
    ``description`` (one line) and ``builder`` (``**kw -> nn.Module``)."""

    name: str
    family: str
    description: str
    builder: Callable[..., Any]


_REGISTRY: Dict[str, StudentEntry] = {}


def register_student(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: registers ``fn`` under its function name, underscores written as hyphens; a
    duplicate name is an error."""
    name = fn.__name__.replace("_", "-")
    if name in _REGISTRY:
        raise ValueError(f"student {name!r} is registered twice "
                         f"({_REGISTRY[name].builder.__module__} and {fn.__module__})")
    doc = (fn.__doc__ or "").strip().splitlines()
    _REGISTRY[name] = StudentEntry(name, fn.__module__.rsplit(".", 1)[-1],
                                   doc[0].strip() if doc else "", fn)
    return fn


def list_students() -> List[str]:
    """Names of all registered students, in registration order (family by family)."""
    return list(_REGISTRY)


def student_entry(name: str) -> StudentEntry:
    """The registry entry of ``name``; ParameterError listing the known names otherwise."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ParameterError(f"unknown student {name!r}; known students: {', '.join(_REGISTRY)}")
    return entry


def create_student(name: str, **kwargs: Any):
    """Builds the student ``name`` (randomly initialised). ``kwargs`` go to its builder, e.g.
    ``n_mels=128``. Raises ParameterError listing the known names for an unknown ``name``."""
    return student_entry(name).builder(**kwargs)
