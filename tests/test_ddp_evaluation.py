"""Validation under DDP: every pair counts once, so 2 gloo processes log the single-process means."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _cluster_slurm import PROJECT_ROOT, interpreter_environment

from datamodules.images import encode_png

TINY = str(PROJECT_ROOT / "tests" / "configs" / "gifnet-tiny.yaml")


def write_pairs(root: Path, tasks: list[str]) -> None:
    rng = np.random.default_rng(0)
    for index, task in enumerate(tasks):
        pair = root / task / f"p{index}"
        pair.mkdir(parents=True)
        for role in ("a", "b"):
            (pair / f"{role}.png").write_bytes(encode_png(rng.integers(0, 256, (32, 40), np.uint8)))


def validate(pairs: Path, folder: Path, devices: int) -> dict[str, float]:
    """``validate`` of the (seeded) untrained tiny GIFNet on ``devices`` CPU processes; the logged metrics."""
    command = [
        sys.executable, "-m", "recipes.gifnet", "validate", "--config", TINY, "--untrained", "true",
        "--runs_dir", str(folder / "runs"), "--data.val_pairs", f"[{pairs}]", "--data.eval_workers", "0",
        "--data.val_pairs_per_task=null", "--trainer.limit_val_batches=null",  # every pair (tiny caps both)
        "--trainer.accelerator", "cpu", f"--trainer.devices={devices}",
        "--trainer.logger", "pytorch_lightning.loggers.CSVLogger", f"--trainer.logger.save_dir={folder}",
        "--trainer.logger.name=csv",
    ]  # fmt: skip
    if devices > 1:
        command.append("--trainer.strategy=ddp")
    environment = {**interpreter_environment(), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"validate on {devices} process(es) failed:\n{result.stderr[-4000:]}"
    [metrics_file] = (folder / "csv").rglob("metrics.csv")
    rows = list(csv.DictReader(metrics_file.open()))
    return {key: float(value) for row in rows for key, value in row.items() if key.startswith("val/") and value}


def test_two_ddp_processes_log_the_single_process_means_over_an_odd_number_of_pairs(tmp_path: Path) -> None:
    # 5 pairs on 2 ranks: a padding sampler would give rank 1 a second copy of one pair
    write_pairs(tmp_path / "pairs", ["IVIF", "IVIF", "IVIF", "MFIF", "MFIF"])
    single = validate(tmp_path / "pairs", tmp_path / "single", devices=1)
    double = validate(tmp_path / "pairs", tmp_path / "ddp", devices=2)
    assert single and "val/ivif/Qabf" in single, single
    assert single.keys() == double.keys()
    for key, value in single.items():
        assert double[key] == pytest.approx(value, rel=1e-5, abs=1e-7), f"{key}: {double[key]} on 2 ranks, {value} on 1"
