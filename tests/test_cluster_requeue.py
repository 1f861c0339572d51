"""SynchronizedRequeue in one process: the signal is only noted, then acted on at a batch boundary.

The SLURM job is simulated by its environment variables and ``scontrol`` by a script on PATH that
records its arguments; the real thing (two nodes, a real requeue) is in test_cluster_slurm.py.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning import Callback, LightningModule, Trainer

from cluster.requeue import SynchronizedRequeue


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
        data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
        return torch.utils.data.DataLoader(data, batch_size=4)


class _SignalSelf(Callback):
    """Sends this process the requeue signal after training batch ``at_batch`` (0-based), as SLURM would."""

    def __init__(self, at_batch: int) -> None:
        self.at_batch = at_batch

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == self.at_batch:
            os.kill(os.getpid(), signal.SIGUSR1)


@pytest.fixture
def slurm_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A one-task SLURM job's environment, with an ``scontrol`` that logs its arguments; the log path."""
    for name, value in {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "requeue-test",
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NNODES": "1",
    }.items():
        monkeypatch.setenv(name, value)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol-calls.txt"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return calls


def _trainer(tmp_path: Path, max_steps: int, callbacks: list[Callback], **options: Any) -> Trainer:
    return Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        callbacks=callbacks,
        default_root_dir=tmp_path / "run",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        **options,
    )


def test_signal_saves_requeues_and_stops_after_the_step_it_came_in(slurm_job: Path, tmp_path: Path) -> None:
    handler_before = signal.getsignal(signal.SIGUSR1)
    # The signal comes during step 3 (batch index 2), which then is the step that saves.
    trainer = _trainer(tmp_path, 10, [_SignalSelf(at_batch=2), SynchronizedRequeue()], plugins=[SLURMEnvironment()])
    trainer.fit(_Regression())

    assert trainer.global_step == 3, "training should stop at the step the signal arrived in"
    checkpoint = torch.load(tmp_path / "run" / "hpc_ckpt_1.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 3
    assert slurm_job.read_text().split() == ["requeue", "4242"]
    assert signal.getsignal(signal.SIGUSR1) == handler_before, "the previous SIGUSR1 handler should be back after fit"


def test_with_gradient_accumulation_it_saves_after_the_optimizer_step(slurm_job: Path, tmp_path: Path) -> None:
    # Two batches per step: batch index 6 is the first half of step 4, so step 4 completes before saving.
    callbacks = [_SignalSelf(at_batch=6), SynchronizedRequeue()]
    trainer = _trainer(tmp_path, 10, callbacks, plugins=[SLURMEnvironment()], accumulate_grad_batches=2)
    trainer.fit(_Regression())

    assert trainer.global_step == 4
    assert torch.load(tmp_path / "run" / "hpc_ckpt_1.ckpt", weights_only=False)["global_step"] == 4


def test_a_run_without_the_signal_is_untouched(slurm_job: Path, tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, 5, [SynchronizedRequeue()], plugins=[SLURMEnvironment()])
    trainer.fit(_Regression())

    assert trainer.global_step == 5
    assert not list((tmp_path / "run").glob("hpc_ckpt_*.ckpt"))
    assert not slurm_job.exists()


def test_outside_slurm_it_installs_no_handler(tmp_path: Path) -> None:
    handler_before = signal.getsignal(signal.SIGUSR1)
    probe_handler: list[Any] = []

    class _SeeHandler(Callback):
        def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
            probe_handler.append(signal.getsignal(signal.SIGUSR1))

    trainer = _trainer(tmp_path, 2, [SynchronizedRequeue(), _SeeHandler()])
    trainer.fit(_Regression())

    assert probe_handler == [handler_before]


def test_check_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="check_every_n_steps"):
        SynchronizedRequeue(check_every_n_steps=0)
