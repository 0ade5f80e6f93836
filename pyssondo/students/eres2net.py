"""ERes2Net students (Chen et al., "An Enhanced Res2Net with Local and Global Feature Fusion for
Speaker Verification", Interspeech 2023; 3D-Speaker speakerlab/models/eres2net/ERes2Net.py).

Architecture: a 3x3 conv stem (m channels, stride 1) with BN and ReLU, then four stages of
Res2Net bottleneck blocks ([3, 4, 6, 3] blocks, m, 2m, 4m, 8m planes, expansion 2, strides
1, 2, 2, 2; each block splits its 1x1 output into 2 scales of width planes / 2 and chains two
3x3 convs). Local feature fusion: in stages 3 and 4 the second scale is fused with the first
by attentional feature fusion (AFF: 1x1 conv bottleneck r = 4, BN, SiLU, 1x1 conv, BN;
y = x (1 + tanh a) + z (1 - tanh a)) instead of added. Global feature fusion: each stage's
output is downsampled by a 3x3 stride-2 conv and fused by AFF with the next stage's output.
Activations are ReLU clipped at 20 and initialisation is PyTorch's default, as in 3D-Speaker.

Embeddings: the fused map [B, 16m, n_mels / 8, T'] (T' = ceil(frames / 8)) is averaged over
frequency; temporal statistics pooling (mean and standard deviation over time, 32m values) then
a Linear layer gives the clip embedding [B, d]. Deviation from 3D-Speaker, which flattens
channels x frequency before pooling: at 128 mels that Linear alone would hold 8192 x d weights,
more than the whole conv stack; averaging keeps eres2net16 at S-SONDO's size (1.43M with
d = 512). The standard deviation is the population one (divides by T', not T' - 1) so that a
single output frame (inputs of <= 8 frames) gives 0, not NaN. Frame embeddings [B, T', d]
apply the same Linear to the statistics of a local window of ``frame_context`` output frames
around each frame (fewer at the edges), so a window covering the whole clip reproduces the
clip embedding. TorchScript: scripts.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import as_image
from ..errors import ParameterError
from .registry import register_student


class ClippedReLU(nn.Hardtanh):
    """min(max(x, 0), 20), 3D-Speaker's ReLU."""

    def __init__(self) -> None:
        super().__init__(0.0, 20.0)


class AFF(nn.Module):
    """Attentional feature fusion of two maps of equal shape: a = BN(conv(SiLU(BN(conv([x, z])))))
    with a channels // 4 bottleneck; returns x (1 + tanh a) + z (1 - tanh a)."""

    def __init__(self, channels: int, r: int = 4) -> None:
        super().__init__()
        inner = channels // r
        self.attention = nn.Sequential(
            nn.Conv2d(2 * channels, inner, 1), nn.BatchNorm2d(inner), nn.SiLU(),
            nn.Conv2d(inner, channels, 1), nn.BatchNorm2d(channels),
        )

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        a = torch.tanh(self.attention(torch.cat([x, z], dim=1)))
        return x * (1.0 + a) + z * (1.0 - a)


class Res2Block(nn.Module):
    """ERes2Net bottleneck: 1x1 conv (stride) to 2 x width -> split in two; branch 1 = 3x3 conv
    of part 1; branch 2 = 3x3 conv of (part 2 + branch 1), or of AFF(branch 1, part 2) with
    ``fuse`` -> concat -> 1x1 conv to 2 x planes; plus the (projected) input; clipped ReLU."""

    expansion = 2

    def __init__(self, in_planes: int, planes: int, stride: int, fuse: bool) -> None:
        super().__init__()
        width = planes * 32 // 64  # 3D-Speaker's baseWidth 32
        self.width = width
        self.conv1 = nn.Conv2d(in_planes, 2 * width, 1, stride, bias=False)
        self.bn1 = nn.BatchNorm2d(2 * width)
        self.conv_a = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(width)
        self.conv_b = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(width)
        self.fuse = AFF(width) if fuse else None
        self.conv3 = nn.Conv2d(2 * width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes * self.expansion:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes * self.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * self.expansion))
        self.relu = ClippedReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        part1, part2 = out[:, :self.width], out[:, self.width:]
        branch1 = self.relu(self.bn_a(self.conv_a(part1)))
        if self.fuse is not None:
            mixed = self.fuse(branch1, part2)
        else:
            mixed = branch1 + part2
        branch2 = self.relu(self.bn_b(self.conv_b(mixed)))
        out = self.bn3(self.conv3(torch.cat([branch1, branch2], dim=1)))
        return self.relu(out + self.shortcut(x))


def _stage(in_planes: int, planes: int, blocks: int, stride: int, fuse: bool) -> nn.Sequential:
    layers = [Res2Block(in_planes, planes, stride, fuse)]
    layers += [Res2Block(planes * 2, planes, 1, fuse) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ERes2Net(nn.Module):
    """ERes2Net backbone with temporal statistics pooling as a student.

    Args:
        m_channels: stem width m (16 or 32 in 3D-Speaker's small models).
        embed_dim: output embedding size d. Default 512.
        n_mels: mel bands of the input (>= 1). Default 128.
        frame_context: output frames (odd, >= 1) whose statistics give a frame embedding.
            Default 5 (= 40 input frames, 0.64 s at hop 16 ms).

    Input: log-mel [B, n_mels, frames], frames >= 1. ``forward`` -> [B, d];
    ``forward_frames`` -> [B, ceil(frames / 8), d].
    """

    embed_dim: int
    n_mels: int
    frame_context: int

    def __init__(self, m_channels: int = 32, *, embed_dim: int = 512, n_mels: int = 128,
                 frame_context: int = 5, num_blocks=(3, 4, 6, 3)) -> None:
        super().__init__()
        if m_channels < 1 or embed_dim < 1 or n_mels < 1:
            raise ParameterError(f"ERes2Net m_channels={m_channels}, embed_dim={embed_dim}, "
                             f"n_mels={n_mels}: all must be >= 1")
        if frame_context < 1 or frame_context % 2 == 0:
            raise ParameterError(f"ERes2Net frame_context={frame_context} is invalid: expected an "
                             "odd number >= 1")
        m = m_channels
        self.stem = nn.Sequential(nn.Conv2d(1, m, 3, 1, 1, bias=False), nn.BatchNorm2d(m),
                                  nn.ReLU())
        self.layer1 = _stage(m, m, num_blocks[0], 1, fuse=False)
        self.layer2 = _stage(2 * m, 2 * m, num_blocks[1], 2, fuse=False)
        self.layer3 = _stage(4 * m, 4 * m, num_blocks[2], 2, fuse=True)
        self.layer4 = _stage(8 * m, 8 * m, num_blocks[3], 2, fuse=True)
        self.down1 = nn.Conv2d(2 * m, 4 * m, 3, 2, 1, bias=False)
        self.down2 = nn.Conv2d(4 * m, 8 * m, 3, 2, 1, bias=False)
        self.down3 = nn.Conv2d(8 * m, 16 * m, 3, 2, 1, bias=False)
        self.fuse12 = AFF(4 * m)
        self.fuse123 = AFF(8 * m)
        self.fuse1234 = AFF(16 * m)
        self.embedding = nn.Linear(2 * 16 * m, embed_dim)
        self.embed_dim = embed_dim
        self.n_mels = n_mels
        self.frame_context = frame_context

    def _frame_features(self, x: Tensor) -> Tensor:
        """[B, n_mels, frames] -> [B, 16m, T'] (the fused map averaged over frequency)."""
        out = self.stem(as_image(x, self.n_mels))
        out1 = self.layer1(out)
        out2 = self.layer2(out1)
        fused = self.fuse12(out2, self.down1(out1))
        out3 = self.layer3(out2)
        fused = self.fuse123(out3, self.down2(fused))
        out4 = self.layer4(out3)
        fused = self.fuse1234(out4, self.down3(fused))
        return fused.mean(dim=2)

    def _embed(self, mean: Tensor, var: Tensor) -> Tensor:
        """Linear([mean, sqrt(var + 1e-8)]) over the last axis."""
        return self.embedding(torch.cat([mean, torch.sqrt(var + 1e-8)], dim=-1))

    @torch.jit.export
    def forward_frames(self, x: Tensor) -> Tensor:
        """[B, n_mels, frames] -> frame embeddings [B, ceil(frames / 8), embed_dim]."""
        h = self._frame_features(x)
        k = self.frame_context
        mean = F.avg_pool1d(h, k, 1, k // 2, count_include_pad=False)
        sq_mean = F.avg_pool1d(h * h, k, 1, k // 2, count_include_pad=False)
        var = (sq_mean - mean * mean).clamp_min(0.0)
        return self._embed(mean.transpose(1, 2), var.transpose(1, 2))

    def forward(self, x: Tensor) -> Tensor:
        """[B, n_mels, frames] -> clip embeddings [B, embed_dim] (statistics over all frames)."""
        h = self._frame_features(x)
        return self._embed(h.mean(dim=2), h.var(dim=2, correction=0))


def _eres2net(m_channels: int, **kwargs) -> ERes2Net:
    return ERes2Net(m_channels, **kwargs)


@register_student
def eres2net16(**kwargs) -> ERes2Net:
    """ERes2Net (3D-Speaker) m=16: Res2Net blocks, local+global AFF fusion, stats pooling."""
    return _eres2net(16, **kwargs)


@register_student
def eres2net32(**kwargs) -> ERes2Net:
    """ERes2Net (3D-Speaker) m=32, the 3D-Speaker base width."""
    return _eres2net(32, **kwargs)
