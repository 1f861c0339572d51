"""Fused CPU loops for the costly fusion metrics (VIF, both SSIMs, Qabf and Nabf), compiled by numba.

Why a second implementation next to the torch one in ``metrics.py``: on CPU the torch suite is
about 300 full passes over 640 x 480 maps (every op reads and writes whole maps), so it is bound
by memory traffic, not arithmetic. These loops walk the image row by row and keep the local
statistics in row buffers that stay in cache, so each image is read a few times in all. They
follow the same conventions, in the same arithmetic (float64 for VIF, the float32 rounding
sequence of the reference for SSIM, float32 for the edge metrics), and
``tests/test_metrics_published.py`` checks both implementations against the published values.

Rows are split between numba's threads (``prange``); every kernel returns per-image sums and the
callers in ``metrics.py`` finish the formulas. Inputs are C-contiguous (H, W) NumPy arrays of
grey levels; numba compiles each kernel on first use and caches it on disk (``NUMBA_CACHE_DIR``).
"""

from __future__ import annotations

import math

import numba
import numpy as np

ROWS_PER_TASK = 16
"""Output rows per parallel task: enough to amortise a task's buffers, small enough to balance
a 640 x 480 image over a few threads."""

# ----------------------------------------------------------------------------------------- VIF
_VIF_EPS = 1e-10
_VIF_SIGMA_NSQ = 2.0
_VIF_FASTMATH = {"contract", "reassoc", "arcp"}
"""VIF is float64 throughout, far more precise than the 1e-7 its published values are checked to, so
its loops may fuse multiply-adds, reorder sums and multiply by reciprocals (it vectorises them)."""
_LOG_EVERY = 32
"""Pixels whose (1 + t) terms are multiplied before one log: each term is at most ~8200 (the
variance of 8-bit levels is at most 127.5^2), so 32 of them stay far below float64's range, and
one log per 32 pixels replaces 32 (log1p was most of VIF's time)."""


@numba.njit(parallel=True, error_model="numpy", cache=True, fastmath=_VIF_FASTMATH)
def vif_downsample(images: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """'Valid' separable filtering of (N, H, W) maps with ``taps``, keeping every second row and
    column: VIF's next scale."""
    count, height, width = images.shape
    size = taps.shape[0]
    out_height, out_width = (height - size) // 2 + 1, (width - size) // 2 + 1
    out = np.empty((count, out_height, out_width))
    tasks = (out_height + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    for task in numba.prange(count * tasks):
        image, first = images[task // tasks], (task % tasks) * ROWS_PER_TASK
        column = np.empty(width)
        for i in range(first, min(out_height, first + ROWS_PER_TASK)):
            column[:] = 0.0
            for k in range(size):
                weight, row = taps[k], image[2 * i + k]
                for j in range(width):
                    column[j] += weight * row[j]
            for j in range(out_width):
                total = 0.0
                for k in range(size):
                    total += taps[k] * column[2 * j + k]
                out[task // tasks, i, j] = total
    return out


@numba.njit(parallel=True, error_model="numpy", cache=True)
def vif_scale_sums(a: np.ndarray, b: np.ndarray, f: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """One VIF scale of F against A and B: [information A, information B, reference A, reference B].

    Natural-log sums of the reference's ``1 + g^2 sigma1^2 / (sv^2 + sigma_nsq)`` and
    ``1 + sigma1^2 / sigma_nsq`` over the 'valid' pixels, with its masking sequence, all in float64.
    ``taps`` must be symmetric (VIF's Gaussian windows are, to the bit): the filters use it.
    """
    size = taps.shape[0]
    height = a.shape[0]
    out_height = height - size + 1
    tasks = (out_height + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    partial = np.zeros((tasks, 4))
    for task in numba.prange(tasks):
        partial[task] = _vif_rows(a, b, f, taps, task * ROWS_PER_TASK, min(out_height, (task + 1) * ROWS_PER_TASK))
    return partial.sum(axis=0)


@numba.njit(error_model="numpy", cache=True, fastmath=_VIF_FASTMATH)
def _vif_rows(a: np.ndarray, b: np.ndarray, f: np.ndarray, taps: np.ndarray, first: int, last: int) -> np.ndarray:
    """:func:`vif_scale_sums` over output rows [first, last).

    The 8 maps (a, b, f and the products a a, b b, f f, a f, b f) of the last ``size`` image rows
    live in a ring buffer, each product row computed once; each output row is a vertical weighted
    sum of the ring's rows, then a horizontal one (the local moments), then the per-pixel terms.
    Inner loops run along j over 1-D rows so that they vectorise.
    """
    size = taps.shape[0]
    width = a.shape[1]
    out_width = width - size + 1
    ring = np.empty((size, 8, width))
    columns = np.empty((8, width))
    moments = np.empty((8, out_width))
    terms = np.empty((4, out_width))
    sums = np.zeros(4)
    for row in range(first, first + size - 1):
        _product_rows(ring[row % size], a[row], b[row], f[row])
    for i in range(first, last):
        _product_rows(ring[(i + size - 1) % size], a[i + size - 1], b[i + size - 1], f[i + size - 1])
        for m in range(8):
            _weighted_rows(columns[m], ring, m, i, taps)
            _weighted_shifts(moments[m], columns[m], taps)
        for source in range(2):
            _vif_terms(
                moments[source],
                moments[2],
                moments[3 + source],
                moments[5],
                moments[6 + source],
                terms[source],
                terms[2 + source],
            )
        for m in range(4):
            for start in range(0, out_width, _LOG_EVERY):
                product = 1.0
                for j in range(start, min(start + _LOG_EVERY, out_width)):
                    product *= terms[m, j]
                sums[m] += math.log(product)
    return sums


@numba.njit(error_model="numpy", cache=True, fastmath=_VIF_FASTMATH)
def _product_rows(out: np.ndarray, a: np.ndarray, b: np.ndarray, f: np.ndarray) -> None:
    """out[0..7] = a, b, f, a a, b b, f f, a f, b f for one image row."""
    out[0] = a
    out[1] = b
    out[2] = f
    for j in range(a.shape[0]):
        out[3, j] = a[j] * a[j]
        out[4, j] = b[j] * b[j]
        out[5, j] = f[j] * f[j]
        out[6, j] = a[j] * f[j]
        out[7, j] = b[j] * f[j]


@numba.njit(error_model="numpy", cache=True, fastmath=_VIF_FASTMATH)
def _weighted_rows(out: np.ndarray, ring: np.ndarray, m: int, top: int, taps: np.ndarray) -> None:
    """out = sum over k of taps[k] * map m of image row top + k (held in the ring), for symmetric
    ``taps``: two mirrored pairs of rows per pass, one multiply per pair."""
    size = taps.shape[0]
    middle = size // 2
    weight, centre = taps[middle], ring[(top + middle) % size, m]
    for j in range(out.shape[0]):
        out[j] = weight * centre[j]
    for k in range(0, middle, 2):
        second = min(k + 1, middle - 1)
        w0, w1 = taps[k], taps[second] if k + 1 < middle else 0.0
        r0, m0 = ring[(top + k) % size, m], ring[(top + size - 1 - k) % size, m]
        r1, m1 = ring[(top + second) % size, m], ring[(top + size - 1 - second) % size, m]
        for j in range(out.shape[0]):
            out[j] += w0 * (r0[j] + m0[j]) + w1 * (r1[j] + m1[j])


@numba.njit(error_model="numpy", cache=True, fastmath=_VIF_FASTMATH)
def _weighted_shifts(out: np.ndarray, row: np.ndarray, taps: np.ndarray) -> None:
    """out[j] = sum over k of taps[k] * row[j + k] ('valid') for symmetric ``taps`` (VIF's Gaussian
    windows are symmetric to the bit): two mirrored pairs of taps per pass, one multiply per pair."""
    size = taps.shape[0]
    middle = size // 2
    weight, centre = taps[middle], row[middle:]
    for j in range(out.shape[0]):
        out[j] = weight * centre[j]
    for k in range(0, middle, 2):
        # shifted views: indices that are plain loop counters keep the loop vectorisable
        second = min(k + 1, middle - 1)
        w0, w1 = taps[k], taps[second] if k + 1 < middle else 0.0
        l0, r0, l1, r1 = row[k:], row[size - 1 - k :], row[second:], row[size - 1 - second :]
        for j in range(out.shape[0]):
            out[j] += w0 * (l0[j] + r0[j]) + w1 * (l1[j] + r1[j])


@numba.njit(error_model="numpy", cache=True, fastmath=_VIF_FASTMATH)
def _vif_terms(
    mean_ref: np.ndarray,
    mean_f: np.ndarray,
    mean_ref_sq: np.ndarray,
    mean_f_sq: np.ndarray,
    mean_cross: np.ndarray,
    information: np.ndarray,
    reference: np.ndarray,
) -> None:
    """Per pixel of a row: the reference's (1 + g^2 sigma1^2 / (sv^2 + sigma_nsq)) and (1 + sigma1^2 / sigma_nsq)
    from the local moments, with its masking sequence in its order."""
    for j in range(information.shape[0]):
        variance_f = max(mean_f_sq[j] - mean_f[j] * mean_f[j], 0.0)
        variance_ref = max(mean_ref_sq[j] - mean_ref[j] * mean_ref[j], 0.0)
        covariance = mean_cross[j] - mean_ref[j] * mean_f[j]
        gain = covariance / (variance_ref + _VIF_EPS)
        noise = variance_f - gain * covariance
        flat_ref = variance_ref < _VIF_EPS
        gain = 0.0 if flat_ref else gain
        noise = variance_f if flat_ref else noise
        variance_ref = 0.0 if flat_ref else variance_ref
        flat_f = variance_f < _VIF_EPS
        gain = 0.0 if flat_f else gain
        noise = 0.0 if flat_f else noise
        negative = gain < 0.0
        noise = variance_f if negative else noise
        gain = 0.0 if negative else gain
        noise = _VIF_EPS if noise <= _VIF_EPS else noise
        information[j] = 1.0 + gain * gain * variance_ref / (noise + _VIF_SIGMA_NSQ)
        reference[j] = 1.0 + variance_ref / _VIF_SIGMA_NSQ


# ----------------------------------------------------------------------------------------- SSIM
_WINDOW = 7
_WINDOW32 = np.float32(_WINDOW)
_COVARIANCE_NORM32 = np.float32(_WINDOW**2 / (_WINDOW**2 - 1))
_TWO32 = np.float32(2.0)


@numba.njit(parallel=True, error_model="numpy", cache=True)
def ssim_sums(x: np.ndarray, ys: np.ndarray, c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """Sums over the cropped image of scikit-image's SSIM map of ``x`` against each of ``ys``.

    ``x`` (H, W) and ``ys`` (K, H, W) are float32 grey levels (H, W >= 7); ``c1``, ``c2`` (R,)
    float32 hold the constants of R data ranges. Returns (K, R) float64 sums; the caller divides
    by the pixel count. The local means replay scipy's ``uniform_filter`` rounding exactly as
    ``metrics._uniform_means`` describes, and the SSIM formula runs in float32 in scikit-image's
    order of operations (no fast-math here: the float32 roundings are the point).
    """
    out_height = x.shape[0] - _WINDOW + 1
    tasks = (out_height + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    partial = np.zeros((tasks, ys.shape[0], c1.shape[0]))
    for task in numba.prange(tasks):
        partial[task] = _ssim_rows(x, ys, c1, c2, task * ROWS_PER_TASK, min(out_height, (task + 1) * ROWS_PER_TASK))
    return partial.sum(axis=0)


@numba.njit(error_model="numpy", cache=True)
def _ssim_rows(x: np.ndarray, ys: np.ndarray, c1: np.ndarray, c2: np.ndarray, first: int, last: int) -> np.ndarray:
    """:func:`ssim_sums` over output rows [first, last)."""
    sources, ranges = ys.shape[0], c1.shape[0]
    width = x.shape[1]
    out_width = width - _WINDOW + 1
    maps = 2 + 3 * sources  # x, x x, then y, y y, x y per source
    column_sums = np.zeros((maps, width), dtype=np.float32)
    column_means = np.empty(width)  # float32 values, held in float64 for the exact sums below
    pairs = np.empty(width - 1)
    row_sums = np.empty(out_width)
    means = np.empty((maps, out_width), dtype=np.float32)
    totals = np.zeros((sources, ranges, out_width))
    for k in range(_WINDOW):  # the first row's window; later rows slide it (exact: integer sums < 2^24)
        _add_row(column_sums, x[first + k], ys[:, first + k], np.float32(1.0))
    for i in range(first, last):
        if i > first:
            _add_row(column_sums, x[i + _WINDOW - 1], ys[:, i + _WINDOW - 1], np.float32(1.0))
            _add_row(column_sums, x[i - 1], ys[:, i - 1], np.float32(-1.0))
        for m in range(maps):
            sums, mean = column_sums[m], means[m]
            for j in range(width):
                column_means[j] = np.float64(sums[j] / _WINDOW32)  # divided in float32, as scipy rounds
            # 7 float32 values sum exactly in float64 in any order: by doubling, 1 + 1, 2 + 2, 4 + 2 + 1
            for j in range(width - 1):
                pairs[j] = column_means[j] + column_means[j + 1]
            quads, tail = pairs[2:], column_means[_WINDOW - 1 :]
            for j in range(out_width):
                row_sums[j] = (pairs[j] + quads[j]) + (pairs[j + 4] + tail[j])
            for j in range(out_width):
                mean[j] = np.float32(row_sums[j] / _WINDOW)
        for source in range(sources):
            _ssim_row(
                means[0],
                means[1],
                means[2 + 3 * source],
                means[3 + 3 * source],
                means[4 + 3 * source],
                c1,
                c2,
                totals[source],
            )
    return totals.sum(axis=2)


@numba.njit(error_model="numpy", cache=True)
def _add_row(column_sums: np.ndarray, x: np.ndarray, ys: np.ndarray, sign: np.float32) -> None:
    """Add ``sign`` (+-1) times one image row of every SSIM map (x, x x, y, y y, x y) to the column sums."""
    width = x.shape[0]
    first, second = column_sums[0], column_sums[1]
    for j in range(width):
        first[j] += sign * x[j]
    for j in range(width):
        second[j] += sign * (x[j] * x[j])
    for source in range(ys.shape[0]):
        y, mean_y, mean_yy, mean_xy = (
            ys[source],
            column_sums[2 + 3 * source],
            column_sums[3 + 3 * source],
            column_sums[4 + 3 * source],
        )
        for j in range(width):
            mean_y[j] += sign * y[j]
        for j in range(width):
            mean_yy[j] += sign * (y[j] * y[j])
        for j in range(width):
            mean_xy[j] += sign * (x[j] * y[j])


@numba.njit(error_model="numpy", cache=True)
def _ssim_row(
    mean_x: np.ndarray,
    mean_xx: np.ndarray,
    mean_y: np.ndarray,
    mean_yy: np.ndarray,
    mean_xy: np.ndarray,
    c1: np.ndarray,
    c2: np.ndarray,
    totals: np.ndarray,
) -> None:
    """totals[r, j] += SSIM at the row's pixels for data range r, from float32 local means."""
    for r in range(c1.shape[0]):
        constant1, constant2, total = c1[r], c2[r], totals[r]
        for j in range(mean_x.shape[0]):
            square_x, square_y = mean_x[j] * mean_x[j], mean_y[j] * mean_y[j]
            variance_x = (mean_xx[j] - square_x) * _COVARIANCE_NORM32
            variance_y = (mean_yy[j] - square_y) * _COVARIANCE_NORM32
            covariance = (mean_xy[j] - mean_x[j] * mean_y[j]) * _COVARIANCE_NORM32
            numerator = ((_TWO32 * mean_x[j]) * mean_y[j] + constant1) * (_TWO32 * covariance + constant2)
            denominator = (square_x + square_y + constant1) * (variance_x + variance_y + constant2)
            total[j] += np.float64(numerator / denominator)


# -------------------------------------------------------------------------------- Qabf and Nabf
_F32 = np.float32
_HALF_PI32 = _F32(math.pi / 2)
_QUARTER_PI32 = _F32(math.pi / 4)
_QABF_ALIGNMENT_SCALE32 = _F32(-2 / math.pi)
_NABF_ALIGNMENT_SCALE32 = _F32(2 / math.pi)
_NABF_SMALL_WEIGHT32 = _F32(0.001 * 8**1.5)
_NABF_KEPT_SCALE32 = _F32(0.9999 * 0.9995)
_TAN_3PI_8 = _F32(2.414213562373095)
_TAN_PI_8 = _F32(0.4142135623730950)
_ATAN_COEFFICIENTS = tuple(_F32(c) for c in (8.05374449538e-2, -1.38776856032e-1, 1.99777106478e-1, -3.33329491539e-1))


@numba.njit(error_model="numpy", cache=True, inline="always")
def _atan(x: np.float32) -> np.float32:
    """float32 arctangent (Cephes' reduction and polynomial, within 2e-7 relative) written without
    calls or branches, so loops over it vectorise (libm's atanf is a scalar call, 16 ns here).
    +-inf gives +-pi/2 and NaN stays NaN, as atanf."""
    magnitude = abs(x)
    large, medium = magnitude > _TAN_3PI_8, magnitude > _TAN_PI_8
    reduced = (
        -_F32(1.0) / magnitude
        if large
        else ((magnitude - _F32(1.0)) / (magnitude + _F32(1.0)) if medium else magnitude)
    )
    offset = _HALF_PI32 if large else (_QUARTER_PI32 if medium else _F32(0.0))
    z = reduced * reduced
    c0, c1, c2, c3 = _ATAN_COEFFICIENTS
    polynomial = (((c0 * z + c1) * z + c2) * z + c3) * z * reduced + reduced
    return math.copysign(offset + polynomial, x)


_LOG2E32 = _F32(1.4426950408889634)
_LN2_HIGH32, _LN2_LOW32 = _F32(0.693359375), _F32(-2.12194440e-4)
_EXP_COEFFICIENTS = tuple(
    _F32(c)
    for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
)


@numba.njit(error_model="numpy", cache=True)
def _sigmoid_of_negated_exp_inplace(values: np.ndarray, exponents: np.ndarray) -> None:
    """values[j] <- 1 / (1 + exp(values[j])) in float32 (the sigmoid of -values).

    exp as Cephes' expf (reduction by ln 2 in two parts, degree-6 polynomial, within 2 ulp), the
    power of two built in the float's exponent bits through ``exponents`` (int32 scratch of the
    same length): every loop vectorises, where libm's expf is a scalar call (about 5 ns here, most
    of Qabf's time)."""
    c0, c1, c2, c3, c4, c5 = _EXP_COEFFICIENTS
    for j in range(values.shape[0]):
        # beyond this range the sigmoid is 0 or 1 in float32; the clamp keeps 2^k a normal float
        x = min(max(values[j], _F32(-87.0)), _F32(88.0))
        k = math.floor(x * _LOG2E32 + _F32(0.5))
        r = x - k * _LN2_HIGH32
        r = r - k * _LN2_LOW32
        values[j] = (((((c0 * r + c1) * r + c2) * r + c3) * r + c4) * r + c5) * (r * r) + r + _F32(1.0)
        exponents[j] = (np.int32(k) + np.int32(127)) << np.int32(23)
    powers = exponents.view(np.float32)
    for j in range(values.shape[0]):
        values[j] = _F32(1.0) / (_F32(1.0) + values[j] * powers[j])


@numba.njit(parallel=True, error_model="numpy", cache=True)
def edge_sums(levels: np.ndarray) -> np.ndarray:
    """Qabf's and Nabf's sums over one image: [Qabf numerator, Qabf denominator, Nabf lost, Nabf weights].

    ``levels`` (3, H, W) float32 grey levels of A, B, F (H, W >= 2). Nabf takes Sobel responses on
    a mirrored image (the edge pixel not repeated), Qabf on a zero-padded one: they differ on the
    one-pixel border only. The quirks are those of ``metrics._qabf`` and ``metrics._nabf``;
    per-pixel arithmetic in float32 as the reference, sums in float64.
    """
    height = levels.shape[1]
    tasks = (height + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    partial = np.zeros((tasks, 4))
    for task in numba.prange(tasks):
        partial[task] = _edge_rows(levels, task * ROWS_PER_TASK, min(height, (task + 1) * ROWS_PER_TASK))
    return partial.sum(axis=0)


@numba.njit(error_model="numpy", cache=True)
def _edge_rows(levels: np.ndarray, first: int, last: int) -> np.ndarray:
    """:func:`edge_sums` over image rows [first, last)."""
    height, width = levels.shape[1], levels.shape[2]
    horizontal = np.empty((3, width), dtype=np.float32)
    vertical = np.empty((3, width), dtype=np.float32)
    magnitude = np.empty((3, width), dtype=np.float32)
    angle = np.empty((3, width), dtype=np.float32)
    zeros = np.zeros(width, dtype=np.float32)
    first_factor, second_factor = np.empty(width, dtype=np.float32), np.empty(width, dtype=np.float32)
    exponents = np.empty(width, dtype=np.int32)
    totals = np.zeros((4, width))  # per column, so that the float64 sums vectorise too
    for i in range(first, last):
        up, down = (i - 1 if i > 0 else 1), (i + 1 if i < height - 1 else height - 2)
        for n in range(3):
            _sobel_row(levels[n, up], levels[n, i], levels[n, down], horizontal[n], vertical[n], False)
            _polar(horizontal[n], vertical[n], magnitude[n], angle[n], 0, width)
        _nabf_row(magnitude, angle, first_factor, second_factor, exponents, totals)
        # Qabf's zero padding: whole rows at the top and bottom, the two end pixels elsewhere.
        for n in range(3):
            if i == 0 or i == height - 1:
                row_up = zeros if i == 0 else levels[n, up]
                row_down = zeros if i == height - 1 else levels[n, down]
                _sobel_row(row_up, levels[n, i], row_down, horizontal[n], vertical[n], True)
                _polar(horizontal[n], vertical[n], magnitude[n], angle[n], 0, width)
            else:
                _sobel_ends(levels[n, up], levels[n, i], levels[n, down], horizontal[n], vertical[n])
                _polar(horizontal[n], vertical[n], magnitude[n], angle[n], 0, 1)
                _polar(horizontal[n], vertical[n], magnitude[n], angle[n], width - 1, width)
        _qabf_row(horizontal, magnitude, angle, first_factor, second_factor, exponents, totals)
    return totals.sum(axis=1)


@numba.njit(error_model="numpy", cache=True, inline="always")
def _sobel_at(
    up: np.ndarray, middle: np.ndarray, down: np.ndarray, left: int, j: int, right: int
) -> tuple[np.float32, np.float32]:
    """Sobel responses (right minus left, top minus bottom) at column j of a row from its three image
    rows, reading columns ``left`` and ``right`` beside it. Integer levels: exact in float32."""
    horizontal = (up[right] + _F32(2.0) * middle[right] + down[right]) - (
        up[left] + _F32(2.0) * middle[left] + down[left]
    )
    vertical = (up[left] + _F32(2.0) * up[j] + up[right]) - (down[left] + _F32(2.0) * down[j] + down[right])
    return horizontal, vertical


@numba.njit(error_model="numpy", cache=True)
def _sobel_row(
    up: np.ndarray, middle: np.ndarray, down: np.ndarray, horizontal: np.ndarray, vertical: np.ndarray, zero_ends: bool
) -> None:
    """Sobel responses of one row (see :func:`_sobel_at`); outside the row's ends the columns are
    mirrored (edge pixel not repeated) or zero."""
    width = middle.shape[0]
    for j in range(1, width - 1):
        horizontal[j], vertical[j] = _sobel_at(up, middle, down, j - 1, j, j + 1)
    if zero_ends:
        _sobel_ends(up, middle, down, horizontal, vertical)
    else:
        for j, left, right in ((0, 1, 1), (width - 1, width - 2, width - 2)):
            horizontal[j], vertical[j] = _sobel_at(up, middle, down, left, j, right)


@numba.njit(error_model="numpy", cache=True)
def _sobel_ends(
    up: np.ndarray, middle: np.ndarray, down: np.ndarray, horizontal: np.ndarray, vertical: np.ndarray
) -> None:
    """Sobel responses at the row's two end pixels with zero columns outside."""
    last = middle.shape[0] - 1
    horizontal[0] = up[1] + _F32(2.0) * middle[1] + down[1]
    vertical[0] = (_F32(2.0) * up[0] + up[1]) - (_F32(2.0) * down[0] + down[1])
    horizontal[last] = -(up[last - 1] + _F32(2.0) * middle[last - 1] + down[last - 1])
    vertical[last] = (up[last - 1] + _F32(2.0) * up[last]) - (down[last - 1] + _F32(2.0) * down[last])


@numba.njit(error_model="numpy", cache=True)
def _polar(
    horizontal: np.ndarray, vertical: np.ndarray, magnitude: np.ndarray, angle: np.ndarray, start: int, stop: int
) -> None:
    """Magnitude sqrt(h^2 + v^2) (exact integer sum, correctly rounded root) and atan(v / h), NaN where both are 0."""
    for j in range(start, stop):
        h, v = horizontal[j], vertical[j]
        magnitude[j] = math.sqrt(h * h + v * v)
        angle[j] = _atan(v / h)


@numba.njit(error_model="numpy", cache=True)
def _nabf_row(
    magnitude: np.ndarray,
    angle: np.ndarray,
    strength_factor: np.ndarray,
    alignment_factor: np.ndarray,
    exponents: np.ndarray,
    totals: np.ndarray,
) -> None:
    """totals[2] += lost edge strength where F's gradient exceeds both sources' (artifacts), totals[3] += weights."""
    g_f, angle_f = magnitude[2], angle[2]
    for n in range(2):
        g, angle_n = magnitude[n], angle[n]
        for j in range(g.shape[0]):
            low, high = min(g[j], g_f[j]), max(g[j], g_f[j])
            strength = _F32(0.0) if low == 0 else low / high
            orientation = _F32(0.0) if math.isnan(angle_n[j]) else angle_n[j]
            orientation_f = _F32(0.0) if math.isnan(angle_f[j]) else angle_f[j]
            alignment = abs(abs(orientation - orientation_f) - _HALF_PI32) * _NABF_ALIGNMENT_SCALE32
            strength_factor[j] = -((strength - _F32(0.5)) * _F32(19.0))
            alignment_factor[j] = -((alignment - _F32(0.5)) * _F32(22.0))
        _sigmoid_of_negated_exp_inplace(strength_factor, exponents)
        _sigmoid_of_negated_exp_inplace(alignment_factor, exponents)
        for j in range(g.shape[0]):
            # weights g^1.5 above the threshold Td = 2 (16 at the 8x scale of these magnitudes)
            weight = g[j] * math.sqrt(g[j]) if g[j] >= _F32(16.0) else _NABF_SMALL_WEIGHT32
            totals[3, j] += weight
            kept = math.sqrt(strength_factor[j] * alignment_factor[j] * _NABF_KEPT_SCALE32)
            artifact = g_f[j] > magnitude[0, j] and g_f[j] > magnitude[1, j]
            totals[2, j] += (_F32(1.0) - kept) * weight if artifact else _F32(0.0)


@numba.njit(error_model="numpy", cache=True)
def _qabf_row(
    horizontal: np.ndarray,
    magnitude: np.ndarray,
    angle: np.ndarray,
    strength_factor: np.ndarray,
    alignment_factor: np.ndarray,
    exponents: np.ndarray,
    totals: np.ndarray,
) -> None:
    """totals[0] += Q^{SF} g_S (without the Tg Ta factors), totals[1] += g_S, over both sources S."""
    g_f = magnitude[2]
    for n in range(2):
        g = magnitude[n]
        for j in range(g.shape[0]):
            # the common implementation's quirk: where the magnitudes are equal the "ratio" is F's magnitude
            strength = g_f[j] if g[j] == g_f[j] else min(g[j], g_f[j]) / max(g[j], g_f[j])
            orientation = _HALF_PI32 if horizontal[n, j] == 0 else angle[n, j]
            orientation_f = _HALF_PI32 if horizontal[2, j] == 0 else angle[2, j]
            alignment = abs(orientation - orientation_f) * _QABF_ALIGNMENT_SCALE32 + _F32(1.0)
            strength_factor[j] = -((strength - _F32(0.5)) * _F32(15.0))
            alignment_factor[j] = -((alignment - _F32(0.8)) * _F32(22.0))
        _sigmoid_of_negated_exp_inplace(strength_factor, exponents)
        _sigmoid_of_negated_exp_inplace(alignment_factor, exponents)
        for j in range(g.shape[0]):
            totals[0, j] += (strength_factor[j] * alignment_factor[j]) * g[j]
            totals[1, j] += g[j]


# ------------------------------------------------------------------------- whole-image statistics
def image_statistics(levels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """One pass over the (3, H, W) grey levels of A, B, F (integers 0..255 in float64).

    Returns the joint histograms (2, 256, 256) of (F, A) and (F, B) levels, the sums of products
    (3, 3) and the sums (3,) of A, B, F, F's sums of squared differences along rows and along
    columns (2,), all exact int64; and the float64 sum of |2 grad F| (numpy.gradient doubled, an
    integer vector, its length rounded to float32): what MI, EN, SD, SCD, CC, MSE, PSNR, SF and
    AG need.
    """
    # One task per thread: each fills its own histograms (1 MB), which are then added up.
    histograms, products, sums, differences, gradients = _image_statistics(
        levels, max(1, min(numba.get_num_threads(), levels.shape[1]))
    )
    return histograms, products, sums, differences, float(gradients)


@numba.njit(parallel=True, error_model="numpy", cache=True)
def _image_statistics(levels: np.ndarray, tasks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    height = levels.shape[1]
    rows_per_task = (height + tasks - 1) // tasks
    histograms = np.zeros((tasks, 2, 256, 256), dtype=np.int64)
    moments = np.zeros((tasks, 11), dtype=np.int64)
    gradients = np.zeros(tasks)
    for task in numba.prange(tasks):
        # accumulators local to the task: threads writing neighbouring entries of a shared array
        # every pixel would fight over the cache line (2 threads ran 5x slower than one)
        gradients[task] = _statistics_rows(
            levels, task * rows_per_task, min(height, (task + 1) * rows_per_task), histograms[task], moments[task]
        )
    total = moments.sum(axis=0)
    products = np.empty((3, 3), dtype=np.int64)
    for index, (x, y) in enumerate(((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))):
        products[x, y] = products[y, x] = total[index]
    return histograms.sum(axis=0), products, total[6:9].copy(), total[9:11].copy(), gradients.sum()


@numba.njit(error_model="numpy", cache=True)
def _statistics_rows(levels: np.ndarray, first: int, last: int, histograms: np.ndarray, moments: np.ndarray) -> float:
    """:func:`image_statistics` over rows [first, last): fills ``histograms`` and ``moments`` (the six
    products AA AB AF BB BF FF, the sums A B F, F's squared row and column differences); returns
    the gradient sum. Separate loops per quantity: all but the histogram's vectorise."""
    height, width = levels.shape[1], levels.shape[2]
    aa = ab = af = bb = bf = ff = sum_a = sum_b = sum_f = row_squares = column_squares = np.int64(0)
    gradients = 0.0
    fused_a, fused_b = histograms[0], histograms[1]
    for i in range(first, last):
        a, b, f = levels[0, i], levels[1, i], levels[2, i]
        for j in range(width):
            z = np.int64(f[j])
            fused_a[z, np.int64(a[j])] += 1
            fused_b[z, np.int64(b[j])] += 1
        for j in range(width):
            x, y, z = np.int64(a[j]), np.int64(b[j]), np.int64(f[j])
            aa += x * x
            ab += x * y
            af += x * z
            bb += y * y
            bf += y * z
            ff += z * z
            sum_a += x
            sum_b += y
            sum_f += z
        following = f[1:]
        for j in range(width - 1):
            step = np.int64(following[j]) - np.int64(f[j])
            row_squares += step * step
        if i < height - 1:
            below = levels[2, i + 1]
            for j in range(width):
                step = np.int64(below[j]) - np.int64(f[j])
                column_squares += step * step
        gradients += _gradient_row_sum(levels[2], i)
    values = (aa, ab, af, bb, bf, ff, sum_a, sum_b, sum_f, row_squares, column_squares)
    for index in range(11):
        moments[index] += values[index]
    return gradients


@numba.njit(error_model="numpy", cache=True, fastmath={"reassoc"})
def _gradient_row_sum(f: np.ndarray, i: int) -> float:
    """Sum over row i of |2 grad f| (numpy.gradient doubled: central differences, one-sided ones
    doubled at the ends), each length rounded to float32; the float64 sum may be reordered."""
    height, width = f.shape
    below, above = f[min(i + 1, height - 1)], f[max(i - 1, 0)]
    vertical_scale = 1.0 if 0 < i < height - 1 else 2.0
    total = 0.0
    if width > 1:
        right, left = f[i, 2:], f[i, :-2]
        for j in range(width - 2):
            horizontal = right[j] - left[j]
            vertical = (below[j + 1] - above[j + 1]) * vertical_scale
            total += np.float64(math.sqrt(np.float32(horizontal * horizontal + vertical * vertical)))
        for j, horizontal in ((0, 2.0 * (f[i, 1] - f[i, 0])), (width - 1, 2.0 * (f[i, width - 1] - f[i, width - 2]))):
            vertical = (below[j] - above[j]) * vertical_scale
            total += np.float64(math.sqrt(np.float32(horizontal * horizontal + vertical * vertical)))
    else:
        vertical = (below[0] - above[0]) * vertical_scale
        total += abs(vertical)
    return total
