"""Synthetic degradations of clean luminance batches, in torch, for pseudo-degradation tasks.

LURE's pseudo-degradation task re-degrades clean images on the fly (on the training device, per
sample a random kind and severity) and asks the network to map them back to the clean image as
well. The parameters per severity 1..3 span mild to strong; they are chosen to look like the
real degradations the prompt table names (the same scales as the demo set's, see
``datamodules.demo``), not to reproduce any one dataset.
"""

from __future__ import annotations

import torch
from kornia.enhance import jpeg_codec_differentiable
from kornia.filters import gaussian_blur2d

from datamodules.schema import DEGRADATIONS, MAX_SEVERITY

NOISE_SIGMA = (0.04, 0.09, 0.16)
"""Standard deviation of additive Gaussian noise (on [0, 1]) per severity."""
BLUR_SIGMA = (1.2, 2.2, 3.5)
"""Gaussian blur sigma in pixels per severity."""
LOWLIGHT_GAIN = (0.3, 0.15, 0.07)
"""Exposure gain in linear light per severity (applied through a 2.2 gamma)."""
HAZE_DENSITY = (0.8, 1.5, 2.4)
"""Scattering coefficient beta of the transmission t = exp(-beta (0.2 + depth)) per severity."""
JPEG_QUALITY = (35.0, 18.0, 8.0)
"""JPEG quality per severity."""
OVEREXPOSURE_GAIN = (1.4, 1.8, 2.4)
"""Gain before clipping per severity."""
CONTRAST = (0.7, 0.5, 0.3)
"""Factor on the deviation from the image mean per severity."""

SYNTHETIC_KINDS: tuple[str, ...] = ("noise", "blur", "lowlight", "haze", "jpeg", "overexposure", "lowcontrast")
"""The kinds :func:`degrade` can synthesise (rain is left out: streaks need more than a formula)."""


def degrade(image: torch.Tensor, kind: str, severity: int) -> torch.Tensor:
    """``image`` (B, 1, H, W) in [0, 1] degraded by ``kind`` at ``severity`` (1..3), clamped to [0, 1]."""
    if kind not in SYNTHETIC_KINDS:
        raise ValueError(f"cannot synthesise degradation {kind!r}; synthetic kinds: {', '.join(SYNTHETIC_KINDS)}")
    if not 1 <= severity <= MAX_SEVERITY:
        raise ValueError(f"severity must be 1..{MAX_SEVERITY}, got {severity}")
    level = severity - 1
    if kind == "noise":
        noise = torch.randn(image.shape, device=image.device, dtype=image.dtype)
        degraded = image + NOISE_SIGMA[level] * noise
    elif kind == "blur":
        sigma = BLUR_SIGMA[level]
        size = 2 * int(3 * sigma + 0.5) + 1
        degraded = gaussian_blur2d(image, (size, size), (sigma, sigma), border_type="reflect")
    elif kind == "lowlight":
        # darkening in linear light is a plain gain on gamma-encoded values under a 2.2 gamma
        degraded = image * LOWLIGHT_GAIN[level] ** (1.0 / 2.2)
    elif kind == "haze":
        # depth grows towards the top of the frame (a ground plane), so haze thickens with distance;
        # airlight varies a little between samples so "haze" is not one fixed grey level.
        height = image.shape[-2]
        depth = torch.linspace(1.0, 0.0, height, device=image.device, dtype=image.dtype)[:, None]
        transmission = torch.exp(-HAZE_DENSITY[level] * (0.2 + depth))
        airlight = 0.75 + 0.2 * torch.rand(image.shape[0], 1, 1, 1, device=image.device, dtype=image.dtype)
        degraded = image * transmission + airlight * (1.0 - transmission)
    elif kind == "jpeg":
        # kornia's codec works on RGB; a grey image as three equal channels compresses its luminance only.
        quality = torch.full((image.shape[0],), JPEG_QUALITY[level], device=image.device, dtype=image.dtype)
        degraded = jpeg_codec_differentiable(image.expand(-1, 3, -1, -1), quality)[:, :1]
    elif kind == "overexposure":
        degraded = image * OVEREXPOSURE_GAIN[level]
    else:  # lowcontrast
        mean = image.mean(dim=(-2, -1), keepdim=True)
        degraded = mean + CONTRAST[level] * (image - mean)
    return degraded.clamp(0.0, 1.0)


def random_degradations(clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image of ``clean`` (B, 1, H, W) degraded by one random synthetic kind and severity.

    Returns the degraded batch and its (B, len(DEGRADATIONS)) severity matrix (the batch contract's
    ``degradation`` layout), so prompts can be composed for the pseudo samples.
    """
    count = clean.shape[0]
    kinds = torch.randint(len(SYNTHETIC_KINDS), (count,)).tolist()
    severities = torch.randint(1, MAX_SEVERITY + 1, (count,)).tolist()
    degraded = torch.empty_like(clean)
    matrix = torch.zeros(count, len(DEGRADATIONS), device=clean.device)
    # samples sharing kind and severity are degraded together (the JPEG codec is slow per call).
    for kind_index, severity in sorted(set(zip(kinds, severities))):
        members = [i for i in range(count) if kinds[i] == kind_index and severities[i] == severity]
        kind = SYNTHETIC_KINDS[kind_index]
        degraded[members] = degrade(clean[members], kind, severity)
        matrix[members, DEGRADATIONS.index(kind)] = float(severity)
    return degraded, matrix
