"""Student networks: a registry of families (one module each) and complexity counters.

    >>> from pyssondo.students import create_student, list_students
    >>> m = create_student("mn10")            # n_mels=128 by default
    >>> m(logmel).shape, m.forward_frames(logmel).shape   # [B, 960], [B, F, 960]

Every student takes a log-mel batch [B, n_mels, frames] (any frames >= 1), returns clip
embeddings [B, embed_dim] from ``forward`` and frame embeddings [B, F, embed_dim] from the
TorchScript-exported ``forward_frames``, and scripts with ``torch.jit.script``.
"""
from __future__ import annotations

from . import dymn, eres2net, micronet, mobilenetv3, mobilevitv2  # noqa: F401  (registers the families)
from .complexity import count_macs, count_params, ten_second_frames
from .registry import create_student, list_students, register_student, student_entry

__all__ = ["create_student", "list_students", "register_student", "student_entry",
           "count_params", "count_macs", "ten_second_frames"]
