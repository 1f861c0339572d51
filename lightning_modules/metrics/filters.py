"""Fast exact local filters for the fusion metrics (``lightning_modules/metrics/reference.py``) in plain torch.

torch has no fast float64 convolution on CPU (``conv2d`` in float64 took 1.4 s for VIF's first
scale on a 2-core x86, tens of times longer than these matrix products), yet VIF needs float64 Gaussian filtering
and SSIM needs float64 sums to reproduce its float32 reference. Matrix products are fast on every
device, so separable 'valid' filtering is done as banded matrix products: each block of
:data:`BLOCK` outputs along an axis is one small product with a (BLOCK, span) banded matrix over
a strided view of the input, with no unfolded copy.

* rows pass (along H): maps are stacked into one tall zero-padded buffer, each starting on a block
  boundary; the output is in image layout.
* columns pass (along W): blocks of columns are batched; the output is *block-major*,
  ``(column blocks, rows, BLOCK)``, output column ``j * BLOCK + i`` at ``[j, :, i]``. The metrics
  only sum over pixels, so they never pay for reordering it; columns past the valid width in the
  last block are garbage and must be masked or dropped by the caller.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

BLOCK = 16
"""Outputs per banded block. Bigger blocks waste multiply-adds on the band's zeros (span / taps
per output), smaller ones make the matrix products inefficient; 16 was fastest on a 2-core x86
(about 15 % ahead of 32, more ahead of 8 and 64)."""


def valid_length(length: int, size: int, stride: int = 1) -> int:
    """Number of 'valid' outputs of a ``size``-tap filter over ``length`` inputs keeping every ``stride``-th."""
    return (length - size) // stride + 1


def banded_matrix(taps: Tensor, stride: int) -> Tensor:
    """(BLOCK, span) matrix whose row i holds ``taps`` at columns stride*i .. stride*i + len - 1."""
    size = taps.numel()
    matrix = taps.new_zeros(BLOCK, stride * (BLOCK - 1) + size)
    rows = torch.arange(BLOCK, device=taps.device)[:, None]
    matrix[rows, stride * rows + torch.arange(size, device=taps.device)] = taps
    return matrix


def column_blocks(width: int, size: int, stride: int = 1) -> tuple[int, int]:
    """(number of column blocks, padded width) that :func:`filter_columns` needs for ``width`` inputs."""
    blocks = -(-valid_length(width, size, stride) // BLOCK)
    span = stride * (BLOCK - 1) + size
    return blocks, max(width, (blocks - 1) * stride * BLOCK + span)


def filter_columns(rows: Tensor, taps: Tensor, stride: int, blocks: int) -> Tensor:
    """'Valid' correlation along the columns of the contiguous (R, padded width) matrix ``rows``.

    Returns (blocks, R, BLOCK), block-major (see the module docstring). ``rows`` must be padded
    as :func:`column_blocks` says; the padding's content only reaches garbage outputs.
    """
    count, width = rows.shape
    span = stride * (BLOCK - 1) + taps.numel()
    view = rows.as_strided((blocks, count, span), (stride * BLOCK, width, 1))
    return torch.bmm(view, banded_matrix(taps, stride).T.expand(blocks, span, BLOCK))


class SeparableFilter:
    """Both passes of a separable 'valid' filter over ``count`` equal-size maps.

    Write the maps into :meth:`inputs` (a view into a zero-padded buffer), then :meth:`run`.
    """

    def __init__(
        self, count: int, height: int, width: int, size: int, stride: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        self.count, self.height, self.width, self.size, self.stride = count, height, width, size, stride
        self.step = stride * BLOCK
        self.span = stride * (BLOCK - 1) + size
        self.out_height = valid_length(height, size, stride)
        self.out_width = valid_length(width, size, stride)
        # Each map owns whole row blocks, so a block never mixes two maps within its valid outputs.
        self.row_blocks = -(-height // self.step)
        self.rows = self.row_blocks * self.step
        self.column_blocks, self.padded_width = column_blocks(width, size, stride)
        tail = self.span - self.step  # the last block reads this far past the last map
        self.buffer = torch.empty(count * self.rows + tail, self.padded_width, dtype=dtype, device=device)
        maps = self._maps()
        maps[:, height:].zero_()
        maps[:, :height, width:].zero_()
        self.buffer[count * self.rows :].zero_()

    def _maps(self) -> Tensor:
        return self.buffer[: self.count * self.rows].view(self.count, self.rows, self.padded_width)

    def inputs(self) -> Tensor:
        """(count, H, W) view of the buffer to write the maps into."""
        return self._maps()[:, : self.height, : self.width]

    def run(self, taps: Tensor) -> Tensor:
        """(column blocks, count, out height, BLOCK) block-major outputs; see :meth:`valid_columns`."""
        width = self.padded_width
        view = self.buffer.as_strided((self.count * self.row_blocks, self.span, width), (self.step * width, width, 1))
        filtered_rows = torch.matmul(banded_matrix(taps, self.stride), view).view(-1, width)
        out = filter_columns(filtered_rows, taps, self.stride, self.column_blocks)
        return out.view(self.column_blocks, self.count, self.row_blocks * BLOCK, BLOCK)[:, :, : self.out_height]

    def valid_columns(self) -> int:
        """How many columns of the last column block are valid outputs."""
        return self.out_width - (self.column_blocks - 1) * BLOCK


def to_image_layout(blocks: Tensor, out_width: int) -> Tensor:
    """Block-major (column blocks, ..., rows, BLOCK) outputs as (..., rows, out_width) images (a copy)."""
    return blocks.movedim(0, -2).flatten(-2)[..., :out_width]


def block_sums(values: Tensor, valid_columns: int, dims: tuple[int, ...]) -> Tensor:
    """Sums of block-major ``values`` over the column blocks, the rows and ``dims``, in float64, leaving
    out the garbage columns of the last block."""
    full = values[:-1].sum((0, -2, -1) + dims, dtype=torch.float64)
    last = values[-1:, ..., :valid_columns].sum((0, -2, -1) + dims, dtype=torch.float64)
    return full + last


def box_sums(x: Tensor, dim: int, window: int = 7) -> Tensor:
    """Sums of ``window`` (7) consecutive entries along ``dim``, 'valid', by doubling: 4 additions.

    Exact for integer-valued float32 maps whose sums stay below 2^24.
    """
    if window != 7:
        raise ValueError("box_sums is written for 7-entry windows")
    length = x.shape[dim]
    pairs = x.narrow(dim, 0, length - 1) + x.narrow(dim, 1, length - 1)
    quads = pairs.narrow(dim, 0, length - 3) + pairs.narrow(dim, 2, length - 3)
    sums = quads.narrow(dim, 0, length - 6)
    sums += pairs.narrow(dim, 4, length - 6)
    sums += x.narrow(dim, 6, length - 6)
    return sums


def sobel(padded: Tensor) -> tuple[Tensor, Tensor]:
    """3 x 3 Sobel correlations of an already padded (..., H + 2, W + 2) map, 'valid'.

    Returns (right minus left, top minus bottom), each smoothed [1, 2, 1] across as
    (x0 + x1) + (x1 + x2): exact integers in float32 for integer maps.
    """
    pairs_down = padded[..., :-1, :] + padded[..., 1:, :]
    smooth_down = pairs_down[..., :-1, :] + pairs_down[..., 1:, :]
    pairs_across = padded[..., :, :-1] + padded[..., :, 1:]
    smooth_across = pairs_across[..., :, :-1] + pairs_across[..., :, 1:]
    horizontal = smooth_down[..., :, 2:] - smooth_down[..., :, :-2]
    vertical = smooth_across[..., :-2, :] - smooth_across[..., 2:, :]
    return horizontal, vertical


def zero_padded_border_sobel(images: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Sobel responses of (..., H, W) maps (H, W >= 2) with zero padding on the outermost pixels only.

    Inside, a zero-padded and a mirrored Sobel agree, so callers can take the inside from a
    mirrored pass and only these one-pixel strips from here: the top and bottom rows (full width)
    and the left and right columns without their end pixels, as (horizontal, vertical) pairs.
    """
    height = images.shape[-2]
    strips = (
        F.pad(images[..., :2, :], (1, 1, 1, 0)),  # top row: a zero row above, zero columns beside
        F.pad(images[..., height - 2 :, :], (1, 1, 0, 1)),  # bottom row
        F.pad(images[..., :, :2], (1, 0, 0, 0)),  # left column, rows 1 .. H - 2
        F.pad(images[..., :, -2:], (0, 1, 0, 0)),  # right column, rows 1 .. H - 2
    )
    return [sobel(strip) for strip in strips]
