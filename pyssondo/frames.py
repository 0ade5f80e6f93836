"""Frame-axis helpers shared by the frame-level losses and their fused kernels."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def resample_frames(x: torch.Tensor, frames: int) -> torch.Tensor:
    """[B, F, D] -> [B, frames, D] by linear interpolation along time (F.interpolate,
    align_corners=False: frame centres are aligned). Returns x itself when F == frames."""
    if x.shape[1] == frames:
        return x
    return F.interpolate(x.transpose(1, 2), size=frames, mode="linear",
                         align_corners=False).transpose(1, 2)
