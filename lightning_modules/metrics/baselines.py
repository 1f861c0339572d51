"""Classical fusion baselines in torch: pixel average, choose-max, Laplacian pyramid.

Reference points for the learned models (``recipes.evaluate --baselines``, ``bench/quality.py``),
as in ../shared/fusion-bench/README.md ("Classical baselines"). Each takes two (B, 1, H, W) grey
images of any value range and returns the fused image in the same range, on their device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

_BINOMIAL = (1.0, 4.0, 6.0, 4.0, 1.0)  # Burt & Adelson's 5-tap generating kernel, / 16


def average(a: Tensor, b: Tensor) -> Tensor:
    """Pixel average (a + b) / 2."""
    return (a + b) / 2


def choose_max(a: Tensor, b: Tensor) -> Tensor:
    """Per-pixel maximum."""
    return torch.maximum(a, b)


def _blur(image: Tensor) -> Tensor:
    """Separable 5-tap binomial blur with mirrored borders (the edge pixel not repeated)."""
    kernel = torch.tensor(_BINOMIAL, dtype=image.dtype, device=image.device) / 16
    padded = F.pad(image, (2, 2, 2, 2), mode="reflect" if min(image.shape[-2:]) > 2 else "replicate")
    blurred = F.conv2d(padded, kernel.view(1, 1, 1, 5))
    return F.conv2d(blurred, kernel.view(1, 1, 5, 1))


def _reduce(image: Tensor) -> Tensor:
    """One level down the Gaussian pyramid: blur, keep every second row and column."""
    return _blur(image)[..., ::2, ::2]


def _expand(image: Tensor, size: tuple[int, int]) -> Tensor:
    """One level up: zeros between the samples, blurred with 4x the kernel (the zeros halve each axis)."""
    upsampled = image.new_zeros(*image.shape[:-2], *size)
    upsampled[..., ::2, ::2] = image
    return _blur(upsampled) * 4


def laplacian_pyramid(a: Tensor, b: Tensor, levels: int = 4) -> Tensor:
    """Laplacian-pyramid fusion with ``levels`` detail levels above the base.

    Detail coefficients take the one of larger magnitude (max-abs), the base (the Gaussian level
    below the last detail level) is averaged, and the pyramid is collapsed. With ``levels=4`` this
    reproduces the "lap" rows of the fusion-bench README. Images too small for ``levels`` levels
    use as many as fit (a level keeps at least 2 pixels per side).
    """
    if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 1:
        raise ValueError(
            f"expected two (B, 1, H, W) grey images of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if levels < 1:
        raise ValueError(f"levels must be at least 1, got {levels}")
    details: list[Tensor] = []
    current_a, current_b = a.to(torch.float32), b.to(torch.float32)
    for _ in range(levels):
        if min(current_a.shape[-2:]) < 4:
            break
        size = current_a.shape[-2:]
        next_a, next_b = _reduce(current_a), _reduce(current_b)
        detail_a = current_a - _expand(next_a, size)
        detail_b = current_b - _expand(next_b, size)
        details.append(torch.where(detail_a.abs() >= detail_b.abs(), detail_a, detail_b))
        current_a, current_b = next_a, next_b
    fused = (current_a + current_b) / 2
    for detail in reversed(details):
        fused = _expand(fused, detail.shape[-2:]) + detail
    return fused.to(a.dtype)


BASELINES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "avg": average,
    "max": choose_max,
    "lap": laplacian_pyramid,
}
"""The baselines by the names the fusion-bench README's table uses."""
