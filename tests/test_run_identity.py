"""Run identity: a fresh fit never writes into an earlier run, resumes take the newest save, and
validate / test / predict neither run untrained weights by accident nor log into the training run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pytorch_lightning import Callback, LightningModule, Trainer

from datamodules.images import encode_png
from datamodules.mixture import FusionDataModule
from lightning_modules.gifnet import GIFNetModule
from recipes.cli import FusionCLI, LastCheckpoint
from recipes.run_identity import RunDirectoryError, fit_checkpoint, newest_resume_checkpoint, wandb_run_id

from conftest import PROJECT_ROOT

TINY = str(PROJECT_ROOT / "tests" / "configs" / "gifnet-tiny.yaml")


def touch(path: Path, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"checkpoint")
    os.utime(path, (mtime, mtime))
    return path


def cli(*args: str) -> FusionCLI:
    return FusionCLI(GIFNetModule, FusionDataModule, default_config="gifnet.yaml", args=list(args))


# --- fit into a run directory that holds checkpoints -----------------------------------------------


def test_a_fresh_fit_into_a_run_with_checkpoints_refuses_and_names_the_ways_on(tmp_path: Path) -> None:
    touch(tmp_path / "demo" / "checkpoints" / "last.ckpt", 1000)
    with pytest.raises(RunDirectoryError) as raised:
        cli("fit", "--config", TINY, "--runs_dir", str(tmp_path), "--trainer.logger", "false")
    message = str(raised.value)
    assert str(tmp_path / "demo") in message
    assert "--ckpt_path last" in message and "--run_name" in message and "--overwrite true" in message
    assert (tmp_path / "demo" / "checkpoints" / "last.ckpt").read_bytes() == b"checkpoint", "nothing may be touched"


def test_overwrite_deletes_every_old_checkpoint_so_none_is_resumed_later(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    old = [
        touch(run_dir / "hpc_ckpt_1.ckpt", 1000),
        touch(run_dir / "checkpoints" / "last.ckpt", 1000),
        touch(run_dir / "checkpoints" / "epoch=0-step=2.ckpt", 1000),
    ]
    first_id = wandb_run_id("unifuse", "run", run_dir)
    assert fit_checkpoint(None, run_dir, run_dir / "checkpoints", overwrite=True) is None
    assert not any(path.exists() for path in old)
    # the new run logs to a W&B run of its own (its steps restart at 0), and keeps that id on resume
    second_id = wandb_run_id("unifuse", "run", run_dir)
    assert second_id != first_id
    touch(run_dir / "checkpoints" / "last.ckpt", 2000)
    assert fit_checkpoint("last", run_dir, run_dir / "checkpoints", overwrite=False) is not None
    assert wandb_run_id("unifuse", "run", run_dir) == second_id
    fit_checkpoint(None, run_dir, run_dir / "checkpoints", overwrite=True)
    assert wandb_run_id("unifuse", "run", run_dir) not in (first_id, second_id)


def test_a_restarted_slurm_job_resumes_from_the_newest_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir, checkpoints = tmp_path / "run", tmp_path / "run" / "checkpoints"
    hpc = touch(run_dir / "hpc_ckpt_1.ckpt", 1000)
    last = touch(checkpoints / "last.ckpt", 2000)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert fit_checkpoint(None, run_dir, checkpoints, overwrite=False) == str(last), "a stale hpc checkpoint won"
    os.utime(hpc, (3000, 3000))
    assert fit_checkpoint(None, run_dir, checkpoints, overwrite=False) == str(hpc)
    # a job's first run is a fresh start by its user: it refuses like any fresh fit
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    with pytest.raises(RunDirectoryError):
        fit_checkpoint(None, run_dir, checkpoints, overwrite=False)


def test_ckpt_path_last_takes_a_newer_hpc_checkpoint_too(tmp_path: Path) -> None:
    run_dir, checkpoints = tmp_path / "run", tmp_path / "run" / "checkpoints"
    touch(checkpoints / "last.ckpt", 1000)
    hpc = touch(run_dir / "hpc_ckpt_2.ckpt", 2000)
    touch(run_dir / "hpc_ckpt_1.ckpt", 500)
    assert fit_checkpoint("last", run_dir, checkpoints, overwrite=False) == str(hpc)
    # a DeepSpeed checkpoint is a folder, dated by its newest file
    (checkpoints / "last.ckpt").unlink()
    touch(checkpoints / "last.ckpt" / "checkpoint" / "rank0.pt", 3000)
    assert newest_resume_checkpoint(run_dir, checkpoints) == checkpoints / "last.ckpt"


def test_the_wandb_run_id_depends_on_the_project_too(tmp_path: Path) -> None:
    assert wandb_run_id("unifuse", "demo") == wandb_run_id("unifuse", "demo")
    assert wandb_run_id("unifuse", "demo", tmp_path) == wandb_run_id("unifuse", "demo"), "a never overwritten run"
    assert wandb_run_id("unifuse", "demo") != wandb_run_id("other-project", "demo")


# --- validate / test / predict ----------------------------------------------------------------------


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_evaluation_without_a_checkpoint_is_an_error(subcommand: str, tmp_path: Path) -> None:
    with pytest.raises(RunDirectoryError, match="--ckpt_path.*--untrained true"):
        cli(subcommand, "--config", TINY, "--runs_dir", str(tmp_path), "--trainer.logger", "false")


def test_predict_with_untrained_asked_for_runs_the_random_network(tmp_path: Path) -> None:
    pair = tmp_path / "pairs" / "IVIF" / "p0"
    pair.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for role in ("a", "b"):
        (pair / f"{role}.png").write_bytes(encode_png(rng.integers(0, 256, (32, 40), np.uint8)))
    cli("predict", "--config", TINY, "--runs_dir", str(tmp_path / "runs"), "--untrained", "true",
        "--trainer.logger", "false", "--data.predict_pairs", f"[{tmp_path / 'pairs'}]", "--data.eval_workers", "0",
        "--output_dir", str(tmp_path / "out"))  # fmt: skip
    assert (tmp_path / "out" / "IVIF" / "p0.png").is_file()


def run_recipe(*args: str, runs_dir: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "recipes.gifnet", *args, "--config", TINY, "--runs_dir", str(runs_dir)]
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GIFNet run ``tiny`` fitted for 2 steps on the demo set; the runs folder."""
    runs_dir = tmp_path_factory.mktemp("runs")
    run_recipe("fit", "--run_name", "tiny", "--trainer.max_steps", "2", runs_dir=runs_dir)
    return runs_dir


def wandb_runs(run_dir: Path) -> list[str]:
    return sorted(path.name.rsplit("-", 1)[-1] for path in (run_dir / "wandb").glob("offline-run-*"))


def test_validate_does_not_append_to_the_training_runs_wandb_history(trained_runs: Path) -> None:
    run_dir = trained_runs / "tiny"
    fit_id = wandb_run_id("unifuse", "tiny")
    assert wandb_runs(run_dir) == [fit_id]
    run_recipe("validate", "--run_name", "tiny", "--ckpt_path", "last", runs_dir=trained_runs)
    assert wandb_runs(run_dir) == [fit_id], "validate logged (by default it logs nowhere)"
    run_recipe(
        "validate", "--run_name", "tiny", "--ckpt_path", "last", "--trainer.logger", "true", runs_dir=trained_runs
    )
    runs = wandb_runs(run_dir)
    assert len(runs) == 2 and runs.count(fit_id) == 1, f"validate with a logger must get a W&B run of its own: {runs}"


# predict through the real CLI (loader, colour, writer, Lightning's prediction loop) with the network
# replaced by a pointwise average, so that many large pairs cost seconds: memory is what is measured.
PEAK_RSS_SCRIPT = """
import resource, sys
from datamodules.mixture import FusionDataModule
from lightning_modules.gifnet import GIFNetModule
from recipes.cli import FusionCLI
GIFNetModule.fuse = lambda self, a, b, task: (a + b) / 2
FusionCLI(GIFNetModule, FusionDataModule, default_config="gifnet.yaml", args=sys.argv[1:])
print("peak_rss_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
SIDE = 1024


def predict_peak_rss_mib(pairs: Path, output: Path, tmp_path: Path) -> float:
    args = ["predict", "--config", TINY, "--runs_dir", str(tmp_path / "runs"), "--untrained", "true",
            "--trainer.logger", "false", "--data.predict_pairs", f"[{pairs}]", "--output_dir", str(output),
            "--data.eval_workers", "0"]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", PEAK_RSS_SCRIPT, *args]
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, env=environment, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return int(result.stdout.split("peak_rss_kib")[-1].split()[0]) / 1024


def test_predict_over_many_pairs_keeps_peak_memory_flat(tmp_path: Path) -> None:
    ramp = np.linspace(0, 255, SIDE, dtype=np.float32)
    image = np.stack([ramp[:, None] + 0 * ramp, ramp + 0 * ramp[:, None], 255 - ramp[:, None] + 0 * ramp], axis=-1)
    (tmp_path / "a.png").write_bytes(encode_png(image.astype(np.uint8)))
    (tmp_path / "b.png").write_bytes(encode_png(image[::-1].astype(np.uint8).copy()))
    count = 48
    for folder, pairs in (("one", 1), ("many", count)):
        for index in range(pairs):
            pair = tmp_path / folder / "IVIF" / f"p{index:03d}"
            pair.mkdir(parents=True)
            for role in ("a", "b"):
                os.link(tmp_path / f"{role}.png", pair / f"{role}.png")
    one = predict_peak_rss_mib(tmp_path / "one", tmp_path / "out-one", tmp_path)
    many = predict_peak_rss_mib(tmp_path / "many", tmp_path / "out-many", tmp_path)
    assert len(list((tmp_path / "out-many").rglob("*.png"))) == count
    # kept predictions would add count x one RGB float32 fusion (48 x 12 MiB); flat is within noise
    kept_mib = count * 3 * SIDE * SIDE * 4 / 2**20
    assert many - one < kept_mib / 4, f"peak RSS: {one:.0f} MiB for 1 pair, {many:.0f} MiB for {count} pairs"


class _Regression(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        return torch.nn.functional.mse_loss(self.layer(inputs), targets)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        data = torch.utils.data.TensorDataset(torch.randn(8, 4), torch.randn(8, 1))
        return torch.utils.data.DataLoader(data, batch_size=4)


def test_last_ckpt_is_saved_at_every_epoch_end_not_only_when_training_ends(tmp_path: Path) -> None:
    # a run killed mid-training must find the newest epoch's last.ckpt (validation off, as in the SLURM tests)
    seen: list[int | None] = []

    class LookAtLast(Callback):
        def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
            path = tmp_path / "last.ckpt"
            seen.append(torch.load(path, weights_only=False)["global_step"] if path.exists() else None)

    trainer = Trainer(
        accelerator="cpu", max_steps=6, logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[LastCheckpoint(str(tmp_path)), LookAtLast()], default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(_Regression())
    assert seen == [None, 2, 4]
    assert sorted(path.name for path in tmp_path.glob("*.ckpt")) == ["last.ckpt"]
