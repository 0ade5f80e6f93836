"""MobileViT v2 students (Mehta & Rastegari, "Separable Self-attention for Mobile Vision
Transformers", TMLR 2023; layout from apple/ml-cvnets, cvnets/models/classification/
config/mobilevit_v2.py and cvnets/modules/mobilevit_block.py).

Architecture at width w (channels rounded with ``make_divisible``): a 3x3 stride-2 conv stem
(clip(32 w, 16, 64) channels, BatchNorm, SiLU) on the 1-channel log-mel; layer 1: one MV2
inverted residual to 64 w (rounded to 16); layer 2: two MV2 to 128 w (the first stride 2);
layers 3/4/5: an MV2 stride-2 block to 256 w / 384 w / 512 w followed by a MobileViT v2 block
with attention width d = 128 w / 192 w / 256 w and 2 / 4 / 3 attention layers. MV2 blocks: 1x1
expansion x 2, depthwise 3x3, 1x1 linear projection, residual when shapes allow; SiLU.
BatchNorm uses the project's EfficientAT settings (eps 1e-3, momentum 0.01), as every student.

MobileViT v2 block: depthwise 3x3 (BN, SiLU) -> 1x1 to d (no bias) -> unfold into 2x2 patches
[B, d, P = 4, N patches] -> L x (x + attn(GN(x)); x + FFN(GN(x))) -> GroupNorm -> fold ->
1x1 to the block's channels (BN). GN is GroupNorm with one group (layer norm over d, P, N);
FFN is 1x1 conv d -> 2d (rounded down to 16), SiLU, 1x1 conv back. Separable self-attention:
a 1x1 conv to 1 + 2d channels split into a query (1), keys (d) and values (d); the query's
softmax over the N patches weights the keys into one context vector per patch position; the
output is a 1x1 conv of ReLU(values) * context. Unlike ml-cvnets, a map whose frequency or time
size is odd is zero-padded at the end to a multiple of the patch (never resized) and the
padding is cropped after folding, so every frame count >= 1 works; the padded cells take part
in the attention and the GroupNorm statistics.

Embeddings: total downsampling is 32 on both axes. Frame embeddings are the last feature map
averaged over frequency, [B, ceil(frames / 32), d]; the clip embedding is their mean (global
average pooling, as the original before its classifier); d = 512 w (256 at w = 0.5). The
classifier (one Linear) is not part of the student. TorchScript: scripts.
"""

from typing import List

import torch
from torch import Tensor, nn

from ._common import ConvBNAct, as_image, init_weights, make_divisible
from ..errors import ParameterError
from .registry import register_student

PATCH = 2  # patch height and width of every MobileViT v2 block (ml-cvnets' patch_h/patch_w)
EXPAND = 2  # expansion of the MV2 blocks (mv2_exp_mult)


class MV2Block(nn.Module):
    """MobileNetV2 inverted residual: 1x1 expand (SiLU) -> depthwise 3x3 (stride, SiLU) -> 1x1
    project (BN, no activation), plus the input when stride is 1 and in == out channels."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        hidden = make_divisible(round(in_ch * EXPAND), 8)
        self.block = nn.Sequential(
            ConvBNAct(in_ch, hidden, 1, act=nn.SiLU),
            ConvBNAct(hidden, hidden, 3, stride, groups=hidden, act=nn.SiLU),
            ConvBNAct(hidden, out_ch, 1, act=None),
        )
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        if self.use_residual:
            out = out + x
        return out


class SeparableSelfAttention(nn.Module):
    """[B, d, P, N] -> [B, d, P, N]: out_proj(relu(V) * sum_N(softmax_N(q) * K))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv = nn.Conv2d(dim, 1 + 2 * dim, 1)
        self.out_proj = nn.Conv2d(dim, dim, 1)
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = torch.split(self.qkv(x), [1, self.dim, self.dim], dim=1)
        context = (k * torch.softmax(q, dim=-1)).sum(dim=-1, keepdim=True)  # [B, d, P, 1]
        return self.out_proj(torch.relu(v) * context)


class AttentionLayer(nn.Module):
    """Pre-norm transformer layer with separable self-attention on [B, d, P, N]."""

    def __init__(self, dim: int, ffn_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(1, dim)
        self.attn = SeparableSelfAttention(dim)
        self.norm2 = nn.GroupNorm(1, dim)
        self.ffn = nn.Sequential(nn.Conv2d(dim, ffn_dim, 1), nn.SiLU(), nn.Conv2d(ffn_dim, dim, 1))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class MobileViTv2Block(nn.Module):
    """Local depthwise 3x3 + 1x1 to ``dim``, ``layers`` attention layers over 2x2 patches, and
    a 1x1 back to ``channels``: [B, channels, H, W] -> same shape (any H, W >= 1)."""

    def __init__(self, channels: int, dim: int, layers: int) -> None:
        super().__init__()
        self.local = nn.Sequential(ConvBNAct(channels, channels, 3, groups=channels, act=nn.SiLU),
                                   nn.Conv2d(channels, dim, 1, bias=False))
        ffn_dim = (2 * dim) // 16 * 16
        self.global_rep = nn.Sequential(*[AttentionLayer(dim, ffn_dim) for _ in range(layers)],
                                        nn.GroupNorm(1, dim))
        self.proj = ConvBNAct(dim, channels, 1, act=None)
        self.patch = PATCH

    def forward(self, x: Tensor) -> Tensor:
        fm = self.local(x)
        b, d, h, w = fm.shape
        p = self.patch
        nh, nw = (h + p - 1) // p, (w + p - 1) // p
        fm = nn.functional.pad(fm, [0, nw * p - w, 0, nh * p - h])
        # [B, d, nh * p, nw * p] -> [B, d, p * p, nh * nw] (F.unfold's layout, as ml-cvnets)
        patches = fm.reshape(b, d, nh, p, nw, p).permute(0, 1, 3, 5, 2, 4)
        patches = self.global_rep(patches.reshape(b, d, p * p, nh * nw))
        fm = patches.reshape(b, d, p, p, nh, nw).permute(0, 1, 4, 2, 5, 3)
        fm = fm.reshape(b, d, nh * p, nw * p)[:, :, :h, :w]
        return self.proj(fm)


class MobileViTv2(nn.Module):
    """MobileViT v2 backbone as a student.

    Args:
        width: width multiplier (the published 0.5 ... 2.0; > 0).
        n_mels: mel bands of the input (>= 1). Default 128.

    Input: log-mel [B, n_mels, frames], frames >= 1. ``forward`` -> clip embeddings [B, d];
    ``forward_frames`` -> [B, ceil(frames / 32), d]; d = ``embed_dim`` = round8(512 x width)
    (256 at width 0.5).
    """

    embed_dim: int
    n_mels: int

    def __init__(self, width: float = 1.0, *, n_mels: int = 128) -> None:
        super().__init__()
        if not width > 0:
            raise ParameterError(f"MobileViTv2 width={width!r} is invalid: expected > 0")
        if n_mels < 1:
            raise ParameterError(f"MobileViTv2 n_mels={n_mels!r} is invalid: expected >= 1")

        def ch(c: float) -> int:
            return make_divisible(c * width, 8)

        stem = max(16, make_divisible(min(64.0, max(16.0, 32 * width)), 8))
        l1 = make_divisible(64 * width, 16)
        layers: List[nn.Module] = [ConvBNAct(1, stem, 3, 2, act=nn.SiLU), MV2Block(stem, l1, 1),
                                   MV2Block(l1, ch(128), 2), MV2Block(ch(128), ch(128), 1)]
        prev = ch(128)
        for out, dim, n in ((256, 128, 2), (384, 192, 4), (512, 256, 3)):
            layers += [MV2Block(prev, ch(out), 2), MobileViTv2Block(ch(out), ch(dim), n)]
            prev = ch(out)
        self.features = nn.Sequential(*layers)
        self.embed_dim = prev
        self.n_mels = n_mels
        init_weights(self)

    @torch.jit.export
    def forward_frames(self, x: Tensor) -> Tensor:
        """[B, n_mels, frames] -> frame embeddings [B, ceil(frames / 32), embed_dim]."""
        return self.features(as_image(x, self.n_mels)).mean(dim=2).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        """[B, n_mels, frames] -> clip embeddings [B, embed_dim] (global average pooling)."""
        return self.forward_frames(x).mean(dim=1)


def _mobilevitv2(width: float, **kwargs) -> MobileViTv2:
    return MobileViTv2(width, **kwargs)


@register_student
def mobilevitv2_050(**kwargs) -> MobileViTv2:
    """MobileViT v2 (separable self-attention) width 0.5, 256-d."""
    return _mobilevitv2(0.5, **kwargs)


@register_student
def mobilevitv2_075(**kwargs) -> MobileViTv2:
    """MobileViT v2 width 0.75, 384-d."""
    return _mobilevitv2(0.75, **kwargs)


@register_student
def mobilevitv2_100(**kwargs) -> MobileViTv2:
    """MobileViT v2 width 1.0, 512-d."""
    return _mobilevitv2(1.0, **kwargs)
