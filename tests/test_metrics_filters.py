"""The banded-matrix filters behind VIF and SSIM against scipy, for any size, stride and map count."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import correlate1d

from lightning_modules.metrics.filters import (
    SeparableFilter,
    block_sums,
    box_sums,
    sobel,
    to_image_layout,
    valid_length,
    zero_padded_border_sobel,
)


def scipy_valid(images: np.ndarray, taps: np.ndarray, stride: int) -> np.ndarray:
    """Separable 'valid' correlation keeping every ``stride``-th output, with scipy."""
    half = len(taps) // 2
    out = correlate1d(correlate1d(images, taps, axis=-2, mode="constant"), taps, axis=-1, mode="constant")
    height, width = images.shape[-2:]
    return out[..., half : height - half : stride, half : width - half : stride]


@pytest.mark.parametrize(
    ("count", "height", "width", "size", "stride"),
    [(3, 40, 37, 17, 1), (5, 33, 71, 9, 2), (2, 5, 3, 3, 1), (1, 18, 18, 17, 1), (4, 30, 29, 5, 2)],
)
def test_separable_filter_matches_scipy(count, height, width, size, stride):
    rng = np.random.default_rng(size + stride)
    images = rng.integers(0, 256, (count, height, width)).astype(np.float64)
    taps = rng.random(size)
    bank = SeparableFilter(count, height, width, size, stride, torch.float64, torch.device("cpu"))
    bank.inputs().copy_(torch.from_numpy(images))
    blocks = bank.run(torch.from_numpy(taps))
    assert bank.out_height == valid_length(height, size, stride) and bank.out_width == valid_length(width, size, stride)
    got = to_image_layout(blocks, bank.out_width).numpy()
    np.testing.assert_allclose(got, scipy_valid(images, taps, stride), rtol=1e-13, atol=1e-9)
    sums = block_sums(blocks, bank.valid_columns(), ())  # leaves the garbage columns out
    np.testing.assert_allclose(sums.numpy(), got.sum(axis=(-2, -1)), rtol=1e-12)


def test_box_sums_are_exact_window_sums():
    x = torch.randint(0, 65026, (2, 20, 11), dtype=torch.int64).float()
    expected = sum(x[:, k : k + 14] for k in range(7))
    torch.testing.assert_close(box_sums(x, -2), expected, rtol=0, atol=0)


def test_zero_padded_border_sobel_matches_a_full_zero_padded_pass():
    images = torch.randint(0, 256, (2, 1, 9, 12)).float()
    full_horizontal, full_vertical = sobel(torch.nn.functional.pad(images, (1, 1, 1, 1)))
    mirrored_horizontal, _ = sobel(torch.nn.functional.pad(images, (1, 1, 1, 1), mode="reflect"))
    # inside, mirrored and zero padding agree; the border strips supply the rest
    torch.testing.assert_close(mirrored_horizontal[..., 1:-1, 1:-1], full_horizontal[..., 1:-1, 1:-1])
    strips = zero_padded_border_sobel(images)
    regions = [
        (slice(0, 1), slice(None)),
        (slice(-1, None), slice(None)),
        (slice(1, -1), slice(0, 1)),
        (slice(1, -1), slice(-1, None)),
    ]
    for (horizontal, vertical), (rows, columns) in zip(strips, regions):
        torch.testing.assert_close(horizontal, full_horizontal[..., rows, columns])
        torch.testing.assert_close(vertical, full_vertical[..., rows, columns])
