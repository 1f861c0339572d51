"""Reproduce ../shared/fusion-bench/published/expected_metrics.json: published methods' fused images
on real pairs, every metric, under the reference conventions."""

from __future__ import annotations

import importlib.util
import json
from collections import defaultdict

import numpy as np
import pytest
import torch

from datamodules.images import read_image
from lightning_modules.metrics import EXTRA_METRICS, SOURCE_METRICS, compute_metrics

from conftest import FUSION_BENCH, PROJECT_ROOT

pytestmark = pytest.mark.skipif(not (FUSION_BENCH / "published").is_dir(), reason="needs ../shared/fusion-bench")

EXPECTED_KEYS = {name: name for name in SOURCE_METRICS} | {"SSIM_std": "SSIM255", "MSE": "MSE"}
NAMES = list(SOURCE_METRICS) + list(EXTRA_METRICS)
RELATIVE_TOLERANCE = 1e-5
"""Observed: at most 6e-7 (Nabf, SSIM_std: the references' float32 rounding differs in the last
bits), 2e-8 for VIF and Qabf, 1e-14 or better for the rest; the issue asks for 1e-4."""


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared CI machine with busy cores, threads that wait for each other
    make the metric tests several times slower; the values do not depend on it. (Imported by the
    other metric test modules.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _image(path) -> torch.Tensor:
    array = torch.from_numpy(read_image(path))
    return array[None, None] if array.ndim == 2 else array.permute(2, 0, 1)[None]


@pytest.mark.slow  # 99 images of up to 768 x 576: a few seconds (kernels) to ~50 s (torch, busy machine)
@pytest.mark.parametrize("backend", ["kernels", "torch"])
def test_reproduces_every_published_value(backend):
    rows = json.loads((FUSION_BENCH / "published" / "expected_metrics.json").read_text())
    by_pair = defaultdict(list)
    for row in rows:
        by_pair[(row["task"], row["pair_id"])].append(row)
    assert sum(len(group) for group in by_pair.values()) == len(rows) >= 99
    failures = []
    for (task, pair_id), group in sorted(by_pair.items()):
        pair = FUSION_BENCH / "pairs" / task / pair_id
        fused = torch.cat(
            [_image(FUSION_BENCH / "published" / task / row["method"] / f"{pair_id}.png") for row in group]
        )
        count = fused.shape[0]
        a, b = (_image(pair / name).expand(count, -1, -1, -1) for name in ("a.png", "b.png"))
        values = compute_metrics(fused, a, b, NAMES, backend=backend)  # all methods of a pair in one batch
        for index, row in enumerate(group):
            for name in NAMES:
                got, want = float(values[name][index]), row[EXPECTED_KEYS[name]]
                if not abs(got - want) <= RELATIVE_TOLERANCE * abs(want):
                    failures.append(f"{task}/{row['method']}/{pair_id} {name}: {got!r} != {want!r}")
    assert not failures, "\n".join(failures)


def test_the_numpy_reference_reproduces_published_values_too():
    """The bench's NumPy reference is the independent cross-check of the torch suite; check it on
    a few real pairs as well (colour sources, black backgrounds)."""
    spec = importlib.util.spec_from_file_location("metrics_speed", PROJECT_ROOT / "bench" / "metrics_speed.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    rows = json.loads((FUSION_BENCH / "published" / "expected_metrics.json").read_text())
    chosen = [row for row in rows if row["task"] == "MED" and row["pair_id"] in ("mri-ct_11", "mri-pet_31")]
    assert len(chosen) == 2
    for row in chosen:
        pair = FUSION_BENCH / "pairs" / row["task"] / row["pair_id"]
        images = [
            read_image(path)
            for path in (
                FUSION_BENCH / "published" / row["task"] / row["method"] / f"{row['pair_id']}.png",
                pair / "a.png",
                pair / "b.png",
            )
        ]
        f, a, b = (reference.reference_grey(image) for image in images)
        for name in NAMES:
            assert reference.REFERENCE[name](f, a, b) == pytest.approx(
                row[EXPECTED_KEYS[name]], rel=RELATIVE_TOLERANCE
            ), name
    assert np.isfinite([row["VIF"] for row in chosen]).all()
