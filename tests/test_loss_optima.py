"""What the unsupervised fusion losses ask for: the fused image they reach when it is optimised directly.

Each test optimises a free image (no network) under a loss for fixed sources and checks the
property the loss's docstring states: the intensity term's optimum is the weighted blend of the
sources, and the multi-focus objective rebuilds the all-in-focus image from a near/far pair.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import kornia
import torch
import torch.nn.functional as F

from lightning_modules.losses import focus_weights, gradient_loss, intensity_loss


def optimise(loss_of: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, steps: int = 300) -> torch.Tensor:
    """The image that ``steps`` of Adam reach from ``start`` under the per-sample ``loss_of``."""
    fused = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([fused], lr=0.01)
    for _ in range(steps):
        optimizer.zero_grad()
        loss_of(fused).sum().backward()
        optimizer.step()
    return fused.detach()


def psnr(image: torch.Tensor, reference: torch.Tensor) -> float:
    return 10 * math.log10(1.0 / F.mse_loss(image.clamp(0, 1), reference).item())


def test_the_intensity_optimum_is_the_weighted_blend_not_the_heavier_source() -> None:
    generator = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 2, 1, 24, 24, generator=generator)
    weights = torch.tensor([[0.7, 0.3], [0.2, 0.8]])
    fused = optimise(lambda image: intensity_loss(image, [a, b], weights), (a + b) / 2)
    blend = weights[:, 0, None, None, None] * a + weights[:, 1, None, None, None] * b
    assert (fused - blend).abs().max() < 2e-3, "the optimum should be the weighted blend of the sources"

    per_pixel = torch.rand(2, 1, 24, 24, generator=generator)
    pixel_weights = torch.cat([per_pixel, 1 - per_pixel], dim=1)
    fused = optimise(lambda image: intensity_loss(image, [a, b], pixel_weights), (a + b) / 2)
    assert (fused - (per_pixel * a + (1 - per_pixel) * b)).abs().max() < 2e-3


def textured_scene(size: int, seed: int) -> torch.Tensor:
    """A (1, 1, size, size) image with structure at several scales, in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.zeros(1, 1, size, size)
    for cell in (2, 4, 8, 16):
        noise = torch.rand(1, 1, size // cell + 1, size // cell + 1, generator=generator)
        image += F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False) / 4
    return image


def near_far_pair(size: int = 96, sigma: float = 2.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All-in-focus scene, near-focus shot (a disc in focus, the rest blurred) and far-focus shot (the reverse)."""
    scene = textured_scene(size, seed=0)
    rows, columns = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    near_mask = (((rows - size / 2) ** 2 + (columns - size / 2) ** 2) < (size / 3) ** 2).float()[None, None]
    kernel = 2 * math.ceil(4 * sigma) + 1
    blurred = kornia.filters.gaussian_blur2d(scene, (kernel, kernel), (sigma, sigma), border_type="reflect")
    near = near_mask * scene + (1 - near_mask) * blurred
    far = (1 - near_mask) * scene + near_mask * blurred
    return scene, near, far


def test_the_focus_objective_rebuilds_the_all_in_focus_image() -> None:
    scene, near, far = near_far_pair()
    assert max(psnr(near, scene), psnr(far, scene)) < 30, "each shot alone must be far from the all-in-focus image"
    weights = focus_weights([near, far])

    def multi_focus_loss(image: torch.Tensor) -> torch.Tensor:
        return intensity_loss(image, [near, far], weights) + gradient_loss(image, [near, far], weights)

    fused = optimise(multi_focus_loss, (near + far) / 2, steps=150)
    assert psnr(fused, scene) >= 30


def test_focus_weights_choose_the_sharper_source_per_pixel() -> None:
    scene, near, far = near_far_pair()
    weights = focus_weights([near, far])
    assert weights.shape == (1, 2, 96, 96)
    assert torch.allclose(weights.sum(dim=1), torch.ones(1, 96, 96))
    assert weights[0, 0, 48, 48] == 1 and weights[0, 1, 2, 2] == 1, "the near shot at the centre, the far one outside"
