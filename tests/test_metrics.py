"""The metric suite, both backends (batched torch and the CPU kernels), against the independent
NumPy/SciPy reference and each other; grey conversion, bad and degenerate inputs."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import uniform_filter

from lightning_modules.metrics import (
    EXTRA_METRICS,
    HIGHER_IS_BETTER,
    METRICS,
    NAN_REASONS,
    SOURCE_METRICS,
    TARGET_METRICS,
    VIF_MIN_SIZE,
    compute_metrics,
    to_grey_levels,
)
from lightning_modules.metrics import reference as metrics_reference

from conftest import PROJECT_ROOT

BACKENDS = ["kernels", "torch"]

PAIR_METRICS = list(SOURCE_METRICS) + list(EXTRA_METRICS)


@pytest.fixture(scope="module")
def reference():
    """bench/metrics_speed.py: the straightforward NumPy/SciPy implementation of the conventions."""
    spec = importlib.util.spec_from_file_location("metrics_speed", PROJECT_ROOT / "bench" / "metrics_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def smooth_image(rng: np.random.Generator, height: int, width: int, saturate: bool = False) -> np.ndarray:
    """A smooth random uint8 image; with ``saturate``, large flat regions at 0 and 255 (VIF's hard case)."""
    image = uniform_filter(rng.random((height, width)), 7) * 255
    image = (image - image.mean()) * 6 + 128 if saturate else image
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def as_batch(*images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(images))[:, None]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("height", "width", "saturate"), [(50, 64, False), (61, 47, True), (45, 45, True)])
def test_matches_the_numpy_reference(reference, height, width, saturate, backend):
    rng = np.random.default_rng(height)
    f, a, b = (smooth_image(rng, height, width, saturate) for _ in range(3))
    values = compute_metrics(as_batch(f), as_batch(a), as_batch(b), PAIR_METRICS, backend=backend)
    for name in PAIR_METRICS:
        expected = reference.REFERENCE[name](*(image.astype(np.float64) for image in (f, a, b)))
        assert float(values[name][0]) == pytest.approx(expected, rel=1e-6, abs=1e-12), name


@pytest.mark.parametrize("chunk_pixels", [None, 1])
def test_a_batch_equals_its_images_one_by_one(monkeypatch, chunk_pixels):
    if chunk_pixels is not None:  # one image per chunk
        monkeypatch.setitem(metrics_reference._CHUNK_PIXELS, "cpu", chunk_pixels)
    rng = np.random.default_rng(1)
    images = [[smooth_image(rng, 48, 56, saturate=i == 1) for _ in range(3)] for i in range(3)]
    batched = compute_metrics(*(as_batch(*column) for column in zip(*images)), PAIR_METRICS)
    for index, (f, a, b) in enumerate(images):
        single = compute_metrics(as_batch(f), as_batch(a), as_batch(b), PAIR_METRICS)
        for name in PAIR_METRICS:
            # float32 steps may take vectorised or scalar code paths depending on the shape: ~1e-9
            assert float(batched[name][index]) == pytest.approx(float(single[name][0]), rel=1e-8, abs=1e-12), name


def test_the_backends_agree_on_colour_batches_of_odd_sizes():
    """The kernels (row-parallel loops, their own border handling) and batched torch on the same
    RGB and grey inputs, sizes that are not multiples of anything, flat and textured regions."""
    rng = np.random.default_rng(7)
    for height, width in ((41, 43), (97, 130), (2, 9)):
        colour = [np.stack([smooth_image(rng, height, width, saturate=c == 0) for c in range(3)]) for _ in range(4)]
        fused = torch.from_numpy(np.stack(colour[:2]))  # (2, 3, H, W) uint8 RGB
        a = torch.from_numpy(np.stack(colour[2:]))
        b = torch.from_numpy(np.stack([smooth_image(rng, height, width) for _ in range(2)]))[:, None]
        kernels = compute_metrics(fused, a, b, PAIR_METRICS, backend="kernels")
        plain = compute_metrics(fused, a, b, PAIR_METRICS, backend="torch")
        for name in PAIR_METRICS:
            assert torch.allclose(kernels[name], plain[name], rtol=1e-6, atol=1e-12, equal_nan=True), (
                height,
                width,
                name,
            )


def test_grey_conversion_matches_opencv_on_float32_bgr(reference):
    rgb = np.random.default_rng(2).integers(0, 256, (64, 80, 3)).astype(np.uint8)
    grey = to_grey_levels(torch.from_numpy(rgb).permute(2, 0, 1)[None])
    assert grey.dtype == torch.float64 and grey.shape == (1, 1, 64, 80)
    np.testing.assert_array_equal(grey[0, 0].numpy(), reference.reference_grey(rgb))


def test_float_images_are_quantised_to_8_bits():
    levels = torch.randint(0, 256, (2, 3, 9, 11), dtype=torch.uint8)
    as_float = levels.float() / 255
    torch.testing.assert_close(to_grey_levels(as_float), to_grey_levels(levels), rtol=0, atol=0)
    assert to_grey_levels(torch.full((1, 1, 2, 2), 1.2))[0, 0, 0, 0] == 255  # overshoot is clamped


def test_bad_inputs_get_clear_errors():
    image = torch.zeros(1, 1, 48, 48)
    with pytest.raises(ValueError, match="divide by 255"):
        compute_metrics(image + 200, image, image)
    with pytest.raises(ValueError, match=r"a has shape \(1, 1, 48, 40\) but fused has \(1, 1, 48, 48\)"):
        compute_metrics(image, torch.zeros(1, 1, 48, 40), image)
    with pytest.raises(ValueError, match="known metrics: EN, SD"):
        compute_metrics(image, image, image, ["EN", "PSNRR"])
    with pytest.raises(ValueError, match="need a target image"):
        compute_metrics(image, image, image, ["PSNR_gt"])
    with pytest.raises(ValueError, match="unknown metrics backend 'numba'; choose from auto, torch, kernels"):
        compute_metrics(image, image, image, backend="numba")
    with pytest.raises(ValueError, match="8-bit levels"):
        to_grey_levels(torch.full((1, 1, 2, 2), 300, dtype=torch.int16))
    with pytest.raises(ValueError, match=r"\(B, 1 or 3, H, W\)"):
        to_grey_levels(torch.zeros(1, 2, 4, 4))


def _check_nan_reasons(values: dict[str, torch.Tensor]) -> None:
    for name, value in values.items():
        assert value.dtype == torch.float64
        for item in value.tolist():
            assert not math.isinf(item), name
            if math.isnan(item):
                assert name in NAN_REASONS, f"{name} is NaN without a documented reason"


@pytest.mark.parametrize("backend", BACKENDS)
def test_degenerate_inputs_give_nan_with_a_reason_never_a_crash(backend):
    rng = np.random.default_rng(3)
    textured = smooth_image(rng, 48, 48)
    constant = np.full((48, 48), 90, np.uint8)
    black = np.zeros((48, 48), np.uint8)
    cases = {
        "all constant": (constant, constant, constant),
        "F equals B": (textured, smooth_image(rng, 48, 48), textured),
        "black sources": (textured, black, black),
        "black fused": (black, textured, constant),
    }
    for case, (f, a, b) in cases.items():
        values = compute_metrics(as_batch(f), as_batch(a), as_batch(b), PAIR_METRICS, backend=backend)
        _check_nan_reasons(values)
        if case == "all constant":
            for name in ("SCD", "CC", "PSNR"):
                assert math.isnan(values[name].item()), (case, name)
            assert values["VIF"].item() == 2.0  # each constant source's undefined score counts as 1
            assert values["SD"].item() == 0 and values["Nabf"].item() == 0 and values["MI"].item() == 0
        if case == "F equals B":
            assert math.isnan(values["SCD"].item()) and not math.isnan(values["CC"].item())
        if case == "black sources":
            assert math.isnan(values["Qabf"].item())
        if case == "black fused":
            assert math.isnan(values["PSNR"].item()) and math.isnan(values["CC"].item())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", [1, 2, 5, VIF_MIN_SIZE - 1, VIF_MIN_SIZE])
def test_tiny_images_give_nan_where_a_window_does_not_fit(size, backend):
    image = torch.randint(0, 256, (1, 1, size, size), dtype=torch.uint8)
    values = compute_metrics(image, image.flip(-1), image.flip(-2), gt=image, backend=backend)
    _check_nan_reasons(values)
    assert math.isnan(values["VIF"].item()) == (size < VIF_MIN_SIZE)
    assert math.isnan(values["SSIM"].item()) == (size < 7)
    assert math.isnan(values["SF"].item()) == (size < 2)
    assert not math.isnan(values["EN"].item()) and not math.isnan(values["MI"].item())


def test_target_metrics():
    target = torch.from_numpy(smooth_image(np.random.default_rng(4), 40, 44))[None, None]
    brighter = target.clamp(max=254) + 1
    values = compute_metrics(brighter, target, target, ["PSNR_gt", "SSIM_gt"], gt=target)
    mse = (brighter.double() - target.double()).square().mean()
    assert values["PSNR_gt"].item() == pytest.approx(10 * math.log10(255**2 / mse.item()))
    identical = compute_metrics(target, target, target, ["PSNR_gt", "SSIM_gt"], gt=target)
    assert math.isnan(identical["PSNR_gt"].item())
    assert identical["SSIM_gt"].item() == pytest.approx(1.0, abs=1e-6)
    everything = compute_metrics(target, target, target, gt=target)
    assert list(everything) == list(METRICS)


def test_metric_tables_are_consistent():
    assert len(set(METRICS)) == len(METRICS)
    assert set(HIGHER_IS_BETTER) == set(METRICS) and not HIGHER_IS_BETTER["Nabf"] and HIGHER_IS_BETTER["VIF"]
    assert set(NAN_REASONS) <= set(METRICS)
    assert set(TARGET_METRICS) <= set(METRICS)
    image = torch.zeros(1, 1, 48, 48, dtype=torch.uint8)
    assert list(compute_metrics(image, image, image)) == PAIR_METRICS


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_matches_cpu():
    rng = np.random.default_rng(5)
    f, a, b = (as_batch(smooth_image(rng, 64, 72, saturate=True)) for _ in range(3))
    cpu = compute_metrics(f, a, b, gt=a)
    gpu = compute_metrics(f.cuda(), a.cuda(), b.cuda(), gt=a.cuda())
    for name in METRICS:
        assert gpu[name].device.type == "cuda"
        torch.testing.assert_close(gpu[name].cpu(), cpu[name], rtol=1e-6, atol=1e-9, equal_nan=True, msg=name)
