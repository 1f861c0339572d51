"""Putting colour back on a fused luminance image (BT.601 YCbCr, full range).

Models fuse luminance only. At predict time the chroma comes from the colour source; when both
sources are colour, each pixel's Cb and Cr are a weighted mean of the two sources' chroma, the
weights being each source's saturation there (distance from neutral grey), so the more saturated
source decides the hue instead of the two washing each other out.
"""

from __future__ import annotations

import torch
from kornia.color import rgb_to_ycbcr, ycbcr_to_rgb


def _saturation_weighted(chroma_a: torch.Tensor, chroma_b: torch.Tensor) -> torch.Tensor:
    weight_a = (chroma_a - 0.5).abs()
    weight_b = (chroma_b - 0.5).abs()
    total = weight_a + weight_b
    mixed = (chroma_a * weight_a + chroma_b * weight_b) / total.clamp_min(1e-12)
    return torch.where(total > 1e-12, mixed, torch.full_like(mixed, 0.5))


def restore_color(
    fused_y: torch.Tensor,
    a_color: torch.Tensor,
    b_color: torch.Tensor,
    a_is_color: torch.Tensor,
    b_is_color: torch.Tensor,
) -> torch.Tensor:
    """RGB (B, 3, H, W) from fused Y (B, 1, H, W) and the sources' RGB; grey sources repeat Y.

    ``a_is_color`` / ``b_is_color`` are (B,) bools: which sources were stored with 3 channels.
    Samples with no colour source come back with three equal channels.
    """
    chroma_a = rgb_to_ycbcr(a_color)[:, 1:]
    chroma_b = rgb_to_ycbcr(b_color)[:, 1:]
    neutral = torch.full_like(chroma_a, 0.5)
    only_a = a_is_color[:, None, None, None]
    only_b = b_is_color[:, None, None, None]
    chroma = torch.where(
        only_a & only_b,
        _saturation_weighted(chroma_a, chroma_b),
        torch.where(only_a, chroma_a, torch.where(only_b, chroma_b, neutral)),
    )
    return ycbcr_to_rgb(torch.cat([fused_y, chroma], dim=1)).clamp(0.0, 1.0)
