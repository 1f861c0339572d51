"""Requeue a SLURM job on SIGUSR1 with every rank saving at the same step.

Lightning's own SLURM handler saves the checkpoint *inside* the signal handler, which ends in a
collective (a barrier; DeepSpeed also broadcasts the path). The signal reaches the ranks at
slightly different points of a step, so one rank may enter that barrier while another is still
inside the step's gradient all-reduce: mismatched collectives, which hang until the collective
timeout, so the requeue that rank 0 runs after the barrier never comes and the job ends at its
time limit instead of being requeued.

:class:`SynchronizedRequeue` takes the signal over: the handler only notes it, and at the end of
every optimizer step the ranks agree (one all-reduce of a flag) whether any of them was signalled.
Then all of them save Lightning's ``hpc_ckpt_<n>.ckpt`` in the run directory at the same step, rank
0 runs ``scontrol requeue``, and training stops. The requeued job keeps its job id; Lightning finds
the ``hpc`` checkpoint in ``default_root_dir`` and resumes from it.

The SLURM batch scripts add it with ``--trainer.callbacks+=cluster.requeue.SynchronizedRequeue``.
Outside SLURM it does nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from types import FrameType
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.callbacks import Callback

log = logging.getLogger(__name__)


class SynchronizedRequeue(Callback):
    """On the requeue signal, save on all ranks at the next batch boundary, requeue, stop.

    Args:
        check_every_n_steps: how often the ranks compare notes (one tiny all-reduce, which also
            waits for the GPU); a signal is acted on at most this many steps late. With SLURM's
            ``--signal=SIGUSR1@90`` every step is cheap enough unless steps take seconds.
    """

    def __init__(self, check_every_n_steps: int = 1) -> None:
        super().__init__()
        if check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be at least 1, got {check_every_n_steps}")
        self.check_every_n_steps = check_every_n_steps
        self.signalled = False
        self.requeued = False
        self._environment: SLURMEnvironment | None = None
        self._previous_handler: Any = None
        self._last_step = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # The object Lightning's signal connector reads (single-device strategies have no
        # cluster_environment of their own, yet Lightning requeues them under SLURM too).
        environment = trainer._accelerator_connector.cluster_environment
        if stage != "fit" or not isinstance(environment, SLURMEnvironment) or environment.requeue_signal is None:
            return
        if threading.current_thread() is not threading.main_thread():
            log.warning(
                "SynchronizedRequeue: not on the main thread, so no signal handler; Lightning's requeue stays on"
            )
            return
        # Lightning registers its own handler after the setup hooks, unless auto_requeue is off.
        environment.auto_requeue = False
        self._environment = environment
        self._previous_handler = signal.signal(environment.requeue_signal, self._note_signal)

    def _note_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only a flag: anything collective here could interleave with the step's own collectives.
        self.signalled = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._environment is None or self.requeued:
            return
        # Act only right after an optimizer step: a save between the micro-batches of gradient
        # accumulation would lose the gradients gathered so far.
        if trainer.global_step == self._last_step:
            return
        self._last_step = trainer.global_step
        if trainer.global_step % self.check_every_n_steps:
            return
        # Every rank reaches this point in the same order, so the all-reduce pairs up across ranks.
        if not trainer.strategy.reduce_boolean_decision(self.signalled, all=False):
            return
        self.requeued = True
        checkpoint_path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
        trainer.save_checkpoint(checkpoint_path)
        if trainer.is_global_zero:
            self._requeue()
        trainer.should_stop = True

    @staticmethod
    def _requeue() -> None:
        array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        job_id = f"{array_job}_{array_task}" if array_job and array_task else os.environ["SLURM_JOB_ID"]
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
        if result.returncode == 0:
            log.info("saved and requeued SLURM job %s", job_id)
        else:
            log.error("scontrol requeue %s failed (%d): %s", job_id, result.returncode, result.stderr.strip())

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._environment is not None:
            signal.signal(self._environment.requeue_signal, self._previous_handler)
            self._environment = None
