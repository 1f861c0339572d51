"""Full-resolution inference for networks that need sizes in multiples of a window.

Fusion inputs come at any height and width. Networks with windowed attention need multiples of
their window, so :func:`fuse_padded` reflect-pads to the next multiple and crops back. Images too
large for memory are fused in overlapping tiles by :func:`fuse_in_tiles`; tiles are blended with
weights that fall to zero towards the borders two tiles share, so no seam survives there.

Tiles are exact only for networks whose every statistic is local. A network that normalises with
statistics of its whole input (GIFNet with ``norm="image"``, as published) normalises each tile by
its own, so tiles change the result; :func:`fuse_in_tiles` warns when it splits an image for one.
Such networks bound their memory without tiles (GIFNet runs every stage in exact row strips).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

FuseFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def fuse_padded(
    fuse: FuseFunction, a: torch.Tensor, b: torch.Tensor, task: torch.Tensor, multiple: int
) -> torch.Tensor:
    """Fuse (B, 1, H, W) inputs of any size: reflect-pad to ``multiple``, fuse, crop back."""
    height, width = a.shape[-2:]
    pad_bottom, pad_right = -height % multiple, -width % multiple
    if pad_bottom == 0 and pad_right == 0:
        return fuse(a, b, task)
    # reflect padding needs the pad to be smaller than the side; replicate covers tiny images.
    mode = "reflect" if pad_bottom < height and pad_right < width else "replicate"
    padding = (0, pad_right, 0, pad_bottom)
    fused = fuse(F.pad(a, padding, mode=mode), F.pad(b, padding, mode=mode), task)
    return fused[..., :height, :width]


def _tile_starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def _ramp(length: int, overlap: int, fade_start: bool, fade_end: bool, device: torch.device) -> torch.Tensor:
    """1 inside a tile, rising from 0 over ``overlap`` pixels on the sides shared with a neighbour.

    The outermost pixel of a shared side gets weight 0: a network sees no context past the tile
    edge, so that pixel is the least trustworthy; the neighbour tile covers it fully. With an
    overlap of 1 that pixel is the outermost of both tiles, so they share it half and half (0 for
    both would divide by zero); with no overlap the tiles only abut and nothing fades.
    """
    weights = torch.ones(length, device=device)
    if overlap == 0:
        return weights
    if overlap == 1:
        ramp = torch.full((1,), 0.5, device=device)
    else:
        ramp = torch.arange(overlap, device=device, dtype=torch.float32) / overlap
    if fade_start:
        weights[:overlap] = torch.minimum(weights[:overlap], ramp[:length])
    if fade_end:
        weights[-overlap:] = torch.minimum(weights[-overlap:], ramp.flip(0)[-length:])
    return weights


def fuse_in_tiles(
    fuse: FuseFunction,
    a: torch.Tensor,
    b: torch.Tensor,
    task: torch.Tensor,
    multiple: int,
    tile_size: int,
    overlap: int,
    whole_image_statistics: bool = False,
) -> torch.Tensor:
    """Fuse large inputs tile by tile with ``overlap`` pixels shared between neighbours.

    ``whole_image_statistics``: the network normalises with statistics of its whole input, so a
    warning says that tiles change the result whenever an image is split.
    """
    if overlap < 0:
        raise ValueError(f"predict tile overlap must be 0 or more pixels, got {overlap} (--model.predict_tile_overlap)")
    if tile_size <= overlap:
        raise ValueError(f"predict tile size ({tile_size}) must be larger than the tile overlap ({overlap})")
    height, width = a.shape[-2:]
    if height <= tile_size and width <= tile_size:
        return fuse_padded(fuse, a, b, task, multiple)
    if whole_image_statistics:
        warnings.warn(
            f"fusing a {height}x{width} image in tiles of {tile_size} px with a network that normalises each "
            "image as a whole (norm='image'): every tile is normalised by its own statistics, so the result "
            "differs from fusing the image whole. Pass --model.predict_tile_size null to fuse whole "
            "(inference runs in exact row strips, which bound memory).",
            stacklevel=2,
        )
    stride = tile_size - overlap
    fused_sum = torch.zeros_like(a)
    weight_sum = torch.zeros((height, width), device=a.device, dtype=torch.float32)
    for top in _tile_starts(height, tile_size, stride):
        for left in _tile_starts(width, tile_size, stride):
            bottom, right = min(top + tile_size, height), min(left + tile_size, width)
            window = (slice(None), slice(None), slice(top, bottom), slice(left, right))
            tile = fuse_padded(fuse, a[window], b[window], task, multiple)
            weights = (
                _ramp(bottom - top, overlap, top > 0, bottom < height, a.device)[:, None]
                * _ramp(right - left, overlap, left > 0, right < width, a.device)[None, :]
            )
            fused_sum[window] += tile * weights
            weight_sum[window[2:]] += weights
    return fused_sum / weight_sum
