"""Classical fusion baselines: exact on simple inputs, and the fusion-bench README's table on MED."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_metrics_published import one_thread  # noqa: F401  (autouse: one torch thread)

from datamodules.images import read_image
from lightning_modules.metrics import SOURCE_METRICS, compute_metrics, to_grey_levels
from lightning_modules.metrics.baselines import (
    BASELINES,
    average,
    choose_max,
    laplacian_pyramid,
)

from conftest import FUSION_BENCH


def test_average_and_choose_max():
    a, b = torch.tensor([[[[0.0, 10.0, 4.0]]]]), torch.tensor([[[[2.0, 4.0, 4.0]]]])
    torch.testing.assert_close(average(a, b), torch.tensor([[[[1.0, 7.0, 4.0]]]]))
    torch.testing.assert_close(choose_max(a, b), torch.tensor([[[[2.0, 10.0, 4.0]]]]))


@pytest.mark.parametrize("size", [(3, 3), (8, 9), (37, 50)])
def test_laplacian_pyramid_of_an_image_with_itself_is_the_image(size):
    image = torch.rand(2, 1, *size) * 255
    torch.testing.assert_close(laplacian_pyramid(image, image), image, rtol=0, atol=1e-3)


def test_laplacian_pyramid_keeps_the_stronger_detail_and_averages_the_base():
    flat = torch.full((1, 1, 64, 64), 100.0)
    edge = flat.clone()
    edge[..., 32:] = 200.0
    fused = laplacian_pyramid(flat, edge)
    # Across the edge the fused step keeps nearly all of the edge image's 100 (the average: 50).
    step = (fused[..., 33] - fused[..., 30]).mean().item()
    assert step > 90 and (average(flat, edge)[..., 33] - average(flat, edge)[..., 30]).mean().item() == 50
    assert fused.mean().item() == pytest.approx(average(flat, edge).mean().item(), rel=0.01)
    with pytest.raises(ValueError, match="same shape"):
        laplacian_pyramid(flat, edge[..., :32])


@pytest.mark.skipif(not (FUSION_BENCH / "pairs" / "MED").is_dir(), reason="needs ../shared/fusion-bench")
def test_reproduces_the_readme_baseline_table_on_med():
    table = {}
    for line in (FUSION_BENCH / "README.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 3 + len(SOURCE_METRICS) and cells[0] == "MED" and cells[1] in BASELINES:
            table[cells[1]] = [float(cell) for cell in cells[3:]]
    assert set(table) == set(BASELINES) == {"avg", "max", "lap"}  # the README's names
    sums = {method: np.zeros(len(SOURCE_METRICS)) for method in BASELINES}
    pairs = sorted((FUSION_BENCH / "pairs" / "MED").iterdir())
    for pair in pairs:
        a, b = (to_grey_levels(torch.from_numpy(_chw(read_image(pair / name)))[None]) for name in ("a.png", "b.png"))
        fused = torch.cat([torch.round(fuse(a, b).clamp(0, 255)) for fuse in BASELINES.values()]).to(torch.uint8)
        count = fused.shape[0]
        values = compute_metrics(
            fused,
            a.to(torch.uint8).expand(count, -1, -1, -1),
            b.to(torch.uint8).expand(count, -1, -1, -1),
            list(SOURCE_METRICS),
        )
        for index, method in enumerate(BASELINES):
            sums[method] += np.array([float(values[name][index]) for name in SOURCE_METRICS])
    for method, expected in table.items():
        means = sums[method] / len(pairs)
        for name, got, want in zip(SOURCE_METRICS, means, expected):
            assert round(got, 3) == pytest.approx(want, abs=1.5e-3), f"{method} {name}"


def _chw(array: np.ndarray) -> np.ndarray:
    return array[None] if array.ndim == 2 else np.ascontiguousarray(np.transpose(array, (2, 0, 1)))
