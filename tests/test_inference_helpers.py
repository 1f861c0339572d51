"""Full-resolution helpers of the fusion base: padding, tiling, colour restoration."""

from __future__ import annotations

import pytest
import torch
from kornia.color import rgb_to_ycbcr

from lightning_modules.inference.color import restore_color
from lightning_modules.inference.tiling import fuse_in_tiles, fuse_padded


def windowed_mean_fuse(multiple: int):
    """A fuse function that only accepts multiples of ``multiple`` and mixes pixels locally."""

    def fuse(a: torch.Tensor, b: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        assert a.shape[-2] % multiple == 0 and a.shape[-1] % multiple == 0, a.shape
        return torch.nn.functional.avg_pool2d((a + b) / 2, 3, stride=1, padding=1, count_include_pad=False)

    return fuse


@pytest.mark.parametrize("size", [(37, 53), (8, 8), (5, 3)])
def test_padding_restores_the_original_size(size: tuple[int, int]) -> None:
    a, b = torch.rand(2, 1, 1, *size).unbind(0)
    fused = fuse_padded(windowed_mean_fuse(8), a, b, torch.zeros(1, dtype=torch.long), multiple=8)
    assert fused.shape == a.shape
    # away from the padded border the result is the unpadded local mean
    inner = windowed_mean_fuse(1)(a, b, None)
    assert torch.allclose(fused[..., : size[0] - 2, : size[1] - 2], inner[..., : size[0] - 2, : size[1] - 2], atol=1e-6)


def test_tiles_match_whole_image_fusion_for_a_local_operator() -> None:
    torch.manual_seed(0)
    a, b = torch.rand(2, 1, 1, 100, 131).unbind(0)
    task = torch.zeros(1, dtype=torch.long)
    whole = fuse_padded(windowed_mean_fuse(8), a, b, task, multiple=8)
    tiled = fuse_in_tiles(windowed_mean_fuse(8), a, b, task, multiple=8, tile_size=48, overlap=16)
    assert tiled.shape == whole.shape
    # the last row and column differ by design: whole-image padding reflects there, a tile does not
    assert torch.allclose(tiled[..., :-1, :-1], whole[..., :-1, :-1], atol=1e-5)


def test_tile_overlap_must_be_smaller_than_tile() -> None:
    a = torch.rand(1, 1, 64, 64)
    with pytest.raises(ValueError, match="tile size"):
        fuse_in_tiles(windowed_mean_fuse(1), a, a, None, multiple=1, tile_size=16, overlap=16)


@pytest.mark.parametrize("overlap", [0, 1, 2])
def test_small_tile_overlaps_blend_to_finite_values_that_match_whole_fusion(overlap: int) -> None:
    # overlap 1 used to weigh the shared pixel 0 in both tiles (NaN), overlap 0 crashed
    torch.manual_seed(0)
    a, b = torch.rand(2, 1, 1, 70, 45).unbind(0)

    def pointwise(a: torch.Tensor, b: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        return (a + b) / 2

    tiled = fuse_in_tiles(pointwise, a, b, None, multiple=1, tile_size=16, overlap=overlap)
    assert torch.isfinite(tiled).all()
    assert torch.allclose(tiled, (a + b) / 2, atol=1e-6)


def test_a_negative_tile_overlap_is_refused_by_name() -> None:
    a = torch.rand(1, 1, 64, 64)
    with pytest.raises(ValueError, match="predict_tile_overlap"):
        fuse_in_tiles(windowed_mean_fuse(1), a, a, None, multiple=1, tile_size=16, overlap=-1)


def test_color_comes_from_the_color_source() -> None:
    torch.manual_seed(0)
    fused_y = torch.rand(1, 1, 16, 16)
    rgb = torch.rand(1, 3, 16, 16)
    grey = torch.rand(1, 1, 16, 16).expand(1, 3, 16, 16)
    out = restore_color(fused_y, grey, rgb, torch.tensor([False]), torch.tensor([True]))
    ycbcr = rgb_to_ycbcr(out)
    inside_gamut = (ycbcr_round_trip_ok := (out > 0.01) & (out < 0.99)).all(1, keepdim=True)
    assert ycbcr_round_trip_ok.any()
    assert torch.allclose(ycbcr[:, :1][inside_gamut], fused_y[inside_gamut], atol=1e-4)
    expected_chroma = rgb_to_ycbcr(rgb)[:, 1:]
    assert torch.allclose(
        ycbcr[:, 1:][inside_gamut.expand(-1, 2, -1, -1)], expected_chroma[inside_gamut.expand(-1, 2, -1, -1)], atol=1e-4
    )


def test_two_color_sources_follow_the_more_saturated_one() -> None:
    fused_y = torch.full((1, 1, 1, 1), 0.5)
    saturated_red = torch.tensor([0.9, 0.2, 0.2]).view(1, 3, 1, 1)
    neutral = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1)
    both = torch.tensor([True])
    out = restore_color(fused_y, saturated_red, neutral, both, both)
    only_red = restore_color(fused_y, saturated_red, saturated_red, both, both)
    assert torch.allclose(out, only_red, atol=1e-5)  # grey contributes no weight
    grey_out = restore_color(fused_y, neutral, neutral, both, both)
    assert torch.allclose(grey_out, torch.full_like(grey_out, 0.5), atol=1e-5)


def test_colour_out_of_gamut_is_desaturated_and_keeps_the_fused_luminance() -> None:
    """A bright fused pixel under a saturated hue: clipping RGB would darken it; desaturating keeps its Y."""
    torch.manual_seed(0)
    fused_y = torch.rand(2, 1, 8, 8) * 0.4 + 0.6  # bright
    saturated = torch.zeros(2, 3, 8, 8)
    saturated[:, 0] = 1.0  # pure red: Cr far from neutral
    grey = torch.zeros(2, 3, 8, 8)
    out = restore_color(fused_y, grey, saturated, torch.tensor([False, False]), torch.tensor([True, True]))
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    luminance = 0.299 * out[:, 0] + 0.587 * out[:, 1] + 0.114 * out[:, 2]
    torch.testing.assert_close(luminance[:, None], fused_y, atol=1e-5, rtol=0)
    assert bool((out[:, 0] > out[:, 1]).all()), "the hue (red) is kept where it fits"
