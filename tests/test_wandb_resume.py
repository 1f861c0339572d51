"""A run resumed from a checkpoint older than its last logged step logs every step once into its W&B run.

This is what a process killed between two checkpoints leaves (the fault drill, bench/fault_drill.py,
does it on a SLURM cluster): the history holds steps past the checkpoint, and the resumed run trains
them again. The test builds that state with three tiny fits: to step 2 (checkpoint kept aside), on
to step 4, then from the step-2 checkpoint to step 6.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import wandb

from recipes.run_identity import wandb_run_id
from recipes.wandb_history import (
    STEP_KEY,
    StepOnceWandbLogger,
    highest_logged_steps,
    history,
    repeated_steps,
    run_files,
)

from conftest import PROJECT_ROOT

TINY = str(PROJECT_ROOT / "tests" / "configs" / "gifnet-tiny.yaml")
# No validation: the checkpoint callbacks then save at every epoch end, here every 2 steps.
FIT = [
    "fit",
    "--config",
    TINY,
    "--run_name",
    "resumed",
    "--data.batches_per_epoch=2",
    "--trainer.limit_val_batches=0",
    "--checkpoint.monitor=null",
]


def fit(runs_dir: Path, *args: str) -> None:
    """``python -m recipes.gifnet fit`` (its main, in this process: no interpreter start-up per fit)."""
    from recipes.gifnet import main

    main([*FIT, "--runs_dir", str(runs_dir), *args])
    # as when the process ends: the W&B run is closed and its service has written everything
    wandb.finish()
    wandb.teardown()
    time.sleep(1.1)  # W&B names a start's folder by the second: two starts in one second would share it


@pytest.fixture(scope="module")
def rewound_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory after the three fits (history to step 4, then a resume from step 2 to 6)."""
    runs_dir = tmp_path_factory.mktemp("runs")
    run_dir = runs_dir / "resumed"
    fit(runs_dir, "--trainer.max_steps=2")
    older = shutil.copy(run_dir / "checkpoints" / "last.ckpt", runs_dir / "step2.ckpt")
    fit(runs_dir, "--trainer.max_steps=4", "--ckpt_path", "last")
    fit(runs_dir, "--trainer.max_steps=6", "--ckpt_path", str(older))
    return run_dir


def test_the_steps_trained_again_are_not_logged_again(rewound_run: Path) -> None:
    files = run_files(rewound_run, wandb_run_id("unifuse", "resumed"))
    assert len(files) == 3, f"one W&B run file per start expected: {files}"
    rows = [row for path in files for row in history(path)]
    assert not repeated_steps(rows), f"(metric, step) logged more than once: {repeated_steps(rows)}"
    # Lightning logs a step's training loss under the step count before it (0 for the first step)
    assert sorted(row[STEP_KEY] for row in rows if "train/loss" in row) == [0, 1, 2, 3, 4, 5]


def test_a_run_file_cut_off_by_a_kill_reads_up_to_the_cut(rewound_run: Path, tmp_path: Path) -> None:
    whole = run_files(rewound_run, wandb_run_id("unifuse", "resumed"))[0]
    rows = history(whole)
    data = whole.read_bytes()
    cut = tmp_path / "wandb" / "offline-run-0-cut" / "run-cut.wandb"
    cut.parent.mkdir(parents=True)
    for size in (len(data) // 2, len(data) - 3):  # half the file, and inside the last record
        cut.write_bytes(data[:size])
        assert history(cut) == rows[: len(history(cut))]
    assert highest_logged_steps(tmp_path, "cut")


def test_a_metric_the_kill_cut_off_is_logged_by_the_resumed_run(tmp_path: Path) -> None:
    def start(skip_logged_steps: bool) -> StepOnceWandbLogger:
        return StepOnceWandbLogger(
            skip_logged_steps=skip_logged_steps, save_dir=str(tmp_path), id="cut", project="unifuse", offline=True
        )

    killed = start(False)
    for step in range(4):  # killed in step 3, after its learning-rate row, before its loss row
        killed.log_metrics({"lr": 0.1}, step)
        if step < 3:
            killed.log_metrics({"loss": float(step)}, step)
    killed.experiment.finish()
    wandb.teardown()  # waits until W&B's service has written everything (finish alone may return before)
    time.sleep(1.1)  # W&B names a start's folder by the second: two starts in one second would share it
    resumed = start(True)  # from a checkpoint at step 2
    for step in range(2, 6):
        resumed.log_metrics({"lr": 0.1}, step)
        resumed.log_metrics({"loss": float(step)}, step)
    resumed.experiment.finish()
    wandb.teardown()

    rows = [row for path in run_files(tmp_path, "cut") for row in history(path)]
    assert not repeated_steps(rows), repeated_steps(rows)
    assert sorted(row[STEP_KEY] for row in rows if "lr" in row) == [0, 1, 2, 3, 4, 5]
    assert sorted(row[STEP_KEY] for row in rows if "loss" in row) == [0, 1, 2, 3, 4, 5]
