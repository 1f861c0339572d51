"""Stop a fit after a fixed amount of CPU time: a training budget that a busy machine cannot shrink.

``trainer.max_time`` counts wall-clock time, so on a shared machine the same budget buys fewer steps
when others compute too, and two configs trained one after the other get unequal shares. This
callback counts the CPU seconds the training process spent (every thread) plus those of its data
workers (live ones and finished ones), which is the work done whatever the load::

    python -m recipes.gifnet fit ... --trainer.callbacks+=recipes.compute_budget.CPUTimeBudget \\
        --trainer.callbacks.minutes 10

Run the fit with a fixed number of threads (``OMP_NUM_THREADS``): idle threads that spin-wait count
too, and one thread per process spins least. Under DDP each rank counts its own process and rank 0's
decision is broadcast, so all ranks stop after the same step (a rank that stopped alone would leave
the others waiting in their next all-reduce). The time spent is saved in the checkpoint, so a resumed
run (``--ckpt_path last``) spends only what is left.
"""

from __future__ import annotations

import resource
import time
from typing import Any

import psutil
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback


def process_tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process, its finished (waited-for) children and its live descendants."""
    seconds = time.process_time()
    finished = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds += finished.ru_utime + finished.ru_stime
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:  # exited between the listing and the read; counted once it is waited for
            continue
        seconds += times.user + times.system
    return seconds


class CPUTimeBudget(Callback):
    """Ends training once the fit has used ``minutes`` of CPU time (process, threads and data workers).

    Args:
        minutes: CPU minutes the fit may spend; the step running when it is reached is finished,
            then training ends as at ``max_steps`` (``last.ckpt`` holds that step). With validation
            on, Lightning validates once more when a fit stops early; that pass is counted too (it
            is in the saved time), so a resume does not get it back.
    """

    def __init__(self, minutes: float) -> None:
        if not minutes > 0:
            raise ValueError(f"CPUTimeBudget: minutes={minutes} must be positive")
        self.budget_seconds = 60.0 * minutes
        self.spent_before = 0.0  # CPU seconds spent by earlier processes of this run (restored on resume)
        self._start: float | None = None  # this process's count when training started

    @property
    def spent_seconds(self) -> float:
        if self._start is None:  # not training (yet)
            return self.spent_before
        return self.spent_before + process_tree_cpu_seconds() - self._start

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = process_tree_cpu_seconds()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        spent = trainer.strategy.broadcast(self.spent_seconds)  # rank 0's count decides for every rank
        if spent >= self.budget_seconds:
            trainer.should_stop = True

    def state_dict(self) -> dict[str, float]:
        return {"spent_seconds": self.spent_seconds}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.spent_before = float(state_dict["spent_seconds"])
