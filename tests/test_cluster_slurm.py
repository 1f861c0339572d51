"""The SLURM path on a real one-host cluster: two slurmd daemons posing as two nodes.

These tests start cluster/local_slurm/ in a temporary folder, submit the project's own batch
scripts from cluster/slurm/ with sbatch and check what the jobs did from their files: per-rank
event logs written by a test-only callback (tests/_cluster_probe.py), checkpoints, W&B run dirs.
They need Debian's slurmctld, slurmd and munge (``cluster/install_slurm.sh``, which ``make test``
runs) and root; without SLURM they are skipped, except in CI where they must run.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

from recipes.cli import wandb_run_id
from tests._cluster_probe import read_events, weights_digest
from tests._cluster_slurm import PROJECT_ROOT, LocalSlurmCluster, slurm_installed

IN_CI = os.environ.get("CI", "").lower() == "true"

pytestmark = pytest.mark.skipif(
    not slurm_installed() and not IN_CI,
    reason="SLURM is not installed: run cluster/install_slurm.sh as root (make test does) to run the cluster tests",
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> LocalSlurmCluster:
    """One running cluster for the module; its daemons end with it."""
    local = LocalSlurmCluster(tmp_path_factory.mktemp("slurm"))
    local.start()
    try:
        yield local
    finally:
        local.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_job_runs_one_task_on_each_node(cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    script = tmp_path / "where.sbatch"
    log = tmp_path / "where.log"
    script.write_text(
        "#!/usr/bin/env bash\n"
        "#SBATCH --nodes=2\n"
        "#SBATCH --ntasks-per-node=1\n"
        'srun bash -c \'echo "task $SLURM_PROCID of $SLURM_NTASKS on $SLURMD_NODENAME"\'\n'
    )
    job_id = cluster.submit(script, ["--output", str(log)])
    cluster.wait_until_done(job_id, timeout=60, log=log)
    assert sorted(log.read_text().splitlines()) == ["task 0 of 2 on node1", "task 1 of 2 on node2"]


def test_stop_ends_exactly_the_daemons_of_its_cluster(cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    second = LocalSlurmCluster(tmp_path / "second")
    second.start()
    second_pids = second.daemon_pids()
    assert sorted(second_pids) == ["munged", "slurmctld", "slurmd-node1", "slurmd-node2"]
    assert all(_alive(pid) for pid in second_pids.values())

    second.stop()

    assert not any(_alive(pid) for pid in second_pids.values())
    assert all(_alive(pid) for pid in cluster.daemon_pids().values()), "stopping one cluster ended another's daemons"
    assert "idle" in cluster.command("sinfo", "--noheader", "--format=%T")


def test_start_refuses_a_directory_whose_cluster_is_running(cluster: LocalSlurmCluster) -> None:
    result = subprocess.run(
        [str(PROJECT_ROOT / "cluster" / "local_slurm" / "start.sh"), str(cluster.directory)],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "already running" in result.stderr


# --- the project's batch scripts, training GIFNet's tiny config on the demo shards ------------------

DDP_SCRIPT = PROJECT_ROOT / "cluster" / "slurm" / "ddp.sbatch"
DEEPSPEED_SCRIPT = PROJECT_ROOT / "cluster" / "slurm" / "deepspeed.sbatch"
# Two "nodes" of one task each, on CPU: the GPUs the scripts ask for are dropped.
CPU_ALLOCATION = ["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1"]
JOB_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def demo_shards() -> Path:
    """The demo set, built before any job starts (the jobs' data modules then only read it)."""
    from datamodules.demo import ensure_demo

    return ensure_demo(progress=False)


def job_environment(runs: Path, run_name: str) -> dict[str, str]:
    """What a user would export before sbatch: the config, run name and runs folder."""
    return {
        "CONFIG": "recipes/configs/gifnet-tiny.yaml",
        "RUN_NAME": run_name,
        "UNIFUSE_RUNS_DIR": str(runs),
        "OMP_NUM_THREADS": "1",  # two ranks share two cores
    }


def recipe_arguments(max_steps: int, probe: Path, step_delay_s: float = 0.0) -> list[str]:
    return [
        "--trainer.accelerator=cpu",
        f"--trainer.max_steps={max_steps}",
        "--trainer.callbacks+=tests._cluster_probe.TrainingProbe",
        f"--trainer.callbacks.output_dir={probe}",
        f"--trainer.callbacks.step_delay_s={step_delay_s}",
    ]


def events_of(probe: Path, rank: int, event: str, restart: int | None = None) -> list[dict]:
    return [e for e in read_events(probe).get(rank, []) if e["event"] == event and (restart is None or e["restart"] == restart)]


@pytest.mark.slow
def test_ddp_script_trains_two_nodes_on_different_data_to_identical_weights(
    cluster: LocalSlurmCluster, demo_shards: Path, tmp_path: Path
) -> None:
    runs, probe, log = tmp_path / "runs", tmp_path / "probe", tmp_path / "ddp.log"
    max_steps = 4
    job_id = cluster.submit(
        DDP_SCRIPT,
        [*CPU_ALLOCATION, "--job-name=ddp-test", f"--output={log}"],
        # Each rank reads its own fixed share of the shards, so the ranks' samples are disjoint.
        # Without a monitored metric the checkpoint callback saves at every epoch end, so the
        # last checkpoint holds the final weights whatever validation says.
        [*recipe_arguments(max_steps, probe), "--data.resampled=false", "--checkpoint.monitor=null"],
        env=job_environment(runs, "ddp"),
    )
    cluster.wait_until_done(job_id, JOB_TIMEOUT_S, log)

    starts = {rank: events_of(probe, rank, "start") for rank in (0, 1)}
    assert [len(starts[0]), len(starts[1])] == [1, 1], f"one start per rank expected: {starts}"
    assert {starts[rank][0]["world_size"] for rank in (0, 1)} == {2}

    keys = {rank: [key for batch in events_of(probe, rank, "batch") for key in batch["keys"]] for rank in (0, 1)}
    assert keys[0] and keys[1]
    assert not set(keys[0]) & set(keys[1]), f"both ranks trained on the same samples: {set(keys[0]) & set(keys[1])}"

    ends = {rank: events_of(probe, rank, "end") for rank in (0, 1)}
    assert [ends[0][0]["global_step"], ends[1][0]["global_step"]] == [max_steps, max_steps]
    assert ends[0][0]["weights_sha256"] == ends[1][0]["weights_sha256"], "the ranks ended with different weights"

    checkpoints = runs / "ddp" / "checkpoints"
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == max_steps
    assert weights_digest(last["state_dict"]) == ends[0][0]["weights_sha256"], "last.ckpt does not hold the final weights"
    assert not list((runs / "ddp").glob("hpc_ckpt_*.ckpt")), "no preemption checkpoint without a signal"


def wait_for_training(cluster: LocalSlurmCluster, job_id: int, probe: Path, step: int, log: Path) -> None:
    """Return once rank 0 finished training step ``step`` of the job's first run."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not any(batch["global_step"] >= step for batch in events_of(probe, 0, "batch", restart=0)):
        state = cluster.job(job_id).get("JobState")
        if state != "RUNNING" and state != "PENDING" or time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} is {state} before training step {step}\n{cluster.report(log)}")
        time.sleep(0.5)


@pytest.mark.slow
def test_sigusr1_saves_requeues_and_the_job_resumes_where_it_stopped(
    cluster: LocalSlurmCluster, demo_shards: Path, tmp_path: Path
) -> None:
    runs, probe, log = tmp_path / "runs", tmp_path / "probe", tmp_path / "preempt.log"
    max_steps = 10
    job_id = cluster.submit(
        DDP_SCRIPT,
        [*CPU_ALLOCATION, "--job-name=preempt-test", f"--output={log}"],
        # Slow steps, so the job is still training when the signal comes.
        recipe_arguments(max_steps, probe, step_delay_s=1.0),
        env=job_environment(runs, "preempt"),
    )
    wait_for_training(cluster, job_id, probe, step=2, log=log)

    # What SLURM does 90 s before the time limit (--signal=SIGUSR1@90): signal every task.
    cluster.command("scancel", "--signal=USR1", str(job_id))
    fields = cluster.wait_for(job_id, lambda f: int(f.get("Restarts", 0)) >= 1, 120, "a requeue", log)
    if fields.get("Reason") == "BeginTime":  # SLURM holds a requeued job ~2 min; let it start now
        cluster.command("scontrol", "update", f"JobId={job_id}", "StartTime=now")
    fields = cluster.wait_until_done(job_id, JOB_TIMEOUT_S, log)
    assert fields["Restarts"] == "1"

    hpc_checkpoints = sorted((runs / "preempt").glob("hpc_ckpt_*.ckpt"))
    assert [path.name for path in hpc_checkpoints] == ["hpc_ckpt_1.ckpt"], hpc_checkpoints
    saved_step = torch.load(hpc_checkpoints[0], map_location="cpu", weights_only=False)["global_step"]
    assert 2 <= saved_step < max_steps

    for rank in (0, 1):
        first_run_steps = [batch["global_step"] for batch in events_of(probe, rank, "batch", restart=0)]
        assert max(first_run_steps) == saved_step, f"rank {rank} trained past the step it saved"
        starts = events_of(probe, rank, "start")
        assert [(start["restart"], start["global_step"]) for start in starts] == [(0, 0), (1, saved_step)]
        resumed_steps = [batch["global_step"] for batch in events_of(probe, rank, "batch", restart=1)]
        assert resumed_steps == list(range(saved_step + 1, max_steps + 1)), f"rank {rank} did not continue the global step"
        assert events_of(probe, rank, "end", restart=1)[-1]["global_step"] == max_steps

    final = [events_of(probe, rank, "end", restart=1)[-1]["weights_sha256"] for rank in (0, 1)]
    assert final[0] == final[1], "the ranks ended with different weights"

    run_id = wandb_run_id("preempt")
    assert [start["wandb_run_id"] for start in events_of(probe, 0, "start")] == [run_id, run_id]
    wandb_runs = sorted((runs / "preempt" / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(wandb_runs) == 2, f"both runs of the job should log to W&B run {run_id}: {wandb_runs}"


@pytest.mark.slow
def test_deepspeed_script_trains_zero2_on_two_nodes(cluster: LocalSlurmCluster, demo_shards: Path, tmp_path: Path) -> None:
    runs, probe, log = tmp_path / "runs", tmp_path / "probe", tmp_path / "deepspeed.log"
    max_steps = 3
    job_id = cluster.submit(
        DEEPSPEED_SCRIPT,
        [*CPU_ALLOCATION, "--job-name=deepspeed-test", f"--output={log}"],
        recipe_arguments(max_steps, probe),
        env={
            **job_environment(runs, "zero2"),
            "ZERO_STAGE": "2",
            "DEEPSPEED_STRATEGY": "tests._deepspeed_cpu.CPUDeepSpeedStrategy",  # DeepSpeedStrategy wants CUDA
        },
    )
    cluster.wait_until_done(job_id, JOB_TIMEOUT_S, log)

    ends = [events_of(probe, rank, "end")[-1] for rank in (0, 1)]
    assert [end["global_step"] for end in ends] == [max_steps, max_steps]
    assert ends[0]["weights_sha256"] == ends[1]["weights_sha256"]
    shards = sorted(path.name for path in (runs / "zero2" / "checkpoints" / "last.ckpt").glob("*/*optim_states.pt"))
    assert shards == [f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" for rank in (0, 1)]
