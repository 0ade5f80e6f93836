"""The names every registry offers (students, losses, heads, teachers), without importing torch.

The builders live with torch (``students/``, ``losses.py``, ``heads.py``, ``teachers/``); their
names live here too, so ``--help`` lists the valid choices and stays instant.
``tests/test_cli.py`` checks that each registry holds exactly these names, in this order, so
the two cannot drift: a new student, loss, head or teacher is added in both places.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Tuple

from .errors import ParameterError


@dataclass(frozen=True)
class Names:
    """The registered names of one ``kind`` ("student", "loss", "head", "teacher"), in
    registry order. ``str()`` joins them with commas (for help texts and errors)."""

    kind: str
    names: Tuple[str, ...]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __str__(self) -> str:
        return ", ".join(self.names)

    def check(self, name: str) -> str:
        """Returns ``name`` when it is registered; ParameterError listing the known names
        otherwise."""
        if name not in self.names:
            raise ParameterError(f"unknown {self.kind} {name!r}; known: {self}")
        return name


STUDENTS = Names("student", (
    "mn01", "mn02", "mn04", "mn05", "mn10", "mn20", "dymn04", "dymn10", "eres2net16",
    "eres2net32", "micronet-m0", "micronet-m1", "micronet-m2", "micronet-m3", "mobilevitv2-050",
    "mobilevitv2-075", "mobilevitv2-100"))
LOSSES = Names("loss", (
    "cosine", "mse", "l1", "kl", "infonce", "rkd-dist", "rkd-angle", "pairwise-cosine", "sp",
    "iusp"))
HEADS = Names("head", ("mlp", "linear", "identity"))
TEACHERS = Names("teacher", ("crepe-tiny", "crepe-full", "aisfx"))
