"""MobileNetV3 students, EfficientAT's audio variant (Schmid et al., "Efficient large-scale
audio tagging via transformer-to-CNN knowledge distillation", ICASSP 2023).

Architecture (torchvision's MobileNetV3-Large layout as EfficientAT uses it): a 3x3 stride-2
conv stem with hard-swish, 15 inverted-residual blocks (1x1 expansion, depthwise 3x3/5x5,
channel squeeze-excitation with ReLU/sigmoid on 6 blocks, 1x1 linear projection, residual
when shapes allow), then a 1x1 conv to 6 x (last block channels) = 960 x width channels with
hard-swish. Channels are rounded to multiples of 8 (``make_divisible``); BatchNorm eps 1e-3.
The log-mel [B, n_mels, frames] is a 1-channel image; total downsampling is 32 on both axes.

Embeddings: frame embeddings are the last feature map averaged over frequency,
[B, ceil(frames / 32), d]; the clip embedding is their mean over time (global average pooling).
The classifier of EfficientAT (Linear 960 -> 1280 -> classes) is not part of the student: the
distillation head (:mod:`pyssondo.heads`) plays its role. Every frame count >= 1 works (each
stride-2 layer maps n >= 1 frames to ceil(n / 2) >= 1). TorchScript: scripts.
"""

from typing import List, NamedTuple

import torch
from torch import Tensor, nn

from ._common import ConvBNAct, as_image, init_weights, make_divisible
from ..errors import ParameterError
from .registry import register_student


class BlockSpec(NamedTuple):
    """One inverted-residual block at width 1.0: input/expanded/output channels, depthwise
    kernel, squeeze-excitation, hard-swish (else ReLU), stride."""

    in_ch: int
    kernel: int
    exp_ch: int
    out_ch: int
    use_se: bool
    use_hs: bool
    stride: int


# MobileNetV3-Large (Howard et al. 2019, Table 1), as in EfficientAT's models/mn/model.py.
LARGE_BLOCKS = [
    BlockSpec(16, 3, 16, 16, False, False, 1),
    BlockSpec(16, 3, 64, 24, False, False, 2),
    BlockSpec(24, 3, 72, 24, False, False, 1),
    BlockSpec(24, 5, 72, 40, True, False, 2),
    BlockSpec(40, 5, 120, 40, True, False, 1),
    BlockSpec(40, 5, 120, 40, True, False, 1),
    BlockSpec(40, 3, 240, 80, False, True, 2),
    BlockSpec(80, 3, 200, 80, False, True, 1),
    BlockSpec(80, 3, 184, 80, False, True, 1),
    BlockSpec(80, 3, 184, 80, False, True, 1),
    BlockSpec(80, 3, 480, 112, True, True, 1),
    BlockSpec(112, 3, 672, 112, True, True, 1),
    BlockSpec(112, 5, 672, 160, True, True, 2),
    BlockSpec(160, 5, 960, 160, True, True, 1),
    BlockSpec(160, 5, 960, 160, True, True, 1),
]


def scale_blocks(width: float) -> List[BlockSpec]:
    """LARGE_BLOCKS with every channel count multiplied by ``width`` and rounded to 8."""
    def ch(c: int) -> int:
        return make_divisible(c * width, 8)

    return [s._replace(in_ch=ch(s.in_ch), exp_ch=ch(s.exp_ch), out_ch=ch(s.out_ch))
            for s in LARGE_BLOCKS]


class SqueezeExcitation(nn.Module):
    """Channel squeeze-excitation: x * sigmoid(W2 relu(W1 mean_{f,t}(x))), squeeze C / 4
    rounded to 8 (EfficientAT: Linear layers, ReLU, sigmoid)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        squeeze = make_divisible(channels // 4, 8)
        self.fc1 = nn.Linear(channels, squeeze)
        self.fc2 = nn.Linear(squeeze, channels)

    def forward(self, x: Tensor) -> Tensor:
        scale = x.mean(dim=(2, 3))
        scale = torch.sigmoid(self.fc2(torch.relu(self.fc1(scale))))
        return x * scale[:, :, None, None]


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when exp_ch == in_ch) -> depthwise k x k (stride) -> [SE] -> 1x1
    project (no activation), plus the input when stride is 1 and in_ch == out_ch."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        act = nn.Hardswish if spec.use_hs else nn.ReLU
        layers: List[nn.Module] = []
        if spec.exp_ch != spec.in_ch:
            layers.append(ConvBNAct(spec.in_ch, spec.exp_ch, 1, act=act))
        layers.append(ConvBNAct(spec.exp_ch, spec.exp_ch, spec.kernel, spec.stride,
                                groups=spec.exp_ch, act=act))
        if spec.use_se:
            layers.append(SqueezeExcitation(spec.exp_ch))
        layers.append(ConvBNAct(spec.exp_ch, spec.out_ch, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.use_residual = spec.stride == 1 and spec.in_ch == spec.out_ch

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        if self.use_residual:
            out = out + x
        return out


class MobileNetV3(nn.Module):
    """EfficientAT MobileNetV3 backbone as a student.

    Args:
        width: channel width multiplier (EfficientAT: 0.1 mn01 ... 1.0 mn10 ... 4.0 mn40).
        n_mels: mel bands of the input (>= 1). Default 128.

    Input: log-mel [B, n_mels, frames], frames >= 1. ``forward`` -> clip embeddings [B, d];
    ``forward_frames`` -> [B, ceil(frames / 32), d]; d = ``embed_dim`` = 6 x round8(160 x width)
    (960 at width 1.0).
    """

    embed_dim: int
    n_mels: int
    # float32 exports store this family's weights channels-last (pyssondo.export.script_float32):
    # trained mn04 (16 kHz, 2 s windows, 1 thread) 2.5 vs 3.1 ms at batch 1, 6.1 vs 7.3 ms at 8,
    # 21 vs 34 ms at 32; mn10 at 32 kHz, 10 s, 0.89x. The other families keep contiguous
    # weights: ERes2Net and MobileViT v2 gained 4%, MicroNet lost 14%, DyMN's export no longer
    # matched its eager output.
    channels_last_export = True

    def __init__(self, width: float = 1.0, *, n_mels: int = 128) -> None:
        super().__init__()
        if not width > 0:
            raise ParameterError(f"MobileNetV3 width={width!r} is invalid: expected > 0")
        if n_mels < 1:
            raise ParameterError(f"MobileNetV3 n_mels={n_mels!r} is invalid: expected >= 1")
        blocks = scale_blocks(width)
        last = 6 * blocks[-1].out_ch
        self.features = nn.Sequential(
            ConvBNAct(1, blocks[0].in_ch, 3, 2),
            *[InvertedResidual(s) for s in blocks],
            ConvBNAct(blocks[-1].out_ch, last, 1),
        )
        self.embed_dim = last
        self.n_mels = n_mels
        init_weights(self)

    @torch.jit.export
    def forward_frames(self, x: Tensor) -> Tensor:
        """[B, n_mels, frames] -> frame embeddings [B, ceil(frames / 32), embed_dim]."""
        fmap = self.features(as_image(x, self.n_mels))  # [B, d, F', T']
        return fmap.mean(dim=2).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        """[B, n_mels, frames] -> clip embeddings [B, embed_dim] (global average pooling)."""
        return self.forward_frames(x).mean(dim=1)


def _mobilenetv3(width: float, **kwargs) -> MobileNetV3:
    return MobileNetV3(width, **kwargs)


@register_student
def mn01(**kwargs) -> MobileNetV3:
    """MobileNetV3 (EfficientAT) width 0.1: inverted residuals, SE, hard-swish."""
    return _mobilenetv3(0.1, **kwargs)


@register_student
def mn02(**kwargs) -> MobileNetV3:
    """MobileNetV3 (EfficientAT) width 0.2."""
    return _mobilenetv3(0.2, **kwargs)


@register_student
def mn04(**kwargs) -> MobileNetV3:
    """MobileNetV3 (EfficientAT) width 0.4."""
    return _mobilenetv3(0.4, **kwargs)


@register_student
def mn05(**kwargs) -> MobileNetV3:
    """MobileNetV3 (EfficientAT) width 0.5."""
    return _mobilenetv3(0.5, **kwargs)


@register_student
def mn10(**kwargs) -> MobileNetV3:
    """MobileNetV3 (EfficientAT) width 1.0: S-SONDO's 2.9M student, 960-d."""
    return _mobilenetv3(1.0, **kwargs)


@register_student
def mn20(**kwargs) -> MobileNetV3:
    """MobileNetV3 (EfficientAT) width 2.0."""
    return _mobilenetv3(2.0, **kwargs)
