"""recipes.compute_budget: CPU time counts data workers, a fit stops on its budget, a resume spends only the rest."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from recipes.compute_budget import CPUTimeBudget, process_tree_cpu_seconds

from conftest import PROJECT_ROOT

TINY = PROJECT_ROOT / "tests" / "configs" / "gifnet-tiny.yaml"
STEP_LIMIT = 5000
"""Far more steps than a few CPU seconds buy on the tiny config: reaching it means the budget did not stop the fit."""


def test_live_and_finished_children_count() -> None:
    before = process_tree_cpu_seconds()
    busy = subprocess.Popen(
        [sys.executable, "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 1: pass"]
    )
    time.sleep(0.5)
    while_running = process_tree_cpu_seconds()  # the child's seconds so far, while it runs
    busy.wait()
    after = process_tree_cpu_seconds()  # now in the finished children's count
    assert while_running > before
    assert after - before >= 1.0


def budgeted_fit(runs: Path, minutes: float, *extra: str) -> dict:
    command = [sys.executable, "-m", "recipes.gifnet", "fit", "--config", str(TINY), "--runs_dir", str(runs)]
    command += ["--run_name", "budget", "--trainer.max_steps", str(STEP_LIMIT), "--trainer.limit_val_batches", "0"]
    command += ["--trainer.logger", "false", "--trainer.callbacks+=recipes.compute_budget.CPUTimeBudget"]
    command += ["--trainer.callbacks.minutes", str(minutes), *extra]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command, cwd=PROJECT_ROOT, env=environment, check=True, capture_output=True)
    return torch.load(runs / "budget" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def test_fit_stops_on_its_budget_and_a_resume_spends_the_rest(tmp_path: Path) -> None:
    first = budgeted_fit(tmp_path, 0.05)
    spent = first["callbacks"]["CPUTimeBudget"]["spent_seconds"]
    assert 0 < first["global_step"] < STEP_LIMIT
    assert 3.0 <= spent < 30.0  # the budget (3 s) plus at most the last step and the checkpoint write

    second = budgeted_fit(tmp_path, 0.1, "--ckpt_path", "last")
    spent_again = second["callbacks"]["CPUTimeBudget"]["spent_seconds"]
    assert 6.0 <= spent_again < 6.0 + 30.0
    # the resumed process had 6 s minus the first one's spending (about 3 s) left, not 6 s: it adds about
    # as many steps as the first run trained, where a count restarting from zero would add about twice as many
    added = second["global_step"] - first["global_step"]
    assert 0 < added < 1.4 * first["global_step"]


def test_budget_must_be_positive() -> None:
    for minutes in (0, -1.0, float("nan")):
        try:
            CPUTimeBudget(minutes)
        except ValueError as error:
            assert "minutes" in str(error)
        else:
            raise AssertionError(f"CPUTimeBudget({minutes}) accepted")
