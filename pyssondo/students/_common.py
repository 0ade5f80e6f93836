"""Small pieces shared by the student families: channel rounding, conv-BN-activation, input
checks. Every student takes a log-mel batch [B, n_mels, frames] and treats it as a 1-channel
image [B, 1, n_mels, frames]."""

from typing import Optional, Type

from torch import Tensor, nn


def make_divisible(value: float, divisor: int = 8) -> int:
    """Rounds ``value`` to the nearest multiple of ``divisor`` (at least ``divisor``), never
    more than 10% below ``value`` (the MobileNet channel rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """EfficientAT's BatchNorm settings (eps 1e-3, momentum 0.01)."""
    return nn.BatchNorm2d(channels, eps=0.001, momentum=0.01)


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias, 'same' padding for odd kernels) -> BatchNorm2d -> optional activation."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 dilation: int = 1, act: Optional[Type[nn.Module]] = nn.Hardswish) -> None:
        layers = [
            nn.Conv2d(in_ch, out_ch, kernel, stride, padding=(kernel - 1) // 2 * dilation,
                      dilation=dilation, groups=groups, bias=False),
            batch_norm(out_ch),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


def as_image(x: Tensor, n_mels: int) -> Tensor:
    """[B, n_mels, frames] log-mel -> [B, 1, n_mels, frames]; ValueError on a wrong shape."""
    if x.dim() != 3 or x.size(1) != n_mels or x.size(2) < 1:
        raise ValueError("student input must be a log-mel batch [B, n_mels={}, frames>=1], got "
                         "shape {}".format(n_mels, x.shape))
    return x.unsqueeze(1)


def init_weights(module: nn.Module) -> None:
    """EfficientAT's initialisation: Kaiming-normal (fan-out) convs, unit norms, N(0, 0.01)
    linears, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
