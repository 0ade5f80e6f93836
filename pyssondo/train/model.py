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


def build_model(cfg: DistillConfig, target_dims, frame_level: bool) -> StudentWithHead:
    """Student + head for ``cfg``, checked to map log-mel to the targets' dimensions.

    ``target_dims``: the dimension of the one target, or a list of one per target (several
    targets get one head each, their outputs side by side: :class:`.targets.JoinedHeads`).
    """
    from ..heads import make_head
    from ..students import create_student
    from .targets import JoinedHeads

    dims = [int(target_dims)] if isinstance(target_dims, int) else [int(d) for d in target_dims]
    student = create_student(cfg.student, n_mels=cfg.mel.n_mels)
    heads = [make_head(cfg.head, int(student.embed_dim), d) for d in dims]
    model = StudentWithHead(student, heads[0] if len(heads) == 1 else JoinedHeads(heads),
                            frame_level)
    frames = cfg.mel.num_frames(int(round(cfg.window_s * cfg.mel.sample_rate)))
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(2, cfg.mel.n_mels, frames))
    if out.shape[-1] != sum(dims):
        raise ValueError(f"distill: student {cfg.student} (dim {student.embed_dim}) with head "
                         f"{cfg.head} outputs {out.shape[-1]} dims but the teacher's embeddings "
                         f"have {sum(dims)}; use --head mlp or --head linear")
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


class Projection(nn.Module):
    """The head followed by the inverse target normalisation: student embedding [..., d] ->
    the teacher's own space [..., sum D] (what ``--projected`` exports output)."""

    def __init__(self, head: nn.Module, targets: nn.Module) -> None:
        super().__init__()
        self.head = head
        self.targets = targets

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.targets.denormalize(self.head(x))


def model_from_checkpoint(state: dict):
    """(settings, student + head with the checkpoint's weights, the head into the teacher's
    space) from a checkpoint ``state``: its targets' dimensions and normalisation included."""
    from .targets import TargetNorm, Targets

    cfg = DistillConfig.from_json(state["config"])
    records = state.get("targets") or [{"dim": int(state["teacher"]["dim"])}]
    model = build_model(cfg, [int(t["dim"]) for t in records], frame_level=False)
    model.student.load_state_dict(state["student"])
    model.head.load_state_dict(state["head"])
    projection: nn.Module = model.head
    if "target_norm" in state:
        dims = [int(t["dim"]) for t in records]
        targets = Targets(dims, [TargetNorm(d) for d in dims])
        targets.load_state_dict(state["target_norm"])
        projection = Projection(model.head, targets)
    return cfg, model, projection
