"""Layers shared by the networks of several families."""

from __future__ import annotations

from torch import Tensor, nn


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """A 3x3 convolution with reflect padding (no dark frame at image borders in the fused image)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, padding_mode="reflect")


def zero_initialised(conv: nn.Conv2d) -> nn.Conv2d:
    """``conv`` with zero weights and bias: a residual branch ending in it starts as a no-op."""
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of each pixel of a (B, C, H, W) map."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, features: Tensor) -> Tensor:
        return self.norm(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ResidualBlock(nn.Module):
    """x + conv(act(conv(x))): two 3x3 convolutions around a LeakyReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv3x3(channels, channels), nn.LeakyReLU(0.2), conv3x3(channels, channels))

    def forward(self, features: Tensor) -> Tensor:
        return features + self.body(features)
