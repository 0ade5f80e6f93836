"""The torch modules of an hf teacher: the transformers model's chosen hidden states, and the
teacher around it (front end -> model -> trimming and pooling). See :mod:`.hf`."""
from __future__ import annotations

from typing import List

import torch
from torch import nn


class HFCore(nn.Module):
    """Model features -> a list of each target's hidden states [B, F_i, D_i].

    Args:
        model: the eval-mode transformers encoder (Whisper: its encoder; CLAP: its audio model).
        kind: the ``model_type`` (CLAP's hidden states [B, C, H, W] become tokens [B, H*W, C]).
        groups: per target, the hidden-state indices it averages (one index: that layer).
    Traced (not scripted) for TorchScript files.
    """

    def __init__(self, model: nn.Module, kind: str, groups: List[List[int]]) -> None:
        super().__init__()
        self.model, self.kind, self.groups = model, kind, groups

    def hidden(self, features: torch.Tensor) -> List[torch.Tensor]:
        """All hidden states, each [B, F, D] (CLAP: the stage's tokens, row-major)."""
        if self.kind == "clap":
            longer = None
            if getattr(self.model.config, "enable_fusion", False):  # 4 copies, none "longer"
                longer = torch.zeros(features.shape[0], 1, dtype=torch.bool,
                                     device=features.device)
            hs = self.model(features, is_longer=longer, output_hidden_states=True,
                            return_dict=True).hidden_states
            return [h.flatten(2).transpose(1, 2) for h in hs]
        return list(self.model(features, output_hidden_states=True,
                               return_dict=True).hidden_states)

    def forward(self, features: torch.Tensor) -> List[torch.Tensor]:
        hs = self.hidden(features)
        return [hs[g[0]] if len(g) == 1 else torch.stack([hs[i] for i in g]).mean(0)
                for g in self.groups]


class HFTeacher(nn.Module):
    """float32 [B, T] at ``sample_rate`` -> [B, F, sum D] frames, or [B, sum D] when
    ``pool`` (each target averaged over its own frames, then concatenated).

    Args:
        frontend: a module of :mod:`.hf_frontends` (its ``valid_frames`` trims the output).
        core: :class:`HFCore`, or its traced module (then this module scripts).
    """

    def __init__(self, frontend: nn.Module, core: nn.Module, pool: bool,
                 sample_rate: int) -> None:
        super().__init__()
        self.frontend, self.core = frontend, core
        self.pool, self.sample_rate = pool, sample_rate

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.dim() != 2:
            raise ValueError("hf teacher expects a waveform [B, T]")
        outs: List[torch.Tensor] = []
        for y in self.core(self.frontend(wav)):
            y = y[:, :self.frontend.valid_frames(wav.shape[1], y.shape[1])]
            outs.append(y.mean(dim=1) if self.pool else y)
        return torch.cat(outs, dim=-1)
