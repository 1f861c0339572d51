"""Layers shared by the networks of several families."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
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


def receptive_radius(module: nn.Module) -> int:
    """How many pixels away a stack of convolutions reads: the sum of its kernels' half-widths."""
    return sum(conv.kernel_size[0] // 2 for conv in module.modules() if isinstance(conv, nn.Conv2d))


def in_row_strips(function: Callable[..., Tensor], inputs: Sequence[Tensor], halo: int, strip_pixels: int) -> Tensor:
    """``function(*inputs)`` on (B, C, H, W) maps, computed in horizontal strips at inference, exactly.

    For a stack of convolutions that pad themselves and read at most ``halo`` rows away: each strip
    is computed with ``halo`` real rows more on either side, cropped afterwards, so padding only
    ever happens at the image's own borders. Bounds memory and keeps every allocation small
    enough for the allocator to reuse. With autograd enabled the function runs whole (the
    backward of each strip's slice would write a full-size gradient).
    """
    batch, _, height, width = inputs[0].shape
    strip_rows = max(strip_pixels // (batch * width), halo + 1)
    if torch.is_grad_enabled() or strip_rows >= height:
        return function(*inputs)
    pieces = []
    for top in range(0, height, strip_rows):
        bottom = min(top + strip_rows, height)
        first, last = max(top - halo, 0), min(bottom + halo, height)
        piece = function(*(tensor[:, :, first:last] for tensor in inputs))
        pieces.append(piece[:, :, top - first : bottom - first])
    return torch.cat(pieces, dim=2)


def true_indices(mask: Tensor, count: int) -> Tensor:
    """Indices of the ``count`` true entries of a 1-D ``mask``, in order, where ``count`` is known on the host.

    ``mask.nonzero()`` would have to ask the device how many there are (on a GPU, the host waits for every
    queued kernel); with the count given, the output's size is known in advance.
    """
    return mask.nonzero_static(size=count).squeeze(1)
