"""FusionMetricTracker: per-task means with NaN left out and counted, target metrics only where a
target exists, and DDP reduction equal to the single-process result (2 processes over gloo)."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from datamodules.schema import TASK_IDS
from lightning_modules.metrics import FusionMetricTracker, compute_metrics

NAMES = ["EN", "SCD", "VIF", "SSIM", "PSNR_gt"]


def make_samples(count: int = 6, size: int = 44) -> dict[str, torch.Tensor]:
    """Images in [0, 1] for tasks ivif / mfif / restore; sample 2 has a constant source (SCD NaN)."""
    generator = torch.Generator().manual_seed(0)
    fused, a = (torch.rand(count, 1, size, size, generator=generator) for _ in range(2))
    b = torch.rand(count, 3, size, size, generator=generator)
    a[2 % count] = 0.5
    gt = torch.rand(count, 1, size, size, generator=generator)
    tasks = torch.tensor([TASK_IDS[t] for t in ("ivif", "mfif", "ivif", "restore", "mfif", "ivif")][:count])
    has_gt = torch.tensor([False, True, False, True, True, False][:count])
    return {"fused": fused, "a": a, "b": b, "task_ids": tasks, "gt": gt, "has_gt": has_gt}


def update(tracker: FusionMetricTracker, samples: dict[str, torch.Tensor], index: torch.Tensor) -> None:
    tracker.update(
        samples["fused"][index],
        samples["a"][index],
        samples["b"][index],
        samples["task_ids"][index],
        gt=samples["gt"][index],
        has_gt=samples["has_gt"][index],
    )


def test_means_per_task_leave_out_and_count_nan():
    samples = make_samples()
    tracker = FusionMetricTracker(NAMES)
    update(tracker, samples, torch.arange(0, 4))
    update(tracker, samples, torch.arange(4, 6))
    result = tracker.compute()
    values = compute_metrics(samples["fused"], samples["a"], samples["b"], NAMES[:-1])
    target = compute_metrics(samples["fused"], samples["a"], samples["b"], ["PSNR_gt"], gt=samples["gt"])["PSNR_gt"]
    for task in ("ivif", "mfif", "restore"):
        members = samples["task_ids"] == TASK_IDS[task]
        for name in NAMES[:-1]:
            column = values[name][members]
            finite = column[~torch.isnan(column)]
            assert result[f"{task}/{name}"].item() == pytest.approx(finite.mean().item(), rel=1e-12)
            nan_count = int(torch.isnan(column).sum())
            assert result.get(f"{task}/{name}_nan_count", torch.tensor(0.0)).item() == nan_count
        with_target = members & samples["has_gt"]
        if with_target.any():
            assert result[f"{task}/PSNR_gt"].item() == pytest.approx(target[with_target].mean().item(), rel=1e-12)
        else:
            assert f"{task}/PSNR_gt" not in result and f"{task}/PSNR_gt_nan_count" not in result
    assert result["ivif/SCD_nan_count"].item() == 1  # the constant source of sample 2
    assert not any(key.startswith("meif/") for key in result)
    tracker.reset()
    assert int(tracker.count.sum()) == 0 and int(tracker.nan_count.sum()) == 0 and float(tracker.total.abs().sum()) == 0


def test_without_targets_target_metrics_are_left_out():
    samples = make_samples()
    tracker = FusionMetricTracker(["EN", "SSIM_gt"])
    tracker.update(samples["fused"], samples["a"], samples["b"], samples["task_ids"])
    assert set(tracker.compute()) == {"ivif/EN", "mfif/EN", "restore/EN"}


def test_bad_task_ids_and_names_get_clear_errors():
    samples = make_samples(2)
    with pytest.raises(ValueError, match="known metrics"):
        FusionMetricTracker(["EN", "nope"])
    tracker = FusionMetricTracker(["EN"])
    with pytest.raises(ValueError, match="task_ids must index into tasks"):
        tracker.update(samples["fused"], samples["a"], samples["b"], torch.tensor([0, 9]))
    with pytest.raises(ValueError, match="task_ids has 1 entries for a batch of 2"):
        tracker.update(samples["fused"], samples["a"], samples["b"], torch.tensor([0]))


def _ddp_worker(rank: int, world_size: int, port: int, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        samples = make_samples()
        tracker = FusionMetricTracker(NAMES)
        update(tracker, samples, torch.arange(rank, 6, world_size))  # each rank sees different tasks and NaN
        results[rank] = {key: value.item() for key, value in tracker.compute().items()}
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow  # two spawned processes import torch and torchmetrics: ~15 s, more on a busy machine
def test_ddp_reduction_equals_the_single_process_result():
    samples = make_samples()
    single = FusionMetricTracker(NAMES)
    update(single, samples, torch.arange(6))
    expected = {key: value.item() for key, value in single.compute().items()}
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_ddp_worker, args=(2, _free_port(), results), nprocs=2, join=True)
        reduced = dict(results)
    for rank in (0, 1):
        assert set(reduced[rank]) == set(expected)
        for key, value in expected.items():
            got = reduced[rank][key]
            assert got == pytest.approx(value, rel=1e-12) or (math.isnan(got) and math.isnan(value)), key
