"""Putting colour back on a fused luminance image (BT.601 YCbCr, full range).

Models fuse luminance only. At predict time the chroma comes from the colour source; when both
sources are colour, each pixel's Cb and Cr are a weighted mean of the two sources' chroma, the
weights being each source's saturation there (distance from neutral grey), so the more saturated
source decides the hue instead of the two washing each other out.

Where the fused luminance and the borrowed chroma make a colour outside RGB's range (a bright fused
pixel under a saturated hue: over-exposed or PET sources), that pixel's chroma is scaled towards grey
just enough to fit, instead of clipping each channel: clipping changes the pixel's luminance, that is,
what the model fused, by several grey levels on such images; desaturating keeps it.
"""

from __future__ import annotations

import torch
from kornia.color import rgb_to_ycbcr

from datamodules.schema import BT601

_CB_SCALE, _CR_SCALE = 0.564, 0.713
"""kornia's ``rgb_to_ycbcr``: Cb = (B - Y) 0.564 + 0.5, Cr = (R - Y) 0.713 + 0.5."""


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
    fused_y = fused_y.clamp(0.0, 1.0)
    return fit_in_gamut(fused_y, ycbcr_to_unclipped_rgb(fused_y, chroma))


def ycbcr_to_unclipped_rgb(luminance: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
    """Full-range BT.601 YCbCr to RGB without clipping (kornia's conversion clips), luminance kept exactly.

    Red and blue invert the chroma scales of :func:`kornia.color.rgb_to_ycbcr` (which made ``chroma``);
    green is solved from the BT.601 luminance equation, so the luminance of the result is ``luminance`` to
    float rounding whatever the chroma.
    """
    red_weight, green_weight, blue_weight = BT601
    cb, cr = chroma[:, :1] - 0.5, chroma[:, 1:] - 0.5
    red = luminance + cr / _CR_SCALE
    blue = luminance + cb / _CB_SCALE
    green = (luminance - red_weight * red - blue_weight * blue) / green_weight
    return torch.cat([red, green, blue], dim=1)


def fit_in_gamut(luminance: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
    """``rgb`` (B, 3, H, W) moved towards its grey ``luminance`` (B, 1, H, W) just enough to lie in [0, 1].

    Every channel minus the luminance is proportional to the chroma, so ``Y + t (RGB - Y)`` keeps the
    BT.601 luminance for any ``t``; ``t`` per pixel is the largest in [0, 1] that keeps all three channels
    in range (``luminance`` itself must be in [0, 1]).
    """
    offset = rgb - luminance
    room = torch.where(offset > 0, 1.0 - luminance, -luminance)  # how far each channel may move that way
    scale = torch.where(offset.abs() > 1e-12, room / torch.where(offset.abs() > 1e-12, offset, 1.0), 1.0)
    scale = scale.amin(dim=1, keepdim=True).clamp(0.0, 1.0)
    return (luminance + scale * offset).clamp(0.0, 1.0)
