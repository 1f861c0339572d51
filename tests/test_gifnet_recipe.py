"""`python -m recipes.gifnet` end to end on the demo set: fit, W&B offline logs, resume, predict."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.images import encode_png, read_image
from datamodules.mixture import FusionDataModule
from lightning_modules.gifnet import GIFNetModule
from recipes.cli import FusionCLI
from recipes.run_identity import wandb_run_id
from recipes.wandb_history import history

from conftest import PROJECT_ROOT

TINY = str(PROJECT_ROOT / "tests" / "configs" / "gifnet-tiny.yaml")


def run_recipe(*args: str, runs_dir: Path) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "WANDB_MODE": "offline", "UNIFUSE_RUNS_DIR": str(runs_dir)}
    result = subprocess.run(
        [sys.executable, "-m", "recipes.gifnet", *args],
        cwd=PROJECT_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, (
        f"recipes.gifnet {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    )
    return result


def global_step(checkpoint: Path) -> int:
    return int(torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GIFNet trained for 4 steps on the demo set; returns the runs directory."""
    runs_dir = tmp_path_factory.mktemp("runs")
    run_recipe("fit", "--config", TINY, "--run_name", "tiny", runs_dir=runs_dir)
    return runs_dir


def test_fit_writes_checkpoints_and_offline_wandb_logs(trained_run: Path) -> None:
    run_dir = trained_run / "tiny"
    assert global_step(run_dir / "checkpoints" / "last.ckpt") == 4
    best = [path for path in (run_dir / "checkpoints").glob("*.ckpt") if path.name != "last.ckpt"]
    assert len(best) == 1, "one best checkpoint by val/ivif/Qabf"
    [run_file] = (run_dir / "wandb").glob(f"offline-run-*-{wandb_run_id('unifuse', 'tiny')}/run-*.wandb")
    rows = history(run_file)
    logged = {key for row in rows for key in row}
    assert {
        "train/loss",
        "lr-AdamW",
        "val/ivif/Qabf",
        "val/ivif/MI",
        "val/fusions/count",
        "data/skipped_samples",
    } <= logged
    assert max(row.get("data/samples", 0) for row in rows) > 0
    losses = [row["train/loss"] for row in rows if "train/loss" in row]
    assert len(losses) == 4 and all(np.isfinite(losses))


def test_resume_continues_global_step_and_wandb_run(trained_run: Path, tmp_path: Path) -> None:
    resumed_runs = tmp_path / "runs"
    resumed_runs.mkdir()
    subprocess.run(["cp", "-r", str(trained_run / "tiny"), str(resumed_runs)], check=True)
    run_recipe(
        "fit",
        "--config",
        TINY,
        "--run_name",
        "tiny",
        "--ckpt_path",
        "last",
        "--trainer.max_steps",
        "6",
        runs_dir=resumed_runs,
    )
    assert global_step(resumed_runs / "tiny" / "checkpoints" / "last.ckpt") == 6
    first, resumed = sorted(
        (resumed_runs / "tiny" / "wandb").glob(f"offline-run-*-{wandb_run_id('unifuse', 'tiny')}/run-*.wandb")
    )
    assert first.name == resumed.name, "both parts of the run log to one W&B run id"
    steps = [row["trainer/global_step"] for row in history(resumed) if "train/loss" in row]
    assert steps and min(steps) >= 4, f"the resumed run logged steps {steps}, expected to continue after step 4"


def write_pair(folder: Path, a: np.ndarray, b: np.ndarray) -> None:
    folder.mkdir(parents=True)
    (folder / "a.png").write_bytes(encode_png(a))
    (folder / "b.png").write_bytes(encode_png(b))


def test_predict_keeps_sizes_stems_colour_and_bit_depth(trained_run: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pairs = tmp_path / "pairs"
    write_pair(
        pairs / "IVIF" / "grey_and_rgb",
        rng.integers(0, 256, (37, 53), np.uint8),
        rng.integers(0, 256, (37, 53, 3), np.uint8),
    )
    write_pair(
        pairs / "MED" / "deep16",
        rng.integers(0, 65536, (45, 61), np.uint16),
        rng.integers(0, 65536, (45, 61), np.uint16),
    )
    write_pair(
        pairs / "MFIF" / "both_rgb",
        rng.integers(0, 256, (29, 70, 3), np.uint8),
        rng.integers(0, 256, (29, 70, 3), np.uint8),
    )
    output = tmp_path / "fused"
    checkpoint = trained_run / "tiny" / "checkpoints" / "last.ckpt"
    run_recipe(
        "predict",
        "--config",
        TINY,
        "--run_name",
        "tiny",
        "--ckpt_path",
        str(checkpoint),
        "--data.predict_pairs",
        f"[{pairs}]",
        "--output_dir",
        str(output),
        runs_dir=trained_run,
    )
    grey_rgb = read_image(output / "IVIF" / "grey_and_rgb.png")
    deep = read_image(output / "MED" / "deep16.png")
    both = read_image(output / "MFIF" / "both_rgb.png")
    assert grey_rgb.shape == (37, 53, 3) and grey_rgb.dtype == np.uint8
    assert deep.shape == (45, 61) and deep.dtype == np.uint16
    assert both.shape == (29, 70, 3)
    assert sorted(path.relative_to(output).as_posix() for path in output.rglob("*.png")) == [
        "IVIF/grey_and_rgb.png",
        "MED/deep16.png",
        "MFIF/both_rgb.png",
    ]


def test_predict_options_on_the_command_line_win_over_the_checkpoint(trained_run: Path, tmp_path: Path) -> None:
    # With --ckpt_path, LightningCLI replaces parsed model arguments by the checkpoint's saved
    # hyperparameters; the trained run saved gifnet.yaml's tiling (512) and the default branch (mfif).
    rng = np.random.default_rng(1)
    pairs = tmp_path / "pairs"
    write_pair(
        pairs / "IVIF" / "p0", rng.integers(0, 256, (40, 48), np.uint8), rng.integers(0, 256, (40, 48), np.uint8)
    )
    checkpoint = trained_run / "tiny" / "checkpoints" / "last.ckpt"
    cli = FusionCLI(
        GIFNetModule,
        FusionDataModule,
        default_config="gifnet.yaml",
        args=[
            "predict",
            "--config",
            TINY,
            "--runs_dir",
            str(trained_run),
            "--run_name",
            "tiny",
            "--ckpt_path",
            str(checkpoint),
            "--trainer.logger",
            "false",
            "--data.predict_pairs",
            f"[{pairs}]",
            "--output_dir",
            str(tmp_path / "fused"),
            "--model.predict_tile_size",
            "24",
            "--model.predict_tile_overlap",
            "4",
            "--model.inference_branch",
            "ivif",
            "--model.inference_chunk_pixels",
            "512",
        ],
    )
    model = cli.model
    assert (model.predict_tile_size, model.predict_tile_overlap) == (24, 4)
    assert (model.inference_branch, model.network.inference_chunk_pixels) == ("ivif", 512)
    assert read_image(tmp_path / "fused" / "IVIF" / "p0.png").shape == (40, 48)


def test_predict_on_a_missing_folder_names_it(trained_run: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-pairs"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "recipes.gifnet",
            "predict",
            "--config",
            TINY,
            "--run_name",
            "tiny",
            "--ckpt_path",
            "last",
            "--data.predict_pairs",
            f"[{missing}]",
            "--output_dir",
            str(tmp_path / "out"),
        ],
        cwd=PROJECT_ROOT,
        env={**os.environ, "UNIFUSE_RUNS_DIR": str(trained_run)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0
    assert str(missing) in result.stderr


def test_a_run_stopped_by_its_time_limit_leaves_its_last_step_in_last_ckpt(tmp_path: Path) -> None:
    """max_time stops between save points (no validation, mid-epoch): last.ckpt must still hold the final step."""
    run_recipe(
        "fit", "--config", TINY, "--run_name", "timed", "--trainer.max_time", "00:00:00:03",
        "--trainer.max_steps", "100000", "--trainer.limit_val_batches", "0", "--data.batches_per_epoch", "100000",
        "--trainer.logger", "false", runs_dir=tmp_path,
    )  # fmt: skip
    last = tmp_path / "timed" / "checkpoints" / "last.ckpt"
    assert last.is_file(), "a time-limited run wrote no last.ckpt"
    assert global_step(last) >= 1


def test_a_config_that_saves_after_validation_only_keeps_its_final_step_with_validation_off(tmp_path: Path) -> None:
    # as gifnet.yaml: validation by steps (check_val_every_n_epoch null), so no save at an epoch's end
    run_recipe(
        "fit", "--config", TINY, "--run_name", "off-grid", "--trainer.check_val_every_n_epoch", "null",
        "--trainer.val_check_interval", "1000", "--trainer.max_steps", "3", "--trainer.limit_val_batches", "0",
        "--trainer.logger", "false", runs_dir=tmp_path,
    )  # fmt: skip
    last = tmp_path / "off-grid" / "checkpoints" / "last.ckpt"
    assert last.is_file(), "a fit that ended between save points wrote no last.ckpt"
    assert global_step(last) == 3
