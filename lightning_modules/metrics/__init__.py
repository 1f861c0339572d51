"""The standard image-fusion metrics under the fusion-bench reference conventions, and what uses them.

- :mod:`~lightning_modules.metrics.reference`: the metrics in batched torch (any device) and their
  public API, re-exported here: :func:`compute_metrics`, :func:`to_grey_levels`, the metric names;
- :mod:`~lightning_modules.metrics.kernels`: the costly metrics as fused CPU loops compiled by numba;
- :mod:`~lightning_modules.metrics.filters`: exact local filters in plain torch for the reference;
- :mod:`~lightning_modules.metrics.baselines`: classical fusion baselines (average, choose-max, Laplacian pyramid);
- :mod:`~lightning_modules.metrics.tracker`: per-task means for validation and test, exact under DDP.

May import :mod:`datamodules.schema`; never Lightning modules, networks or recipes.
"""

from lightning_modules.metrics.reference import (
    BACKENDS,
    EXTRA_METRICS,
    HIGHER_IS_BETTER,
    METRICS,
    NAN_REASONS,
    SOURCE_METRICS,
    TARGET_METRICS,
    VIF_MIN_SIZE,
    check_metric_names,
    compute_metrics,
    to_grey_levels,
)
from lightning_modules.metrics.tracker import FusionMetricTracker

__all__ = [
    "BACKENDS",
    "EXTRA_METRICS",
    "HIGHER_IS_BETTER",
    "METRICS",
    "NAN_REASONS",
    "SOURCE_METRICS",
    "TARGET_METRICS",
    "VIF_MIN_SIZE",
    "FusionMetricTracker",
    "check_metric_names",
    "compute_metrics",
    "to_grey_levels",
]
