"""A real multi-process DDP fit of any recipe on CPU (gloo), for the tests of every model family.

    from ddp_fit import assert_ranks_agree, ddp_fit

    ranks = ddp_fit("gifnet", ["--config", TINY, "--trainer.max_steps=10"], tmp_path)
    assert_ranks_agree(ranks, steps=10)

:func:`ddp_fit` runs ``python -m recipes.<family> fit ARGS`` as a user would, from the project root,
with ``--trainer.accelerator cpu --trainer.devices N --trainer.strategy ddp`` appended: Lightning
starts the other ranks by re-running the command, and on CPU they reduce gradients over gloo. Plain
``ddp`` (no ``find_unused_parameters``) is what the SLURM batch script runs, so a parameter that gets
no gradient on some step fails the run here as it would there. The training probe of
``tests/_cluster_probe.py`` records, on every rank, the global step reached and a digest of the
weights at the end of training; equal digests mean the ranks stayed in lock-step.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from _cluster_probe import read_events
from _cluster_slurm import PROJECT_ROOT, interpreter_environment


@dataclass(frozen=True)
class RankResult:
    """What one rank of a finished fit ended with."""

    rank: int
    global_step: int
    weights_sha256: str


def ddp_fit(
    family: str, args: Sequence[str], work_dir: Path, devices: int = 2, timeout_s: float = 900
) -> list[RankResult]:
    """``python -m recipes.<family> fit ARGS`` on ``devices`` CPU processes with plain DDP; each rank's result.

    Runs go to ``work_dir/runs`` (ARGS may name the run with ``--run_name``) and the probe's files to
    ``work_dir/probe``. One thread per rank, since the ranks share the machine's cores. A failed fit
    fails the calling test with the end of its output; a fit that outlives ``timeout_s`` (a rank that
    died leaves the others waiting in a collective) is killed with every rank it started.
    """
    probe = Path(work_dir) / "probe"
    command = [
        sys.executable, "-m", f"recipes.{family}", "fit",
        "--runs_dir", str(Path(work_dir) / "runs"),
        *args,
        "--trainer.accelerator=cpu",
        f"--trainer.devices={devices}",
        "--trainer.strategy=ddp",
        "--trainer.callbacks+=tests._cluster_probe.TrainingProbe",
        f"--trainer.callbacks.output_dir={probe}",
    ]  # fmt: skip
    environment = {**interpreter_environment(), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    # a session of its own, so a timeout can end the ranks Lightning started as well
    process = subprocess.Popen(
        command,
        cwd=PROJECT_ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        raise AssertionError(
            f"recipes.{family} fit on {devices} DDP ranks did not finish in {timeout_s:.0f} s:\n{output[-6000:]}"
        ) from None
    assert process.returncode == 0, (
        f"recipes.{family} fit on {devices} DDP ranks failed ({process.returncode}):\n{output[-6000:]}"
    )
    events = read_events(probe)
    assert sorted(events) == list(range(devices)), f"probe files of ranks {sorted(events)}, expected 0..{devices - 1}"
    results = []
    for rank in range(devices):
        [end] = [event for event in events[rank] if event["event"] == "end"]
        results.append(RankResult(rank, end["global_step"], end["weights_sha256"]))
    return results


def assert_ranks_agree(results: Sequence[RankResult], steps: int) -> None:
    """Every rank trained exactly ``steps`` optimizer steps and ended with bit-identical weights."""
    assert [result.global_step for result in results] == [steps] * len(results), f"steps per rank: {results}"
    digests = {result.weights_sha256 for result in results}
    assert len(digests) == 1, f"the ranks ended with different weights: {results}"
