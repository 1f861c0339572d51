"""Validation on any paired set: a per-task cap, and a monitored score that every set produces.

fusion-bench has no targets, so a monitor such as ``val/mfif/PSNR_gt`` never appears and Lightning
stops the run at the first validation; ``val/score`` (a no-reference metric's mean over tasks) is
there for every set.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from datamodules.mixture import FusionDataModule, evenly_per_task

from conftest import FUSION_BENCH, PROJECT_ROOT

TINY = str(PROJECT_ROOT / "tests" / "configs" / "gifnet-tiny.yaml")
PAIRS = FUSION_BENCH / "pairs"
needs_fusion_bench = pytest.mark.skipif(not PAIRS.is_dir(), reason=f"fusion-bench pairs not found at {PAIRS}")


def test_evenly_per_task_caps_each_task_and_spreads_over_it() -> None:
    tasks = ["ivif"] * 6 + ["mfif"] * 2 + ["med"] * 3
    assert evenly_per_task(tasks, 2) == [0, 3, 6, 7, 8, 9]
    assert evenly_per_task(tasks, 10) == list(range(len(tasks)))


@needs_fusion_bench
def test_the_validation_cap_applies_per_task() -> None:
    data = FusionDataModule(val_pairs=[str(PAIRS)], val_pairs_per_task=2, eval_workers=0)
    keys = [key for batch in data.val_dataloader() for key in batch["key"]]
    per_task = Counter(key.split("/")[0] for key in keys)
    assert per_task == {"IVIF": 2, "MED": 2, "MEIF": 2, "MFIF": 2, "NIR": 2}
    with pytest.raises(ValueError, match="val_pairs_per_task"):
        FusionDataModule(val_pairs_per_task=0)


@needs_fusion_bench
def test_fit_validating_on_fusion_bench_monitors_the_score_and_keeps_the_best(tmp_path: Path) -> None:
    environment = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "recipes.gifnet", "fit",
        "--config", TINY,
        "--runs_dir", str(tmp_path),
        "--run_name", "bench",
        "--trainer.max_steps", "2",
        "--trainer.logger", "false",
        "--data.val_pairs", f"[{PAIRS}]",
        "--data.val_pairs_per_task", "1",
        "--model.val_metrics", "[Qabf]",  # the score is all this test needs
    ]  # fmt: skip
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    checkpoints = tmp_path / "bench" / "checkpoints"
    [best] = [path for path in checkpoints.glob("*.ckpt") if path.name != "last.ckpt"]
    callbacks = torch.load(best, map_location="cpu", weights_only=False)["callbacks"]
    [state] = [state for key, state in callbacks.items() if key.startswith("ModelCheckpoint")]
    assert state["monitor"] == "val/score" and torch.isfinite(state["best_model_score"])
