"""The standard image-fusion metrics in batched torch, under the reference conventions.

Every number follows ``../shared/fusion-bench/README.md`` ("Reference metric conventions"), the
conventions of the Python evaluator that most fusion papers since 2022 copy, so values compare with
published tables; ``tests/test_metrics_published.py`` reproduces the shared
``published/expected_metrics.json`` with them. All metrics score grey levels 0..255: each image
is quantised to 8 bits, converted to grey with BT.601 and rounded (:func:`to_grey_levels`).

Where the published numbers depend on a quirk of the common evaluator, the quirk is reproduced and
commented where it is implemented: OpenCV's float grey conversion order, Qabf's ratio where the
gradient magnitudes are equal, Nabf's mirror padding, and SSIM's float32 arithmetic with
``data_range = 2``. VIF's local variances cancel catastrophically in flat regions, so its local
statistics are float64; steps whose reference runs in float32, or whose float32 rounding stays far
below 1e-6 relative, run in float32 with float64 sums. Batches run in memory-bounded chunks.

Two implementations of the costly parts (VIF, SSIM, Qabf, Nabf, the whole-image statistics), chosen
by ``backend`` (:data:`BACKENDS`): batched torch on any device (filters as banded matrix products,
:mod:`~lightning_modules.metrics.filters`: the fastest float64 filtering torch has), and on CPU the fused row-wise loops
of :mod:`~lightning_modules.metrics.kernels` (several times faster there). Tests hold both to the published values.

Public API:

* :data:`METRICS`, :data:`HIGHER_IS_BETTER`, :data:`NAN_REASONS`
* :func:`to_grey_levels` -- images to float64 grey levels
* :func:`compute_metrics` -- ``{name: (B,) float64}`` for a batch of fused images and their sources
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence

import numba
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules.schema import BT601
from lightning_modules.metrics import kernels as metric_kernels
from lightning_modules.metrics.filters import (
    BLOCK,
    SeparableFilter,
    block_sums,
    box_sums,
    column_blocks,
    filter_columns,
    sobel,
    to_image_layout,
    valid_length,
    zero_padded_border_sobel,
)

SOURCE_METRICS: tuple[str, ...] = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "Nabf", "SSIM", "CC", "PSNR")
"""The twelve metrics of published tables, in their usual column order."""

EXTRA_METRICS: tuple[str, ...] = ("SSIM_std", "MSE")
"""SSIM_std: the same SSIM with the correct data_range 255 (expected_metrics.json calls it SSIM255);
MSE: the mean of MSE(F, A) and MSE(F, B) that PSNR uses."""

TARGET_METRICS: tuple[str, ...] = ("PSNR_gt", "SSIM_gt")
"""Fidelity to a target image (supervised tasks): PSNR with peak 255 and SSIM_std's SSIM, one image."""

METRICS: tuple[str, ...] = SOURCE_METRICS + EXTRA_METRICS + TARGET_METRICS

HIGHER_IS_BETTER: dict[str, bool] = {name: name not in ("Nabf", "MSE") for name in METRICS}

NAN_REASONS: dict[str, str] = {
    "SF": "the image is narrower or shorter than 2 px",
    "AG": "the image is narrower or shorter than 2 px",
    "SCD": "a source is constant, or F minus a source is constant (e.g. F equals a source): "
    "the correlation is undefined",
    "CC": "F or a source is constant: the correlation is undefined",
    "PSNR": "F equals both sources (MSE 0) or F is all black (peak 0)",
    "VIF": "the image is smaller than 41 x 41 px, too small for VIF's 4 scales of 'valid' filtering",
    "Qabf": "neither source has any edge (no gradient anywhere), so there is nothing to preserve; "
    "or the image is narrower or shorter than 2 px",
    "Nabf": "the image is narrower or shorter than 2 px (mirrored padding needs 2)",
    "SSIM": "the image is smaller than SSIM's 7 x 7 window",
    "SSIM_std": "the image is smaller than SSIM's 7 x 7 window",
    "PSNR_gt": "F equals the target (MSE 0)",
    "SSIM_gt": "the image is smaller than SSIM's 7 x 7 window",
}
"""Why a metric can be NaN: where its definition is undefined. EN, SD, MI and MSE are always
defined; VIF counts a source whose score is undefined (a constant source) as 1, as the convention says."""

NEEDS_TARGET = frozenset(TARGET_METRICS)


def check_metric_names(names: Iterable[str]) -> list[str]:
    """``names`` as a list, or a ValueError that names the unknown ones and lists the known ones."""
    names = list(names)
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(map(repr, unknown))}; known metrics: {', '.join(METRICS)}")
    return names


# ----------------------------------------------------------------------------------- grey levels
_BT601_FLOAT32 = tuple(float(torch.tensor(w, dtype=torch.float32)) for w in BT601)


def _round_to_float32(x: Tensor) -> Tensor:
    return x.to(torch.float32).to(torch.float64)


def to_grey_levels(image: Tensor) -> Tensor:
    """Float64 grey levels 0..255 of a (B, C, H, W) batch, C = 1 (grey) or 3 (RGB).

    Integer tensors are taken as 8-bit levels; floating tensors as [0, 1] and quantised to 8 bits
    per channel (clamped, then rounded, as writing an 8-bit PNG does). RGB becomes grey with the
    BT.601 weights exactly as the common evaluator gets it from OpenCV (``cvtColor`` on float32 BGR):
    ``fma(R, 0.299, fma(B, 0.114, G * 0.587))`` in float32, then rounded half to even. In float64
    every product and sum below is exact, so rounding to float32 after each step reproduces those
    fused multiply-adds bit for bit (checked pixel for pixel against OpenCV on the fusion-bench
    sources; a plain float32 sum differs on about one pixel in 10^5).
    """
    if image.ndim != 4 or image.shape[1] not in (1, 3):
        raise ValueError(f"expected a (B, 1 or 3, H, W) image batch, got shape {tuple(image.shape)}")
    if image.is_floating_point():
        peak = float(image.amax()) if image.numel() else 0.0
        if peak > 1.5:
            # Model outputs may overshoot 1 a little; a peak this high means 0..255 levels were passed.
            raise ValueError(
                f"floating images must be in [0, 1], got values up to {peak:g}; pass uint8 levels or divide by 255"
            )
        levels = torch.round(image.to(torch.float64).clamp(0.0, 1.0) * 255.0)
    else:
        if image.dtype != torch.uint8 and image.numel() and (int(image.amin()) < 0 or int(image.amax()) > 255):
            raise ValueError(
                "integer images must hold 8-bit levels 0..255; convert 16-bit images to [0, 1] floats first"
            )
        levels = image.to(torch.float64)
    if levels.shape[1] == 1:
        return levels
    red, green, blue = levels.unbind(1)
    weight_red, weight_green, weight_blue = _BT601_FLOAT32
    grey = _round_to_float32(green * weight_green)
    grey = _round_to_float32(blue * weight_blue + grey)
    grey = _round_to_float32(red * weight_red + grey)
    return torch.round(grey).unsqueeze(1)


# ------------------------------------------------------------------------------ shared helpers
def _nan_where(condition: Tensor, values: Tensor) -> Tensor:
    return torch.where(condition, torch.full_like(values, math.nan), values)


def _entropy_nats(counts: Tensor, total: int) -> Tensor:
    """Shannon entropy (nats) of histograms ``counts`` (..., bins) that each sum to ``total``."""
    counts = counts.to(torch.float64)
    return math.log(total) - torch.special.xlogy(counts, counts).sum(-1) / total


class _Batch:
    """Grey levels of a batch, (3, B, H, W) in the order A, B, F, and the intermediate results that
    several metrics share, each computed once on first use."""

    def __init__(self, levels: Tensor, kernels: bool) -> None:
        self.levels = levels
        self.kernels = kernels  # the costly parts through metric_kernels (CPU only); see BACKENDS
        _, self.batch, self.height, self.width = levels.shape
        self.pixels = self.height * self.width
        self.device = levels.device
        self.a, self.b, self.f = levels.unbind(0)

    def nan(self) -> Tensor:
        return torch.full((self.batch,), math.nan, dtype=torch.float64, device=self.device)

    @functools.cached_property
    def levels32(self) -> Tensor:
        """float32 copy of :attr:`levels`: grey levels are exact in it, and it halves memory traffic."""
        return self.levels.to(torch.float32)

    @functools.cached_property
    def moments(self) -> tuple[Tensor, Tensor]:
        """(products, centred), (B, 3, 3) int64 over A, B, F.

        ``products[x, y]`` is the sum of x * y over the pixels and ``centred[x, y]`` is N times the
        sum of (x - mean x)(y - mean y), i.e. N * S_xy - S_x * S_y. Both are exact: the float64
        matrix product only sums integers below 2^53, and the int64 arithmetic is exact for images
        up to about 10^7 pixels. So degenerate cases (a constant image, F - B constant) give an
        exact 0 and a NaN correlation, never rounding noise.
        """
        if self.kernels:
            products, sums = self.kernel_statistics["products"], self.kernel_statistics["sums"]
        else:
            flat = self.levels.flatten(2).transpose(0, 1)  # (B, 3, N), a view
            products = torch.matmul(flat, flat.transpose(1, 2)).long()
            sums = flat.sum(-1).long()
        centred = self.pixels * products - sums[:, :, None] * sums[:, None, :]
        return products, centred

    @functools.cached_property
    def joint_histograms(self) -> Tensor:
        """(B, 2, 256, 256) counts of the (F, A) and (F, B) grey-level pairs."""
        if self.kernels:
            return self.kernel_statistics["histograms"]
        levels = self.levels.flatten(2).to(torch.int32)
        index = levels[2] * 256 + levels[:2]  # (2, B, N)
        index += torch.arange(2 * self.batch, device=self.device, dtype=torch.int32).view(2, self.batch, 1) * 65536
        counts = torch.bincount(index.flatten(), minlength=2 * self.batch * 65536)
        return counts.view(2, self.batch, 256, 256).transpose(0, 1)

    @functools.cached_property
    def fused_histogram(self) -> Tensor:
        """(B, 256) counts of F's grey levels (from the joint histograms when MI already built them)."""
        if self.kernels or "joint_histograms" in self.__dict__:
            return self.joint_histograms[:, 0].sum(-1)
        index = (
            self.f.flatten(1).to(torch.int32)
            + torch.arange(self.batch, device=self.device, dtype=torch.int32)[:, None] * 256
        )
        return torch.bincount(index.flatten(), minlength=self.batch * 256).view(self.batch, 256)

    @functools.cached_property
    def edges(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Sobel edges of A, B, F on a mirrored image (the edge pixel not repeated), (3, B, H, W) float32:
        (horizontal, vertical, magnitude, atan(vertical / horizontal)); the angle is NaN where both are 0."""
        horizontal, vertical = sobel(F.pad(self.levels32, (1, 1, 1, 1), mode="reflect"))
        return horizontal, vertical, _magnitude(horizontal, vertical), torch.atan(vertical / horizontal)

    @functools.cached_property
    def by_image(self) -> np.ndarray:
        """:attr:`levels` as a (B, 3, H, W) NumPy array (A, B, F per image), contiguous, for the kernels."""
        return np.ascontiguousarray(self.levels.transpose(0, 1).numpy())

    @functools.cached_property
    def by_image32(self) -> np.ndarray:
        """:attr:`by_image` in float32 (grey levels are exact in it)."""
        return self.levels.transpose(0, 1).to(torch.float32).contiguous().numpy()

    @functools.cached_property
    def kernel_statistics(self) -> dict[str, Tensor]:
        """``metric_kernels.image_statistics`` of each image, stacked: "histograms" (B, 2, 256, 256),
        "products" (B, 3, 3), "sums" (B, 3), "differences" (B, 2) int64 and "gradients" (B,) float64."""
        per_image = [metric_kernels.image_statistics(levels) for levels in self.by_image]
        names = ("histograms", "products", "sums", "differences", "gradients")
        return {
            name: torch.from_numpy(np.stack([np.asarray(values[k]) for values in per_image]))
            for k, name in enumerate(names)
        }

    @functools.cached_property
    def kernel_ssim_means(self) -> Tensor:
        """(B, 2 data ranges (2, 255)) SSIM(F, A) + SSIM(F, B) from ``metric_kernels.ssim_sums``."""
        sums = [
            metric_kernels.ssim_sums(levels[2], levels[:2], _SSIM_C1, _SSIM_C2).sum(0) for levels in self.by_image32
        ]
        cropped = (self.height - _SSIM_WINDOW + 1) * (self.width - _SSIM_WINDOW + 1)
        return torch.from_numpy(np.stack(sums) / cropped)

    @functools.cached_property
    def kernel_edge_sums(self) -> Tensor:
        """(B, 4) [Qabf numerator, Qabf denominator, Nabf lost, Nabf weights] from ``metric_kernels.edge_sums``."""
        return torch.from_numpy(np.stack([metric_kernels.edge_sums(levels) for levels in self.by_image32]))

    @functools.cached_property
    def ssim_terms(self) -> _SsimTerms:
        """SSIM of F against A and against B, up to the data range."""
        levels = self.levels32
        maps = levels.new_empty(8, self.batch, self.height, self.width)  # A, B, F, AA, BB, FF, AF, BF
        maps[:3] = levels
        torch.mul(levels, levels, out=maps[3:6])
        torch.mul(levels[:2], levels[2:], out=maps[6:8])
        return _SsimTerms(
            _uniform_means(maps), x=slice(2, 3), y=slice(0, 2), xx=slice(5, 6), yy=slice(3, 5), xy=slice(6, 8)
        )


# Rows and columns of _Batch.moments.
_A, _B, _F = range(3)


def _correlation(covariance: Tensor, variance_x: Tensor, variance_y: Tensor) -> Tensor:
    # Exact integer inputs: 0 / 0 gives NaN exactly where a signal is constant.
    return covariance.double() / torch.sqrt(variance_x.double() * variance_y.double())


# ------------------------------------------------------------------- no-reference and global ones
def _entropy(batch: _Batch) -> Tensor:
    return _entropy_nats(batch.fused_histogram, batch.pixels) / math.log(2.0)


def _standard_deviation(batch: _Batch) -> Tensor:
    _, centred = batch.moments
    return torch.sqrt(centred[:, _F, _F].double()) / batch.pixels


def _spatial_frequency(batch: _Batch) -> Tensor:
    if batch.height < 2 or batch.width < 2:
        return batch.nan()
    if batch.kernels:
        row_squares, column_squares = batch.kernel_statistics["differences"].double().unbind(1)
    else:
        f = batch.levels32[_F]  # integer differences; their squares are summed in float64
        row_squares = torch.linalg.vector_norm(torch.diff(f, dim=-1), dim=(-2, -1), dtype=torch.float64).square()
        column_squares = torch.linalg.vector_norm(torch.diff(f, dim=-2), dim=(-2, -1), dtype=torch.float64).square()
    return torch.sqrt(
        row_squares / (batch.height * (batch.width - 1)) + column_squares / ((batch.height - 1) * batch.width)
    )


def _twice_gradient(image: Tensor, dim: int) -> Tensor:
    """2 x numpy.gradient along ``dim``: central differences inside, doubled one-sided ones at the ends."""
    length = image.shape[dim]
    out = torch.empty_like(image)
    torch.sub(image.narrow(dim, 2, length - 2), image.narrow(dim, 0, length - 2), out=out.narrow(dim, 1, length - 2))
    for end, (high, low) in ((0, (1, 0)), (length - 1, (length - 1, length - 2))):
        out.narrow(dim, end, 1).copy_((image.narrow(dim, high, 1) - image.narrow(dim, low, 1)) * 2)
    return out


def _average_gradient(batch: _Batch) -> Tensor:
    if batch.height < 2 or batch.width < 2:
        return batch.nan()
    # sqrt((gx^2 + gy^2) / 2) = |2 g| / (2 sqrt 2), with 2 g integer-valued.
    if batch.kernels:
        mean_magnitude = batch.kernel_statistics["gradients"] / batch.pixels
    else:
        f = batch.levels32[_F]
        mean_magnitude = torch.hypot(_twice_gradient(f, -1), _twice_gradient(f, -2)).mean((-2, -1), dtype=torch.float64)
    return mean_magnitude / (2 * math.sqrt(2))


def _mutual_information(batch: _Batch) -> Tensor:
    joint = batch.joint_histograms
    n = batch.pixels
    fused = _entropy_nats(joint[:, 0].sum(-1), n)
    sources = _entropy_nats(joint.sum(-2), n)  # (B, 2): A, B
    # MI(F, S) = H(F) + H(S) - H(F, S): the same sum as sklearn's mutual_info_score over the joint table.
    return 2 * fused + sources.sum(-1) - _entropy_nats(joint.flatten(-2), n).sum(-1)


def _scd(batch: _Batch) -> Tensor:
    _, c = batch.moments
    variance_f_minus_b = c[:, _F, _F] - 2 * c[:, _F, _B] + c[:, _B, _B]
    variance_f_minus_a = c[:, _F, _F] - 2 * c[:, _F, _A] + c[:, _A, _A]
    return _correlation(c[:, _F, _A] - c[:, _B, _A], variance_f_minus_b, c[:, _A, _A]) + _correlation(
        c[:, _F, _B] - c[:, _A, _B], variance_f_minus_a, c[:, _B, _B]
    )


def _cc(batch: _Batch) -> Tensor:
    _, c = batch.moments
    return (
        _correlation(c[:, _A, _F], c[:, _A, _A], c[:, _F, _F]) + _correlation(c[:, _B, _F], c[:, _B, _B], c[:, _F, _F])
    ) / 2


def _mse(batch: _Batch) -> Tensor:
    s, _ = batch.moments
    squared_errors = 2 * s[:, _F, _F] - 2 * s[:, _F, _A] - 2 * s[:, _F, _B] + s[:, _A, _A] + s[:, _B, _B]
    return squared_errors.double() / (2 * batch.pixels)


def _psnr(batch: _Batch) -> Tensor:
    mse = _mse(batch)
    peak = batch.f.amax((-2, -1))
    # The convention's peak is max(F), not 255.
    return _nan_where((mse == 0) | (peak == 0), 10 * torch.log10(peak.square() / mse))


# ----------------------------------------------------------------------------------------- VIF
_VIF_SIGMA_NSQ = 2.0
_VIF_EPS = 1e-10
_VIF_SCALES = 4


def _vif_window_size(scale: int) -> int:
    return 2 ** (_VIF_SCALES - scale + 1) + 1  # 17, 9, 5, 3


def _vif_window(size: int, device: torch.device) -> Tensor:
    """1-D factor of the normalised Gaussian window of ``size`` taps, sigma = size / 5.

    The reference's 2-D window is the outer product of this factor with itself (its
    ``h < eps * h.max()`` clipping never fires at these sizes), so separable filtering is exact.
    """
    offsets = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    taps = torch.exp(-offsets.square() / (2 * (size / 5.0) ** 2))
    return taps / taps.sum()


def _vif_min_size() -> int:
    """Smallest side for which every VIF scale keeps at least one 'valid' pixel."""
    side = 1
    while True:
        length = side
        for scale in range(1, _VIF_SCALES + 1):
            size = _vif_window_size(scale)
            if scale > 1:
                length = -(-valid_length(length, size) // 2)
            if valid_length(length, size) < 1:
                break
        else:
            return side
        side += 1


VIF_MIN_SIZE = _vif_min_size()


def _float32_difference(x: Tensor, y: Tensor) -> Tensor:
    """x - y computed in their float64, rounded to float32 on writing (one pass)."""
    out = torch.empty(torch.broadcast_shapes(x.shape, y.shape), dtype=torch.float32, device=x.device)
    return torch.sub(x, y, out=out)


def _vif(batch: _Batch) -> Tensor:
    """Sheikh-Bovik pixel-domain VIF of F against A plus that against B (reference convention)."""
    if min(batch.height, batch.width) < VIF_MIN_SIZE:
        return batch.nan()
    if batch.kernels:
        information, reference_information = _vif_kernel_sums(batch)
    else:
        information, reference_information = _vif_torch_sums(batch)
    score = information / reference_information  # natural logs in both: the base cancels
    # A source with no variance anywhere gives 0 / 0; the convention counts its score as 1.
    return torch.nan_to_num(score, nan=1.0).sum(0)


def _vif_kernel_sums(batch: _Batch) -> tuple[Tensor, Tensor]:
    """(2, B) information sums of F about A and B, and the (2, B) reference sums, by ``metric_kernels``."""
    sums = np.zeros((batch.batch, 4))
    windows = [_vif_window(_vif_window_size(scale), batch.device).numpy() for scale in range(1, _VIF_SCALES + 1)]
    for index, images in enumerate(batch.by_image):  # (3, H, W): A, B, F
        for scale, taps in enumerate(windows, start=1):
            if scale > 1:
                images = metric_kernels.vif_downsample(images, taps)
            sums[index] += metric_kernels.vif_scale_sums(images[0], images[1], images[2], taps)
    sums = torch.from_numpy(sums).T
    return sums[:2], sums[2:]


def _vif_torch_sums(batch: _Batch) -> tuple[Tensor, Tensor]:
    """:func:`_vif_kernel_sums` in batched torch, on any device."""
    images = batch.levels  # (3, B, H, W): A, B, F
    information = torch.zeros(2, batch.batch, dtype=torch.float64, device=batch.device)
    reference_information = torch.zeros_like(information)
    for scale in range(1, _VIF_SCALES + 1):
        size = _vif_window_size(scale)
        taps = _vif_window(size, batch.device)
        if scale > 1:
            # Downsampling: filter with this scale's window ('valid'), keep every second pixel.
            height, width = images.shape[-2:]
            shrink = SeparableFilter(3 * batch.batch, height, width, size, 2, torch.float64, batch.device)
            shrink.inputs().copy_(images.flatten(0, 1))
            images = to_image_layout(shrink.run(taps), shrink.out_width).unflatten(0, (3, batch.batch))
        height, width = images.shape[-2:]
        local = SeparableFilter(8 * batch.batch, height, width, size, 1, torch.float64, batch.device)
        maps = local.inputs().unflatten(0, (8, batch.batch))  # A, B, F, AA, BB, FF, AF, BF
        maps[:3] = images
        torch.mul(images, images, out=maps[3:6])
        torch.mul(images[:2], images[2:], out=maps[6:8])
        moments = local.run(taps).unflatten(1, (8, batch.batch))  # (column blocks, 8, B, rows, BLOCK)
        moments[-1, ..., local.valid_columns() :] = 0.0  # garbage columns: no variance, no information
        mean_ref, mean_f = moments[:, :2], moments[:, 2:3]
        # The cancellation-prone differences in float64; what follows is well conditioned and runs
        # in float32 (per-pixel rounding of 1e-7, summed in float64).
        var_ref = _float32_difference(moments[:, 3:5], mean_ref.square()).relu_()
        var_f = _float32_difference(moments[:, 5:6], mean_f.square()).relu_()
        covariance = _float32_difference(moments[:, 6:8], mean_ref * mean_f)
        # The reference's masking sequence reduces to: the gain counts where both variances reach
        # eps and it is positive (else 0); a source variance below eps counts as 0.
        counts = (var_ref >= _VIF_EPS) & (var_f >= _VIF_EPS)
        gain = torch.where(counts, covariance / (var_ref + _VIF_EPS), 0.0).clamp_min_(0.0)
        noise_var = (var_f - gain * covariance).clamp_min_(_VIF_EPS).add_(_VIF_SIGMA_NSQ)
        information += torch.log1p(gain.square_().mul_(var_ref).div_(noise_var)).sum((0, 3, 4), dtype=torch.float64)
        # Source variances below eps add log(1 + < 5e-11) where the reference adds 0: < 1e-10 relative.
        reference_information += torch.log1p(var_ref.div_(_VIF_SIGMA_NSQ)).sum((0, 3, 4), dtype=torch.float64)
    return information, reference_information


# -------------------------------------------------------------------------------- Qabf and Nabf
def _magnitude(horizontal: Tensor, vertical: Tensor) -> Tensor:
    # sqrt of the exact integer sum of squares is correctly rounded, so equal sums give equal
    # magnitudes (hypot could differ by an ulp and break the equality tests that follow).
    return torch.sqrt(torch.addcmul(horizontal * horizontal, vertical, vertical))


def _qabf_orientation(horizontal: Tensor, angle: Tensor) -> Tensor:
    return torch.where(horizontal == 0, math.pi / 2, angle)


def _qabf_sums(magnitude: Tensor, orientation: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image sums of Q^{AF} g_A + Q^{BF} g_B and of g_A + g_B over (3, B, ...) maps of A, B, F."""
    g, g_f = magnitude[:2], magnitude[2:]
    strength = torch.minimum(g, g_f).div_(torch.maximum(g, g_f))
    # Quirk of the common implementation: where the magnitudes are equal the "ratio" is F's magnitude.
    strength = torch.where(g == g_f, g_f, strength)
    alignment = (orientation[:2] - orientation[2:]).abs_().mul_(-2 / math.pi).add_(1.0)
    # T / (1 + exp(k (x - D))) with k < 0 is T * sigmoid(|k| (x - D)); the T factors go last.
    kept = torch.sigmoid(strength.sub_(0.5).mul_(15)).mul_(torch.sigmoid(alignment.sub_(0.8).mul_(22)))
    dims = (0, *range(2, g.ndim))
    return kept.mul_(g).sum(dims, dtype=torch.float64) * (0.9994 * 0.9879), g.sum(dims, dtype=torch.float64)


def _qabf(batch: _Batch) -> Tensor:
    """Xydeas-Petrovic edge preservation Q^{AB/F} (reference convention, float32 as the reference)."""
    if batch.height < 2 or batch.width < 2:
        return batch.nan()
    if batch.kernels:
        sums = batch.kernel_edge_sums
        return sums[:, 0] * (0.9994 * 0.9879) / sums[:, 1]
    # The reference convolves on a zero-padded image: inside, that is the shared mirrored Sobel; the
    # one-pixel border is recomputed with zeros. True 2-D convolution negates both responses, which
    # changes neither the magnitude nor atan(Sy / Sx).
    horizontal, _, magnitude, angle = batch.edges
    inside = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    numerator, denominator = _qabf_sums(magnitude[inside], _qabf_orientation(horizontal[inside], angle[inside]))
    for strip_horizontal, strip_vertical in zero_padded_border_sobel(batch.levels32):
        strip_angle = torch.atan(strip_vertical / strip_horizontal)
        strip = _qabf_sums(
            _magnitude(strip_horizontal, strip_vertical), _qabf_orientation(strip_horizontal, strip_angle)
        )
        numerator, denominator = numerator + strip[0], denominator + strip[1]
    return numerator / denominator  # 0 / 0 = NaN: no source has an edge


def _nabf(batch: _Batch) -> Tensor:
    """Shreyamsha Kumar's modified fusion-artifact measure N_abf (lower is better)."""
    if batch.height < 2 or batch.width < 2:
        return batch.nan()
    if batch.kernels:
        sums = batch.kernel_edge_sums
        return sums[:, 2] / sums[:, 3]
    # Sobel / 8 by correlation on a mirrored image that leaves out the edge pixel, as the common
    # Python port does (repeating the edge pixel changes results by several %). Magnitudes stay
    # 8x here: the thresholds and weights below are scaled to match.
    _, _, magnitude, angle = batch.edges
    g, g_f = magnitude[:2], magnitude[2:]
    # Weights g^1.5 where g >= Td = 2 (16 in 8x units), else 0.001 (times 8^1.5 in 8x units).
    weights = torch.where(g >= 16, g * g.sqrt(), 0.001 * 8**1.5)
    # Orientation atan(Gv / Gh) with Gv = bottom - top = -vertical: all orientations are negated,
    # which leaves their differences unchanged. Gh = 0 gives +-pi/2 (x / 0 = +-inf); both 0 give 0.
    orientation = torch.nan_to_num(angle, nan=0.0)
    low, high = torch.minimum(g, g_f), torch.maximum(g, g_f)
    strength = torch.where(low == 0, 0.0, low / high)
    alignment = (orientation[:2] - orientation[2:]).abs_().sub_(math.pi / 2).abs_().mul_(2 / math.pi)
    kept = torch.sigmoid(strength.sub_(0.5).mul_(19)).mul_(torch.sigmoid(alignment.sub_(0.5).mul_(22)))
    kept = kept.mul_(0.9999 * 0.9995).sqrt_()
    # Artifacts: where F's gradient exceeds both sources'. (Gathering only those pixels first costs
    # more than it saves: boolean indexing is slow.)
    artifacts = (g_f[0] > g[0]) & (g_f[0] > g[1])
    lost = torch.where(artifacts, kept.neg_().add_(1.0).mul_(weights), 0.0)
    return lost.sum((0, 2, 3), dtype=torch.float64) / weights.sum((0, 2, 3), dtype=torch.float64)


# ----------------------------------------------------------------------------------------- SSIM
_SSIM_WINDOW = 7
_SSIM_COVARIANCE_NORM = _SSIM_WINDOW**2 / (_SSIM_WINDOW**2 - 1)  # sample covariance, 49 / 48
_SSIM_DATA_RANGES = (2.0, 255.0)  # SSIM's (the common evaluator's) and SSIM_std's
_SSIM_C1 = np.array([(0.01 * data_range) ** 2 for data_range in _SSIM_DATA_RANGES], dtype=np.float32)
_SSIM_C2 = np.array([(0.03 * data_range) ** 2 for data_range in _SSIM_DATA_RANGES], dtype=np.float32)


def _uniform_means(maps: Tensor) -> tuple[Tensor, int, int]:
    """scipy.ndimage.uniform_filter(size=7) of integer-valued float32 maps (K, B, H, W), cropped.

    scipy filters axis 0 (down the rows) first, then axis 1, each in double, storing float32 in
    between: SSIM's float32 rounding noise, which its published values depend on, comes from
    exactly these roundings. The row-window sums of integers are exact in float32, so dividing them
    there rounds as scipy does; the column pass sums 7 of those float32 values exactly in float64
    (a banded matrix product) and rounds to float32 as scipy does. The 3-pixel border that SSIM
    crops is exactly what 'valid' filtering leaves out.

    Returns (means, valid columns of the last block, pixels): means block-major (see
    :mod:`~lightning_modules.metrics.filters`), (column blocks, K, B, rows, BLOCK) float32.
    """
    sums = box_sums(maps, -2)
    count, batch, height, width = sums.shape
    blocks, padded_width = column_blocks(width, _SSIM_WINDOW)
    padded = sums.new_empty(count * batch * height, padded_width, dtype=torch.float64)
    padded[:, width:] = 0.0
    # Divides in float32 (as the inputs' dtype) and widens to float64 on writing: one pass.
    torch.div(sums, _SSIM_WINDOW, out=padded.view(count, batch, height, padded_width)[..., :width])
    # Sum with unit taps, then divide: exact sums divided once round as scipy does (1/7 taps would
    # round differently where the mean falls on a float32 tie).
    ones = torch.ones(_SSIM_WINDOW, dtype=torch.float64, device=maps.device)
    sums = filter_columns(padded, ones, 1, blocks)
    means = torch.empty(sums.shape, dtype=torch.float32, device=maps.device)
    torch.div(sums, _SSIM_WINDOW, out=means)  # divides in float64, rounds to float32 on writing
    means = means.view(blocks, count, batch, height, BLOCK)
    out_width = valid_length(width, _SSIM_WINDOW)
    return means, out_width - (blocks - 1) * BLOCK, height * out_width


class _SsimTerms:
    """scikit-image's SSIM of x (the fused image) against y, in its order of float32 operations,
    with the parts that do not depend on the data range computed once.

    Takes the block-major output of :func:`_uniform_means` and the indices of the local means of
    x, y (several: one per source), x*x, y*y and x*y in it.
    """

    def __init__(self, means: tuple[Tensor, int, int], x: slice, y: slice, xx: slice, yy: slice, xy: slice) -> None:
        values, self.valid_columns, self.pixels = means
        mean_x, mean_y, mean_xx, mean_yy, mean_xy = (values[:, index] for index in (x, y, xx, yy, xy))
        norm = _SSIM_COVARIANCE_NORM
        square_x, square_y = mean_x * mean_x, mean_y * mean_y
        variance_x = (mean_xx - square_x).mul_(norm)
        variance_y = (mean_yy - square_y).mul_(norm)
        covariance = (mean_xy - mean_x * mean_y).mul_(norm)
        self.mean_product = (2 * mean_x) * mean_y  # A1 = 2 * ux * uy + C1
        self.covariance = 2 * covariance  # A2 = 2 * vxy + C2
        self.squares = square_x + square_y  # B1 = ux**2 + uy**2 + C1
        self.variances = variance_x + variance_y  # B2 = vx + vy + C2

    def mean_ssim(self, data_range: float) -> Tensor:
        """(sources, B) mean SSIM over the cropped image."""
        c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
        numerator = (self.mean_product + c1).mul_(self.covariance + c2)
        denominator = (self.squares + c1).mul_(self.variances + c2)
        return block_sums(numerator.div_(denominator), self.valid_columns, ()) / self.pixels


def _ssim_pair_sum(batch: _Batch, data_range: float) -> Tensor:
    if min(batch.height, batch.width) < _SSIM_WINDOW:
        return batch.nan()
    if batch.kernels:
        return batch.kernel_ssim_means[:, _SSIM_DATA_RANGES.index(data_range)]
    return batch.ssim_terms.mean_ssim(data_range).sum(0)


def _ssim(batch: _Batch) -> Tensor:
    # The common evaluator's pinned scikit-image took the data range of float32 images, -1..1.
    return _ssim_pair_sum(batch, _SSIM_DATA_RANGES[0])


def _ssim_std(batch: _Batch) -> Tensor:
    return _ssim_pair_sum(batch, _SSIM_DATA_RANGES[1])


# ---------------------------------------------------------------------------------- target ones
def _psnr_target(fused: Tensor, target: Tensor) -> Tensor:
    mse = (fused - target).square().mean((-2, -1))
    return _nan_where(mse == 0, 10 * torch.log10(255.0**2 / mse))


def _ssim_target(fused: Tensor, target: Tensor) -> Tensor:
    if min(fused.shape[-2:]) < _SSIM_WINDOW:
        return torch.full(fused.shape[:1], math.nan, dtype=torch.float64, device=fused.device)
    f, t = fused.to(torch.float32), target.to(torch.float32)
    maps = torch.stack([f, t, f * f, t * t, f * t])
    terms = _SsimTerms(
        _uniform_means(maps), x=slice(0, 1), y=slice(1, 2), xx=slice(2, 3), yy=slice(3, 4), xy=slice(4, 5)
    )
    return terms.mean_ssim(255.0)[0]


def target_metrics(fused: Tensor, target: Tensor, names: Sequence[str]) -> dict[str, Tensor]:
    """PSNR_gt and SSIM_gt of (B, H, W) grey levels ``fused`` against ``target``."""
    functions = {"PSNR_gt": _psnr_target, "SSIM_gt": _ssim_target}
    return {name: functions[name](fused, target) for name in names}


_SOURCE_FUNCTIONS: dict[str, Callable[[_Batch], Tensor]] = {
    "EN": _entropy,
    "SD": _standard_deviation,
    "SF": _spatial_frequency,
    "AG": _average_gradient,
    "MI": _mutual_information,
    "SCD": _scd,
    "VIF": _vif,
    "Qabf": _qabf,
    "Nabf": _nabf,
    "SSIM": _ssim,
    "CC": _cc,
    "PSNR": _psnr,
    "SSIM_std": _ssim_std,
    "MSE": _mse,
}


def check_batch(**images: Tensor) -> None:
    shapes = {name: tuple(image.shape) for name, image in images.items()}
    for name, shape in shapes.items():
        if len(shape) != 4 or shape[1] not in (1, 3):
            raise ValueError(f"{name} must be a (B, 1 or 3, H, W) batch, got shape {shape}")
    reference_name, reference = next(iter(shapes.items()))
    for name, shape in shapes.items():
        if shape[0] != reference[0] or shape[2:] != reference[2:]:
            raise ValueError(
                f"{name} has shape {shape} but {reference_name} has {reference}: batch size, height and "
                "width must match"
            )


BACKENDS: tuple[str, ...] = ("auto", "torch", "kernels")
"""How :func:`compute_metrics` computes VIF, SSIM, Qabf, Nabf and the whole-image statistics (histograms,
moments, SF, AG): batched torch on any device, or the fused loops of :mod:`~lightning_modules.metrics.kernels`
(CPU only, several times faster there); "auto" takes the kernels for CPU tensors and torch otherwise. Both give
the same values to float rounding."""


def compute_metrics(
    fused: Tensor,
    a: Tensor,
    b: Tensor,
    names: Sequence[str] | None = None,
    gt: Tensor | None = None,
    backend: str = "auto",
) -> dict[str, Tensor]:
    """The metrics ``names`` (all of :data:`METRICS` by default) of each fused image.

    Args:
        fused, a, b: (B, 1 or 3, H, W) batches: floats in [0, 1] or 8-bit integer levels (see
            :func:`to_grey_levels`), on any device.
        names: metric names from :data:`METRICS`; by default all of them, the target metrics only
            when ``gt`` is given.
        gt: optional (B, 1 or 3, H, W) targets for PSNR_gt and SSIM_gt.
        backend: one of :data:`BACKENDS`.

    Returns:
        ``{name: (B,) float64 tensor}`` on the inputs' device, in the order of ``names``. A value is
        NaN where its definition is undefined for that image; :data:`NAN_REASONS` says when.
    """
    if names is None:
        names = [name for name in METRICS if gt is not None or name not in NEEDS_TARGET]
    names = check_metric_names(names)
    needs_target = [name for name in names if name in NEEDS_TARGET]
    if needs_target and gt is None:
        raise ValueError(f"{', '.join(needs_target)} need a target image: pass gt=")
    check_batch(fused=fused, a=a, b=b, **({"gt": gt} if gt is not None else {}))
    if backend not in BACKENDS:
        raise ValueError(f"unknown metrics backend {backend!r}; choose from {', '.join(BACKENDS)}")
    kernels = backend == "kernels" or (backend == "auto" and fused.device.type == "cpu")
    if kernels:
        if fused.device.type != "cpu":
            raise ValueError(
                f"the 'kernels' metrics backend runs on CPU tensors only, got {fused.device}; use backend='torch'"
            )
        # as many kernel threads as torch uses, so --threads / torch.set_num_threads governs both
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    chunk = _chunk_size(fused)
    parts: list[dict[str, Tensor]] = []
    # Metrics are never differentiated, and their float32 steps must not run in bf16/fp16 when a
    # validation loop calls them inside autocast.
    with torch.no_grad(), torch.autocast(fused.device.type, enabled=False):
        for start in range(0, fused.shape[0], chunk):
            part = slice(start, start + chunk)
            batch = _Batch(_stacked_grey_levels([image[part] for image in (a, b, fused)], by_image=kernels), kernels)
            results = {name: _SOURCE_FUNCTIONS[name](batch) for name in names if name not in NEEDS_TARGET}
            if needs_target:
                results.update(target_metrics(batch.f, to_grey_levels(gt[part])[:, 0], needs_target))
            parts.append(results)
    return {name: torch.cat([results[name] for results in parts]) for name in names}


def _stacked_grey_levels(images: Sequence[Tensor], by_image: bool = False) -> Tensor:
    """(len(images), B, H, W) float64 grey levels; 8-bit grey images are stacked first (one conversion).

    With ``by_image`` the memory is laid out (B, len(images), H, W) and a transposed view is
    returned, so that each image's maps are contiguous for :mod:`~lightning_modules.metrics.kernels` (no copies there).
    """
    dim = 1 if by_image else 0
    if all(image.dtype == torch.uint8 and image.shape[1] == 1 for image in images):
        levels = torch.stack([image[:, 0] for image in images], dim=dim).to(torch.float64)
    else:
        levels = torch.stack([to_grey_levels(image)[:, 0] for image in images], dim=dim)
    return levels.transpose(0, 1) if by_image else levels


_CHUNK_PIXELS = {"cpu": 1 << 19, "cuda": 1 << 24}
"""Pixels per image chunk: VIF and SSIM hold about 20 float64 maps per image, so a CPU chunk of
about two 640 x 480 images stays in memory the allocator reuses instead of faulting in fresh pages
(a batch of 16 at once ran 5x slower per image); a GPU has the memory to take large batches."""


def _chunk_size(images: Tensor) -> int:
    pixels = max(1, images.shape[-2] * images.shape[-1])
    return max(1, _CHUNK_PIXELS.get(images.device.type, _CHUNK_PIXELS["cuda"]) // pixels)
