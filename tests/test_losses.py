"""Per-sample fusion losses: MS-SSIM against an independent reference, weighting, source energies."""

from __future__ import annotations

from pathlib import Path

import kornia
import numpy as np
import pytest
import torch
from scipy import ndimage

from lightning_modules.losses import (
    MS_SSIM_WEIGHTS,
    BackboneEnergy,
    GradientEnergy,
    energy_weights,
    exposure_weights,
    focus_measure,
    gaussian_blur,
    gradient_loss,
    intensity_loss,
    ms_ssim,
    ms_ssim_loss,
    sobel_magnitude,
    ssim_loss,
)


def reference_ms_ssim(x: np.ndarray, y: np.ndarray, weights=MS_SSIM_WEIGHTS) -> float:
    """Wang et al. 2003 written out in float64 numpy/scipy: 11-tap Gaussian (sigma 1.5), mirror borders."""
    c1, c2 = 0.01**2, 0.03**2

    def blur(image: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(image, sigma=1.5, mode="mirror", truncate=5 / 1.5)

    result = 1.0
    for scale, weight in enumerate(weights):
        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
        cs = (2 * cxy + c2) / (vx + vy + c2)
        if scale == len(weights) - 1:
            result *= np.mean((2 * mx * my + c1) / (mx**2 + my**2 + c1) * cs) ** weight
        else:
            result *= np.mean(cs) ** weight
            x = x.reshape(x.shape[0] // 2, 2, x.shape[1] // 2, 2).mean(axis=(1, 3))
            y = y.reshape(y.shape[0] // 2, 2, y.shape[1] // 2, 2).mean(axis=(1, 3))
    return result


def textured_pair(seed: int, size: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    clean = kornia.filters.gaussian_blur2d(torch.rand(2, 1, size, size, generator=generator), (7, 7), (2.0, 2.0))
    noisy = (clean + 0.08 * torch.randn(clean.shape, generator=generator)).clamp(0, 1)
    return clean, noisy


def test_ms_ssim_matches_an_independent_reference() -> None:
    clean, noisy = textured_pair(0)
    ours = ms_ssim(noisy, clean)
    for index in range(2):
        expected = reference_ms_ssim(noisy[index, 0].double().numpy(), clean[index, 0].double().numpy())
        assert ours[index].item() == pytest.approx(expected, abs=2e-5)


def test_single_scale_ms_ssim_is_kornia_ssim() -> None:
    clean, noisy = textured_pair(1)
    assert torch.allclose(ms_ssim(noisy, clean, weights=(1.0,)), 1 - ssim_loss(noisy, clean), atol=1e-6)


def test_ms_ssim_does_not_multiply_the_last_scale_into_every_factor() -> None:
    """The public GIFNet code computed prod_j(cs_j^w_j * ssim_M^w_M): a different, smaller number."""
    clean, noisy = textured_pair(2)
    x, y = noisy[0, 0].double().numpy(), clean[0, 0].double().numpy()
    correct = reference_ms_ssim(x, y)
    last_only = reference_ms_ssim(x, y, weights=(0.0,) * 4 + (MS_SSIM_WEIGHTS[-1],))  # ssim_M ** w_M
    defective = correct * last_only ** (len(MS_SSIM_WEIGHTS) - 2)  # last factor counted 4 times, not once
    assert ms_ssim(noisy, clean)[0].item() == pytest.approx(correct, abs=2e-5)
    assert abs(correct - defective) > 1e-3


def test_ms_ssim_loss_is_zero_for_identical_images_and_grows_with_noise() -> None:
    clean, noisy = textured_pair(3)
    assert torch.allclose(ms_ssim_loss(clean, clean), torch.zeros(2), atol=1e-6)
    noisier = (clean + 0.3 * torch.randn_like(clean)).clamp(0, 1)
    assert (ms_ssim_loss(noisier, clean) > ms_ssim_loss(noisy, clean)).all()


def test_ms_ssim_names_the_size_problem() -> None:
    with pytest.raises(ValueError, match="too small"):
        ms_ssim(torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 64))


def test_losses_are_per_sample() -> None:
    """Changing one sample of the batch changes only that sample's loss."""
    clean, noisy = textured_pair(4)
    changed = noisy.clone()
    changed[1] = torch.rand_like(changed[1])
    for loss in (
        lambda f: intensity_loss(f, [clean, noisy]),
        lambda f: gradient_loss(f, [clean, noisy]),
        lambda f: ssim_loss(f, clean),
        lambda f: ms_ssim_loss(f, clean),
    ):
        before, after = loss(noisy), loss(changed)
        assert before.shape == (2,)
        assert before[0] == after[0] and before[1] != after[1]


def test_intensity_loss_max_and_weighted_targets() -> None:
    a = torch.full((1, 1, 8, 8), 0.2)
    b = torch.full((1, 1, 8, 8), 0.6)
    fused = torch.full((1, 1, 8, 8), 0.6)
    assert intensity_loss(fused, [a, b]).item() == pytest.approx(0.0)  # the max is b
    weighted = intensity_loss(fused, [a, b], torch.tensor([[0.25, 0.75]]))
    assert weighted.item() == pytest.approx(0.25 * 0.4**2)  # weighted squared error
    per_pixel = torch.zeros(1, 2, 8, 8)
    per_pixel[:, 0, :, :4] = 1.0  # left half from a, right half from b
    per_pixel[:, 1, :, 4:] = 1.0
    assert intensity_loss(fused, [a, b], per_pixel).item() == pytest.approx(0.5 * 0.4**2)
    with pytest.raises(ValueError, match="weights must be"):
        intensity_loss(fused, [a, b], torch.ones(1, 3))


def test_gradient_loss_keeps_the_strongest_edge() -> None:
    edge_left = torch.zeros(1, 1, 16, 16)
    edge_left[..., 4:] = 1.0
    edge_right = torch.zeros(1, 1, 16, 16)
    edge_right[..., 12:] = 1.0
    bar = torch.zeros(1, 1, 16, 16)  # both edges at full strength
    bar[..., 4:12] = 1.0
    average = (edge_left + edge_right) / 2  # both edges at half strength
    assert gradient_loss(edge_left, [edge_left]).item() == pytest.approx(0.0, abs=1e-5)
    assert gradient_loss(bar, [edge_left, edge_right]).item() == pytest.approx(0.0, abs=1e-5)
    assert gradient_loss(average, [edge_left, edge_right]).item() > 0.01


def test_energy_weights_favour_the_source_with_more_structure() -> None:
    generator = torch.Generator().manual_seed(5)
    textured = torch.rand(3, 1, 64, 64, generator=generator)
    flat = kornia.filters.gaussian_blur2d(textured, (15, 15), (5.0, 5.0))
    weights = energy_weights(GradientEnergy()(textured), GradientEnergy()(flat))
    assert weights.shape == (3, 2)
    assert torch.allclose(weights.sum(dim=1), torch.ones(3))
    assert (weights[:, 0] > 0.8).all()
    assert torch.allclose(energy_weights(torch.zeros(2), torch.zeros(2)), torch.full((2, 2), 0.5))


def test_exposure_weights_prefer_mid_grey() -> None:
    dark = torch.full((1, 1, 4, 4), 0.05)
    good = torch.full((1, 1, 4, 4), 0.5)
    weights = exposure_weights([dark, good])
    assert weights.shape == (1, 2, 4, 4)
    assert (weights[:, 1] > 0.9).all()


def test_backbone_energy_loads_a_local_state_dict(tmp_path: Path) -> None:
    import torchvision.models as models

    path = tmp_path / "resnet18.pth"
    torch.save(models.resnet18(weights=None).state_dict(), path)
    energy = BackboneEnergy(path, "resnet18")
    values = energy(torch.rand(2, 1, 64, 64))
    assert values.shape == (2,) and torch.isfinite(values).all()
    backbone = energy.load_backbone()
    assert not backbone.training and not any(parameter.requires_grad for parameter in backbone.parameters())
    # outside the module tree: nothing for an optimiser, nothing in a checkpoint
    assert list(energy.parameters()) == [] and energy.state_dict() == {}
    energy.train()
    assert not backbone.training  # batch-norm statistics stay ImageNet's


def test_backbone_energy_fails_fast_with_instructions(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="state_dict"):
        BackboneEnergy(tmp_path / "missing.pth").load_backbone()
    wrong = tmp_path / "wrong.pth"
    torch.save({"weight": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match="resnet18"):
        BackboneEnergy(wrong, "resnet18").load_backbone()


def test_the_filters_equal_kornias() -> None:
    # written here so that no kernel is built from Python data per call (see the module docstring); same results
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(3, 2, 40, 48, generator=generator)
    target = (image + 0.2 * torch.rand(image.shape, generator=generator)).clamp(0, 1)
    torch.testing.assert_close(sobel_magnitude(image), kornia.filters.sobel(image))
    blurred = kornia.filters.gaussian_blur2d(image, (11, 11), (1.5, 1.5), border_type="reflect")
    torch.testing.assert_close(gaussian_blur(image, 11, 1.5), blurred)
    kornia_ssim = 1 - kornia.metrics.ssim(image, target, 11, max_val=1.0).flatten(1).mean(1)
    torch.testing.assert_close(ssim_loss(image, target), kornia_ssim)
    grey = image.mean(dim=1, keepdim=True)
    laplacian = kornia.filters.laplacian(grey, 3, border_type="reflect", normalized=False)
    expected = kornia.filters.box_blur(laplacian.square(), (7, 7), border_type="reflect")
    torch.testing.assert_close(focus_measure(image), expected, rtol=1e-4, atol=1e-5)
