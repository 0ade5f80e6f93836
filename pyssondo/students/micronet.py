"""MicroNet students (Li et al., "MicroNet: Improving Image Recognition with Extremely Low
FLOPs", ICCV 2021; stage tables from the authors' liyunsheng13/micronet, backbone/
microconfig.py and script/eval_micronet_m*.sh).

Architecture. Micro-factorised convolutions throughout:
- depthwise k x k is factorised into a k x 1 then a 1 x k depthwise convolution (each with
  BatchNorm), optionally multiplying the channels (x c1 then x c2);
- pointwise 1x1 is factorised into group conv 1x1 -> channel shuffle -> group conv 1x1;
- Dynamic Shift-Max (DYShiftMax) is the activation: coefficients from global average pooling
  -> Linear -> ReLU -> Linear -> h-sigmoid, rescaled to [-2, 2] and offset by fixed initial
  values; the output is max_j(a_j x + b_j shift(x)) over j = 1, 2 (or one affine mix, without
  the max), where shift(x) moves every channel to the next group and the next channel inside
  its group (a circular shift).
The stem is the micro-factorised 3x3 stride-2 convolution (3 x 1 conv to g1 channels, 1 x 3
depthwise x g2, shuffle, ReLU6), here on 1 input channel (the log-mel). The tables hold three
kinds of blocks: depthwise first, then a group pointwise conv (the paper's Micro-Block-A, the
early blocks); pointwise -> depthwise -> pointwise (Micro-Block-B and -C); and a last
pointwise-only block that widens to the final channels. Total downsampling is 32 on both
axes (stem and four stride-2 blocks). BatchNorm uses the project's EfficientAT settings
(eps 1e-3, momentum 0.01), as every student.

Embeddings: ReLU6 on the last feature map, average over frequency, h-swish: frame embeddings
[B, ceil(frames / 32), d]; the clip embedding is h-swish of the average over frequency and time
(the original's pooling: ReLU6 -> global average pool -> h-swish). d = 384 (M0), 576 (M1),
768 (M2), 864 (M3). The original's classifier (two Linear-BN-h-swish layers) is not part of the
student. Every frame count >= 1 works. TorchScript: scripts.
"""

from typing import List, NamedTuple, Tuple

import torch
from torch import Tensor, nn

from ._common import as_image, batch_norm, init_weights, make_divisible
from ..errors import ParameterError
from .registry import register_student


class MicroBlockSpec(NamedTuple):
    """One row of the published stage tables: stride, kernel k, output channels, channel
    expansions (c1, c2) of the hidden width in * c1 * c2, groups/shuffle of the first
    pointwise conv (g1 = 0: the block starts with the depthwise conv), groups/shuffle of the
    second (g3 = 0: no second pointwise conv), activations after the first pointwise, the
    depthwise and the second pointwise conv (0: ReLU6 / none for the last, 1: one affine
    shift mix, 2: Dynamic Shift-Max), and the reduction ratio r of the coefficient MLP
    (squeeze = in / (8 r))."""

    stride: int
    kernel: int
    out_ch: int
    c1: int
    c2: int
    g1: int
    g2: int
    g3: int
    g4: int
    y1: int
    y2: int
    y3: int
    r: int


class MicroNetSpec(NamedTuple):
    """A variant: stem channels (g1 x g2 groups), blocks, and the initial (a1, a2), (b1, b2)
    of the Dynamic Shift-Max after the first pointwise and the depthwise convs."""

    stem: Tuple[int, int]
    blocks: List[MicroBlockSpec]
    init_a: Tuple[float, float]
    init_b: Tuple[float, float]


def _rows(table: List[Tuple[int, ...]]) -> List[MicroBlockSpec]:
    return [MicroBlockSpec(*row) for row in table]


# Columns: stride, kernel, out, c1, c2, g1, g2, g3, g4, y1, y2, y3, r (microconfig.py; its
# unused "n" (always 1) and "c3" columns are dropped).
VARIANTS = {
    "m0": MicroNetSpec((2, 2), _rows([  # msnx_dy6_exp4_4M_221
        (2, 3, 8, 2, 2, 0, 4, 2, 2, 2, 0, 1, 1),
        (2, 3, 12, 2, 2, 0, 8, 4, 4, 2, 2, 1, 1),
        (2, 5, 16, 2, 2, 0, 12, 4, 4, 2, 2, 1, 1),
        (1, 5, 32, 1, 4, 4, 4, 4, 4, 2, 2, 1, 1),
        (2, 5, 64, 1, 4, 8, 8, 8, 8, 2, 2, 1, 1),
        (1, 3, 96, 1, 4, 8, 8, 8, 8, 2, 2, 1, 2),
        (1, 3, 384, 1, 4, 12, 12, 0, 0, 2, 2, 1, 2),
    ]), (1.0, 1.0), (0.0, 0.0)),
    "m1": MicroNetSpec((3, 2), _rows([  # msnx_dy6_exp6_6M_221
        (2, 3, 8, 2, 2, 0, 6, 2, 2, 2, 0, 1, 1),
        (2, 3, 16, 2, 2, 0, 8, 4, 4, 2, 2, 1, 1),
        (2, 5, 16, 2, 2, 0, 16, 4, 4, 2, 2, 1, 1),
        (1, 5, 32, 1, 6, 4, 4, 4, 4, 2, 2, 1, 1),
        (2, 5, 64, 1, 6, 8, 8, 8, 8, 2, 2, 1, 1),
        (1, 3, 96, 1, 6, 8, 8, 8, 8, 2, 2, 1, 2),
        (1, 3, 576, 1, 6, 12, 12, 0, 0, 2, 2, 1, 2),
    ]), (1.0, 1.0), (0.0, 0.0)),
    "m2": MicroNetSpec((4, 2), _rows([  # msnx_dy9_exp6_12M_221
        (2, 3, 12, 2, 2, 0, 8, 4, 4, 2, 0, 1, 1),
        (2, 3, 16, 2, 2, 0, 12, 4, 4, 2, 2, 1, 1),
        (1, 3, 24, 2, 2, 0, 16, 4, 4, 2, 2, 1, 1),
        (2, 5, 32, 1, 6, 6, 6, 4, 4, 2, 2, 1, 1),
        (1, 5, 32, 1, 6, 8, 8, 4, 4, 2, 2, 1, 2),
        (1, 5, 64, 1, 6, 8, 8, 8, 8, 2, 2, 1, 2),
        (2, 5, 96, 1, 6, 8, 8, 8, 8, 2, 2, 1, 2),
        (1, 3, 128, 1, 6, 12, 12, 8, 8, 2, 2, 1, 2),
        (1, 3, 768, 1, 6, 16, 16, 0, 0, 2, 2, 1, 2),
    ]), (1.0, 1.0), (0.0, 0.0)),
    "m3": MicroNetSpec((4, 3), _rows([  # msnx_dy12_exp6_20M_020
        (2, 3, 16, 2, 2, 0, 12, 4, 4, 0, 2, 0, 1),
        (2, 3, 24, 2, 2, 0, 16, 4, 4, 0, 2, 0, 1),
        (1, 3, 24, 2, 2, 0, 24, 4, 4, 0, 2, 0, 1),
        (2, 5, 32, 1, 6, 6, 6, 4, 4, 0, 2, 0, 1),
        (1, 5, 32, 1, 6, 8, 8, 4, 4, 0, 2, 0, 2),
        (1, 5, 64, 1, 6, 8, 8, 8, 8, 0, 2, 0, 2),
        (1, 5, 80, 1, 6, 8, 8, 8, 8, 0, 2, 0, 2),
        (1, 5, 80, 1, 6, 10, 10, 8, 8, 0, 2, 0, 2),
        (2, 5, 120, 1, 6, 10, 10, 10, 10, 0, 2, 0, 2),
        (1, 5, 120, 1, 6, 12, 12, 10, 10, 0, 2, 0, 2),
        (1, 3, 144, 1, 6, 12, 12, 12, 12, 0, 2, 0, 2),
        (1, 3, 864, 1, 6, 12, 12, 0, 0, 0, 2, 0, 2),
    ]), (1.0, 0.5), (0.0, 0.5)),
}
# The coefficient MLP squeezes to in / (REDUCTION * r); after the last pointwise conv the
# mix starts from a1 = 1, b1 = 0 (the original's ACTIVATION.REDUCTION and INIT_A_BLOCK3).
REDUCTION = 8
INIT_LAST = ((1.0, 0.0), (0.0, 0.0))


class ChannelShuffle(nn.Module):
    """[B, G * n, H, W] viewed as [B, G, n, H, W] -> transposed to [B, n, G, H, W] -> flat."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        return x.reshape(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class DynamicShiftMax(nn.Module):
    """Dynamic Shift-Max on [B, C, H, W] -> [B, C, H, W].

    theta = 4 * (h_sigmoid(W2 relu(W1 mean_{H,W}(x))) - 0.5) in [-2, 2] (squeeze channels
    max(4, round4(C / reduction))); with ``two`` mixes, out = max(a1 x + b1 s(x), a2 x + b2 s(x))
    with (a1, b1, a2, b2) = theta + (init_a[0], init_b[0], init_a[1], init_b[1]); otherwise
    out = a1 x + b1 s(x). s(x) is the circular shift over ``groups`` groups of C / groups
    channels: channel j of group i takes channel j + 1 of group i + 1 (both modulo).
    """

    def __init__(self, channels: int, reduction: int, groups: int, two: bool,
                 init_a: Tuple[float, float], init_b: Tuple[float, float]) -> None:
        super().__init__()
        if channels % groups:
            raise ParameterError(f"DynamicShiftMax: {channels} channels do not split into "
                                 f"{groups} groups")
        squeeze = max(4, make_divisible(channels // reduction, 4))
        self.mixes = 2 if two else 1
        self.fc = nn.Sequential(nn.Linear(channels, squeeze), nn.ReLU(),
                                nn.Linear(squeeze, 2 * self.mixes * channels), nn.Hardsigmoid())
        self.channels = channels
        self.groups = groups
        self.init_a = init_a
        self.init_b = init_b

    def macs(self, inputs: Tuple[Tensor], output: Tensor) -> int:
        """Multiply-accumulates of the mixes (2 per output element each) for
        :func:`~pyssondo.students.complexity.count_macs`; the coefficient MLP's Linear layers
        are counted by their own hooks."""
        return 2 * self.mixes * output.numel()

    def shift(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        grouped = x.reshape(b, self.groups, c // self.groups, h, w)
        return torch.roll(grouped, shifts=(-1, -1), dims=(1, 2)).reshape(b, c, h, w)

    def forward(self, x: Tensor) -> Tensor:
        theta = (self.fc(x.mean(dim=(2, 3))) - 0.5) * 4.0  # [B, 2 * mixes * C]
        theta = theta.reshape(x.shape[0], 2 * self.mixes, self.channels, 1, 1)
        shifted = self.shift(x)
        out = x * (theta[:, 0] + self.init_a[0]) + shifted * (theta[:, 1] + self.init_b[0])
        if self.mixes == 2:
            out2 = x * (theta[:, 2] + self.init_a[1]) + shifted * (theta[:, 3] + self.init_b[1])
            out = torch.maximum(out, out2)
        return out


def _conv_bn(in_ch: int, out_ch: int, kernel: Tuple[int, int], stride: Tuple[int, int],
             groups: int) -> List[nn.Module]:
    padding = ((kernel[0] - 1) // 2, (kernel[1] - 1) // 2)
    return [nn.Conv2d(in_ch, out_ch, kernel, stride, padding, groups=groups, bias=False),
            batch_norm(out_ch)]


def _depthwise(in_ch: int, c1: int, c2: int, kernel: int, stride: int) -> List[nn.Module]:
    """k x 1 depthwise (x c1 channels, stride on frequency), then 1 x k depthwise (x c2,
    stride on time), each with BatchNorm."""
    return (_conv_bn(in_ch, in_ch * c1, (kernel, 1), (stride, 1), in_ch)
            + _conv_bn(in_ch * c1, in_ch * c1 * c2, (1, kernel), (1, stride), in_ch * c1))


class MicroBlock(nn.Module):
    """One MicroNet block (the original DYMicroBlock with shuffle, spatial-separable depthwise
    and group pointwise convs), plus the input when stride is 1 and in == out channels."""

    def __init__(self, in_ch: int, s: MicroBlockSpec, init_a: Tuple[float, float],
                 init_b: Tuple[float, float]) -> None:
        super().__init__()
        hidden = in_ch * s.c1 * s.c2
        reduction = REDUCTION * s.r

        def act(channels: int, y: int, groups: int, red: int) -> nn.Module:
            if y == 0:
                return nn.ReLU6()
            return DynamicShiftMax(channels, red, groups, y == 2, init_a, init_b)

        def last_act(channels: int, red: int) -> List[nn.Module]:
            if s.y3 == 0:
                return []
            return [DynamicShiftMax(channels, red, s.g4, False, *INIT_LAST)]

        layers: List[nn.Module] = []
        if s.g1 == 0:  # Micro-Block-A: depthwise (widening) -> shift-max -> group pointwise
            layers += _depthwise(in_ch, s.c1, s.c2, s.kernel, s.stride)
            layers += [act(hidden, s.y2, s.g2, reduction), ChannelShuffle(s.g2)]
            if s.y2:
                layers.append(ChannelShuffle(hidden // 2))
            layers += _conv_bn(hidden, s.out_ch, (1, 1), (1, 1), s.g3)
            layers += last_act(s.out_ch, reduction // 2) + [ChannelShuffle(s.g4)]
            if s.y3 and s.out_ch % 2 == 0:
                layers.append(ChannelShuffle(s.out_ch // 2))
        elif s.g3 == 0:  # the last block: group pointwise to the final width
            layers += _conv_bn(in_ch, hidden, (1, 1), (1, 1), s.g1)
            if s.y3:
                layers.append(DynamicShiftMax(hidden, reduction, s.g2, False, *INIT_LAST))
        else:  # Micro-Block-B/C: pointwise -> depthwise -> pointwise
            layers += _conv_bn(in_ch, hidden, (1, 1), (1, 1), s.g1)
            layers += [act(hidden, s.y1, s.g2, reduction), ChannelShuffle(s.g2)]
            layers += _depthwise(hidden, 1, 1, s.kernel, s.stride)
            # after the depthwise conv the shift moves between groups of g2 channels
            layers.append(act(hidden, s.y2, hidden // s.g2, reduction))
            if s.y1 and s.y2:
                layers.append(ChannelShuffle(hidden // 4))
            elif s.y1 or s.y2:
                layers.append(ChannelShuffle(hidden // 2))
            layers += _conv_bn(hidden, s.out_ch, (1, 1), (1, 1), s.g3)
            red = reduction // 2 if s.out_ch < hidden else reduction
            layers += last_act(s.out_ch, red) + [ChannelShuffle(s.g4)]
            if s.y3:
                layers.append(ChannelShuffle(s.out_ch // 2))
        self.layers = nn.Sequential(*layers)
        self.use_residual = s.stride == 1 and in_ch == s.out_ch

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(x)
        if self.use_residual:
            out = out + x
        return out


class MicroNet(nn.Module):
    """MicroNet backbone as a student.

    Args:
        variant: "m0", "m1", "m2" or "m3" (the published configurations).
        n_mels: mel bands of the input (>= 1). Default 128.

    Input: log-mel [B, n_mels, frames], frames >= 1. ``forward`` -> clip embeddings [B, d];
    ``forward_frames`` -> [B, ceil(frames / 32), d]; d = ``embed_dim`` = the last block's
    channels (384 / 576 / 768 / 864 for M0 / M1 / M2 / M3).
    """

    embed_dim: int
    n_mels: int

    def __init__(self, variant: str = "m0", *, n_mels: int = 128) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ParameterError(f"MicroNet variant={variant!r} is invalid: expected one of "
                                 f"{', '.join(VARIANTS)}")
        if n_mels < 1:
            raise ParameterError(f"MicroNet n_mels={n_mels!r} is invalid: expected >= 1")
        spec = VARIANTS[variant]
        g1, g2 = spec.stem
        stem = (_conv_bn(1, g1, (3, 1), (2, 1), 1)
                + _conv_bn(g1, g1 * g2, (1, 3), (1, 2), g1) + [ChannelShuffle(g1), nn.ReLU6()])
        blocks: List[nn.Module] = []
        ch = g1 * g2
        for s in spec.blocks:
            blocks.append(MicroBlock(ch, s, spec.init_a, spec.init_b))
            ch = s.out_ch
        self.features = nn.Sequential(*stem, *blocks)
        self.embed_dim = ch
        self.n_mels = n_mels
        init_weights(self)

    def _pooled_map(self, x: Tensor) -> Tensor:
        """[B, n_mels, frames] -> ReLU6 of the last map averaged over frequency [B, d, T']."""
        return torch.clamp(self.features(as_image(x, self.n_mels)), 0.0, 6.0).mean(dim=2)

    @torch.jit.export
    def forward_frames(self, x: Tensor) -> Tensor:
        """[B, n_mels, frames] -> frame embeddings [B, ceil(frames / 32), embed_dim]."""
        return nn.functional.hardswish(self._pooled_map(x)).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        """[B, n_mels, frames] -> clip embeddings [B, embed_dim]."""
        return nn.functional.hardswish(self._pooled_map(x).mean(dim=2))


def _micronet(variant: str, **kwargs) -> MicroNet:
    return MicroNet(variant, **kwargs)


@register_student
def micronet_m0(**kwargs) -> MicroNet:
    """MicroNet-M0 (ICCV 2021): micro-factorised convs, Dynamic Shift-Max, 384-d."""
    return _micronet("m0", **kwargs)


@register_student
def micronet_m1(**kwargs) -> MicroNet:
    """MicroNet-M1, 576-d."""
    return _micronet("m1", **kwargs)


@register_student
def micronet_m2(**kwargs) -> MicroNet:
    """MicroNet-M2, 768-d."""
    return _micronet("m2", **kwargs)


@register_student
def micronet_m3(**kwargs) -> MicroNet:
    """MicroNet-M3, 864-d."""
    return _micronet("m3", **kwargs)
