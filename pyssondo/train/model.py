"""The trained network: student backbone + mapping head, built and checked from a config.

What a checkpoint's ``student`` and ``head`` entries hold; export, merge, ``--init`` and the
trainer all build it here, so they depend on the checkpoint format, not on the trainer.
"""
from __future__ import annotations

import torch
from torch import nn

from .checkpoint import load_student_weights
from .config import DistillConfig


class StudentWithHead(nn.Module):
    """Student backbone + mapping head: log-mel [B, M, F] -> teacher space [B, D] (or
    [B, F', D] per student frame when ``frame_level``)."""

    def __init__(self, student: nn.Module, head: nn.Module, frame_level: bool = False) -> None:
        super().__init__()
        self.student = student
        self.head = head
        self.frame_level = frame_level

    def forward(self, x: torch.Tensor, with_embedding: bool = False):
        """head(student(x)); with ``with_embedding``, (student(x), head(student(x)))."""
        emb = self.student.forward_frames(x) if self.frame_level else self.student(x)
        return (emb, self.head(emb)) if with_embedding else self.head(emb)


def build_model(cfg: DistillConfig, target_dim: int, frame_level: bool) -> StudentWithHead:
    """Student + head for ``cfg``, checked to map log-mel to ``target_dim`` dimensions."""
    from ..heads import make_head
    from ..students import create_student

    student = create_student(cfg.student, n_mels=cfg.mel.n_mels)
    head = make_head(cfg.head, int(student.embed_dim), int(target_dim))
    model = StudentWithHead(student, head, frame_level)
    frames = cfg.mel.num_frames(int(round(cfg.window_s * cfg.mel.sample_rate)))
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(2, cfg.mel.n_mels, frames))
    if out.shape[-1] != target_dim:
        raise ValueError(f"distill: student {cfg.student} (dim {student.embed_dim}) with head "
                         f"{cfg.head} outputs {out.shape[-1]} dims but the teacher's embeddings "
                         f"have {target_dim}; use --head mlp or --head linear")
    return model


def load_init(model: StudentWithHead, spec: str) -> None:
    """Loads student weights from a run folder, a checkpoint, or a saved state dict."""
    state = load_student_weights(spec)
    own = model.student.state_dict()
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            raise ValueError(f"{spec}: --init weight {k} has shape {tuple(v.shape)}, the "
                             f"{model.student.__class__.__name__} here needs {tuple(own[k].shape)}")
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{spec}: --init weights do not fit this student "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.student.load_state_dict(state)
