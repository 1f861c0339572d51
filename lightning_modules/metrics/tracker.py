"""Per-task means of the fusion metrics over an epoch, as a torchmetrics ``Metric`` that reduces exactly under DDP."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from datamodules.schema import TASKS
from lightning_modules.metrics.reference import (
    METRICS,
    NEEDS_TARGET,
    check_batch,
    check_metric_names,
    compute_metrics,
    target_metrics,
    to_grey_levels,
)


class FusionMetricTracker(Metric):
    """Per-task means of fusion metrics over an epoch, exact under DDP.

    States are per (task, metric) sums, counts of values and counts of NaN values, all reduced
    with "sum", so the DDP result equals the single-process one on the same samples. NaN values
    (undefined metrics, see :data:`NAN_REASONS`) are left out of the means and counted.

    Args:
        names: metric names from :data:`METRICS` (all of them when ``None``). Target metrics
            (PSNR_gt, SSIM_gt) count only samples that have a target.
        tasks: task names; ``task_ids`` passed to :meth:`update` index into them.
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    def __init__(self, names: Sequence[str] | None = None, tasks: tuple[str, ...] = TASKS) -> None:
        super().__init__()
        self.names = check_metric_names(METRICS if names is None else names)
        self.tasks = tuple(tasks)
        shape = (len(self.tasks), len(self.names))
        self.add_state("total", default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(shape, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("nan_count", default=torch.zeros(shape, dtype=torch.int64), dist_reduce_fx="sum")

    def update(
        self,
        fused: Tensor,
        a: Tensor,
        b: Tensor,
        task_ids: Tensor,
        gt: Tensor | None = None,
        has_gt: Tensor | None = None,
    ) -> None:
        """Add a batch: images (B, 1 or 3, H, W) in [0, 1], ``task_ids`` (B,) indices into ``tasks``.

        ``has_gt`` (B,) bool marks the samples whose ``gt`` is real (all of them when ``None``).
        """
        task_ids = torch.as_tensor(task_ids, device=self.total.device).long().flatten()
        if task_ids.numel() != fused.shape[0]:
            raise ValueError(f"task_ids has {task_ids.numel()} entries for a batch of {fused.shape[0]} images")
        if task_ids.numel() and (int(task_ids.min()) < 0 or int(task_ids.max()) >= len(self.tasks)):
            raise ValueError(f"task_ids must index into tasks {self.tasks}, got {task_ids.tolist()}")
        batch_size = fused.shape[0]
        values = torch.full((batch_size, len(self.names)), math.nan, dtype=torch.float64, device=self.total.device)
        applies = torch.ones_like(values, dtype=torch.bool)
        source_names = [name for name in self.names if name not in NEEDS_TARGET]
        target_names = [name for name in self.names if name in NEEDS_TARGET]
        if source_names:
            results = compute_metrics(fused, a, b, source_names)
            for name in source_names:
                values[:, self.names.index(name)] = results[name].to(values.device)
        if target_names:
            columns = [self.names.index(name) for name in target_names]
            with_target = torch.full((batch_size,), gt is not None, dtype=torch.bool, device=values.device)
            if gt is not None and has_gt is not None:
                with_target = has_gt.to(values.device).bool().flatten()
            applies[:, columns] = with_target[:, None]
            if bool(with_target.any()):
                index = with_target.nonzero().flatten()
                check_batch(fused=fused, gt=gt)
                selected = index.to(fused.device)
                with torch.no_grad(), torch.autocast(fused.device.type, enabled=False):
                    results = target_metrics(
                        to_grey_levels(fused[selected])[:, 0], to_grey_levels(gt[selected])[:, 0], target_names
                    )
                for name, column in zip(target_names, columns):
                    values[index, column] = results[name].to(values.device)
        is_nan = torch.isnan(values) & applies
        counted = applies & ~is_nan
        self.total.index_add_(0, task_ids, torch.where(counted, values, 0.0))
        self.count.index_add_(0, task_ids, counted.long())
        self.nan_count.index_add_(0, task_ids, is_nan.long())

    def compute(self) -> dict[str, Tensor]:
        """``{"<task>/<metric>": mean}`` where a task has values; ``"<task>/<metric>_nan_count"`` where non-zero."""
        results: dict[str, Tensor] = {}
        for task_index, task in enumerate(self.tasks):
            for metric_index, name in enumerate(self.names):
                count = self.count[task_index, metric_index]
                if count > 0:
                    results[f"{task}/{name}"] = self.total[task_index, metric_index] / count
                nan_count = self.nan_count[task_index, metric_index]
                if nan_count > 0:
                    results[f"{task}/{name}_nan_count"] = nan_count.to(torch.float64)
        return results
