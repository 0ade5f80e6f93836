"""DyMN students: dynamic MobileNets (Schmid et al., "Dynamic Convolutional Neural Networks as
Efficient Pre-trained Audio Models", TASLP 2024; EfficientAT models/dymn).

The MobileNetV3-Large layout of :mod:`.mobilenetv3` with every inverted-residual block replaced
by a dynamic block:

- a context generator: the block input averaged over time (per frequency) and over frequency
  (per frame), a shared 1x1 conv + BN + hard-swish to H channels (H = expanded / 4 rounded to
  8, clipped to [32, 128] x width), then (i) the mean over both sequences, a context vector
  c [B, H] that parameterises the dynamic conv and ReLU, and (ii) 1x1 convs back to the
  expanded width giving frequency and time attention sequences (average-pooled by the block's
  stride);
- dynamic convolution (Chen et al. 2020) for the 1x1 expansion, the depthwise conv and the 1x1
  projection: K = 4 kernels mixed per example by softmax(Linear(c) / temperature);
- dynamic ReLU B (Chen et al. 2020): per channel max_m(a_m x + b_m), M = 2, coefficients from c;
- coordinate attention: x * sigmoid(g_f) * sigmoid(g_t).

The stem, the 1x1 conv to 960 x width channels and the pooling are as in MobileNetV3;
frame embeddings are the last map averaged over frequency, [B, ceil(frames / 32), d], the clip
embedding is their mean over time. The softmax temperature follows EfficientAT's schedule
(30 at epoch 0, falling to 1); call ``set_epoch(e)`` each epoch when training from scratch.
TorchScript: scripts.
"""

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import ConvBNAct, as_image, batch_norm, init_weights, make_divisible
from .mobilenetv3 import BlockSpec, scale_blocks
from ..errors import ParameterError
from .registry import register_student

# EfficientAT's dymn get_model defaults: T_max, T_min, T0_slope, T1_slope.
TEMPERATURE_SCHEDULE = (30.0, 1.0, 1.0, 0.02)


def temperature_at(epoch: float, schedule: Tuple[float, float, float, float] = TEMPERATURE_SCHEDULE
                   ) -> float:
    """Dynamic-conv softmax temperature at ``epoch``: max(T_max - s0 e,
    1 + s1 (T_max - 1) / s0 - s1 e, T_min)."""
    t_max, t_min, s0, s1 = schedule
    return max(t_max - s0 * epoch, 1 + s1 * (t_max - 1) / s0 - s1 * epoch, t_min)


class DynamicConv(nn.Module):
    """Conv2d whose kernel is a per-example mixture of K kernels: W_b = sum_k pi_bk W_k with
    pi_b = softmax(Linear(c_b) / temperature). Computed as one grouped conv over the batch."""

    temperature: float

    def __init__(self, in_ch: int, out_ch: int, context_dim: int, kernel: int, stride: int = 1,
                 groups: int = 1, num_kernels: int = 4) -> None:
        super().__init__()
        self.in_ch, self.out_ch, self.kernel = in_ch, out_ch, kernel
        self.stride, self.groups, self.num_kernels = stride, groups, num_kernels
        self.padding = (kernel - 1) // 2
        self.temperature = TEMPERATURE_SCHEDULE[0]
        self.attention = nn.Linear(context_dim, num_kernels)
        weight = torch.empty(num_kernels, out_ch, in_ch // groups, kernel, kernel)
        for k in range(num_kernels):
            nn.init.kaiming_normal_(weight[k], mode="fan_out")
        self.weight = nn.Parameter(weight.reshape(num_kernels, -1))  # [K, out * in/g * k * k]

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        b, _, f, t = x.shape
        pi = torch.softmax(self.attention(context) / self.temperature, dim=-1)  # [B, K]
        w = (pi @ self.weight).reshape(b * self.out_ch, self.in_ch // self.groups,
                                       self.kernel, self.kernel)
        out = F.conv2d(x.reshape(1, b * self.in_ch, f, t), w, None, self.stride, self.padding,
                       1, self.groups * b)
        return out.reshape(b, self.out_ch, out.size(2), out.size(3))

    def macs(self, inputs: Tuple[Tensor, Tensor], output: Tensor) -> int:
        """Per-example convolution plus mixing the K kernels (the attention Linear is counted
        as an nn.Linear)."""
        per_output = self.in_ch // self.groups * self.kernel * self.kernel
        return output.numel() * per_output + output.size(0) * self.weight.numel()


class DynamicReLU(nn.Module):
    """Dynamic ReLU B: y = max(a_1 x + b_1, a_2 x + b_2) per channel, with
    (a_1, a_2, b_1, b_2) = (1, 0, 0, 0) + (1, 1, 0.5, 0.5) * (2 sigmoid(Linear(c)) - 1)."""

    def __init__(self, channels: int, context_dim: int) -> None:
        super().__init__()
        self.channels = channels
        self.coefs = nn.Linear(context_dim, 4 * channels)
        self.register_buffer("lambdas", torch.tensor([1.0, 1.0, 0.5, 0.5]))
        self.register_buffer("init_v", torch.tensor([1.0, 0.0, 0.0, 0.0]))

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        theta = 2.0 * torch.sigmoid(self.coefs(context)) - 1.0
        c = theta.reshape(-1, self.channels, 1, 1, 4) * self.lambdas + self.init_v
        return torch.maximum(x * c[..., 0] + c[..., 2], x * c[..., 1] + c[..., 3])


class ContextGen(nn.Module):
    """Block input [B, C, F, T] -> (context [B, H], freq attention [B, E, F', 1],
    time attention [B, E, 1, T']) with F', T' the block's output sizes."""

    def __init__(self, in_ch: int, exp_ch: int, context_dim: int, stride: int) -> None:
        super().__init__()
        self.joint = ConvBNAct(in_ch, context_dim, 1)
        self.conv_f = nn.Conv2d(context_dim, exp_ch, 1)
        self.conv_t = nn.Conv2d(context_dim, exp_ch, 1)
        self.stride = stride

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        f = x.size(2)
        seq = torch.cat([x.mean(dim=3, keepdim=True),
                         x.mean(dim=2, keepdim=True).transpose(2, 3)], dim=2)  # [B, C, F+T, 1]
        seq = self.joint(seq)
        context = seq.mean(dim=(2, 3))
        h_f, h_t = seq[:, :, :f], seq[:, :, f:].transpose(2, 3)
        if self.stride > 1:
            h_f = F.avg_pool2d(h_f, (3, 1), (self.stride, 1), (1, 0))
            h_t = F.avg_pool2d(h_t, (1, 3), (1, self.stride), (0, 1))
        return context, self.conv_f(h_f), self.conv_t(h_t)


class DynamicExpand(nn.Module):
    """Dynamic 1x1 conv -> BN -> hard-swish or ReLU (the block's expansion)."""

    def __init__(self, in_ch: int, out_ch: int, context_dim: int, use_hs: bool) -> None:
        super().__init__()
        self.conv = DynamicConv(in_ch, out_ch, context_dim, 1)
        self.norm = batch_norm(out_ch)
        self.act = nn.Hardswish() if use_hs else nn.ReLU()

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x, context)))


class DynamicBlock(nn.Module):
    """Dynamic inverted residual: [dyconv 1x1 expand -> BN -> act] -> dyconv depthwise -> BN
    -> dynamic ReLU -> coordinate attention -> dyconv 1x1 project -> BN (+ input)."""

    def __init__(self, spec: BlockSpec, width: float) -> None:
        super().__init__()
        h = int(min(max(make_divisible(spec.exp_ch // 4, 8), make_divisible(32 * width, 8)),
                    make_divisible(128 * width, 8)))
        self.context = ContextGen(spec.in_ch, spec.exp_ch, h, spec.stride)
        self.expand = DynamicExpand(spec.in_ch, spec.exp_ch, h, spec.use_hs) \
            if spec.exp_ch != spec.in_ch else None
        self.depthwise = DynamicConv(spec.exp_ch, spec.exp_ch, h, spec.kernel, spec.stride,
                                     groups=spec.exp_ch)
        self.depthwise_norm = batch_norm(spec.exp_ch)
        self.dyrelu = DynamicReLU(spec.exp_ch, h)
        self.project = DynamicConv(spec.exp_ch, spec.out_ch, h, 1)
        self.project_norm = batch_norm(spec.out_ch)
        self.use_residual = spec.stride == 1 and spec.in_ch == spec.out_ch

    def forward(self, x: Tensor) -> Tensor:
        context, att_f, att_t = self.context(x)
        out = x
        if self.expand is not None:
            out = self.expand(out, context)
        out = self.depthwise_norm(self.depthwise(out, context))
        out = self.dyrelu(out, context)
        out = out * torch.sigmoid(att_f) * torch.sigmoid(att_t)
        out = self.project_norm(self.project(out, context))
        if self.use_residual:
            out = out + x
        return out


class DyMN(nn.Module):
    """EfficientAT DyMN backbone as a student.

    Args:
        width: channel width multiplier (0.4 dymn04, 1.0 dymn10, 2.0 dymn20).
        n_mels: mel bands of the input (>= 1). Default 128.

    Input: log-mel [B, n_mels, frames], frames >= 1. ``forward`` -> [B, d];
    ``forward_frames`` -> [B, ceil(frames / 32), d]; d = ``embed_dim`` (960 at width 1.0).
    """

    embed_dim: int
    n_mels: int

    def __init__(self, width: float = 1.0, *, n_mels: int = 128) -> None:
        super().__init__()
        if not width > 0:
            raise ParameterError(f"DyMN width={width!r} is invalid: expected > 0")
        if n_mels < 1:
            raise ParameterError(f"DyMN n_mels={n_mels!r} is invalid: expected >= 1")
        blocks = scale_blocks(width)
        last = 6 * blocks[-1].out_ch
        self.stem = ConvBNAct(1, blocks[0].in_ch, 3, 2)
        self.blocks = nn.Sequential(*[DynamicBlock(s, width) for s in blocks])
        self.out_conv = ConvBNAct(blocks[-1].out_ch, last, 1)
        self.embed_dim = last
        self.n_mels = n_mels
        init_weights(self)

    def set_epoch(self, epoch: float) -> None:
        """Sets every dynamic conv's softmax temperature for ``epoch`` (EfficientAT schedule)."""
        t = temperature_at(epoch)
        for m in self.modules():
            if isinstance(m, DynamicConv):
                m.temperature = t

    @torch.jit.export
    def forward_frames(self, x: Tensor) -> Tensor:
        """[B, n_mels, frames] -> frame embeddings [B, ceil(frames / 32), embed_dim]."""
        fmap = self.out_conv(self.blocks(self.stem(as_image(x, self.n_mels))))
        return fmap.mean(dim=2).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        """[B, n_mels, frames] -> clip embeddings [B, embed_dim] (global average pooling)."""
        return self.forward_frames(x).mean(dim=1)


def _dymn(width: float, **kwargs) -> DyMN:
    return DyMN(width, **kwargs)


@register_student
def dymn04(**kwargs) -> DyMN:
    """DyMN (EfficientAT) width 0.4: dynamic conv, dynamic ReLU, coordinate attention."""
    return _dymn(0.4, **kwargs)


@register_student
def dymn10(**kwargs) -> DyMN:
    """DyMN (EfficientAT) width 1.0: S-SONDO's DyMN student, 960-d."""
    return _dymn(1.0, **kwargs)
