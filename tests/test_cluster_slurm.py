"""The SLURM path on a real one-host cluster: two slurmd daemons posing as two nodes.

These tests start cluster/local_slurm/ in a temporary folder, submit the project's own batch
scripts from cluster/slurm/ with sbatch and check what the jobs did from their files: per-rank
event logs written by a test-only callback (tests/_cluster_probe.py), checkpoints, W&B run dirs.
They need Debian's slurmctld, slurmd and munge (``cluster/install_slurm.sh``, which ``make test``
runs) and root; without SLURM they are skipped, except in CI where they must run.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch
from _cluster_probe import read_events, weights_digest
from _cluster_slurm import (
    PROJECT_ROOT,
    TERMINAL_STATES,
    LocalSlurmCluster,
    alive,
    checkpoint_step,
    job_processes,
    slurm_installed,
    task_pid,
)
from _deepspeed_roundtrip import (
    assert_converts_and_predict_loads,
    assert_shards_of_both_ranks,
    build_deepspeed_cpu_ops,
)

from recipes.run_identity import wandb_run_id

IN_CI = os.environ.get("CI", "").lower() == "true"

pytestmark = [
    pytest.mark.skipif(
        not slurm_installed() and not IN_CI,
        reason="SLURM is not installed: run cluster/install_slurm.sh as root (make test does) to run the cluster tests",
    ),
    pytest.mark.skipif(
        os.geteuid() != 0 and not IN_CI,
        reason="the local SLURM cluster needs root (slurmd starts job steps as the submitting user)",
    ),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSlurmCluster]:
    """One running cluster for the module; its daemons end with it."""
    local = LocalSlurmCluster(tmp_path_factory.mktemp("slurm"))
    local.start()
    try:
        yield local
    finally:
        local.stop()


def test_a_job_runs_one_task_on_each_node(cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    script = tmp_path / "where.sbatch"
    log = tmp_path / "where.log"
    script.write_text(
        "#!/usr/bin/env bash\n"
        "#SBATCH --nodes=2\n"
        "#SBATCH --ntasks-per-node=1\n"
        "srun bash -c 'echo \"task $SLURM_PROCID of $SLURM_NTASKS on $SLURMD_NODENAME\"'\n"
    )
    job_id = cluster.submit(script, ["--output", str(log)])
    cluster.wait_until_done(job_id, timeout=60, log=log)
    assert sorted(log.read_text().splitlines()) == ["task 0 of 2 on node1", "task 1 of 2 on node2"]


def test_stop_ends_exactly_the_daemons_of_its_cluster(cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    second = LocalSlurmCluster(tmp_path / "second")
    second.start()
    second_pids = second.daemon_pids()
    assert sorted(second_pids) == ["munged", "slurmctld", "slurmd-node1", "slurmd-node2"]
    assert all(alive(pid) for pid in second_pids.values())

    second.stop()

    assert not any(alive(pid) for pid in second_pids.values())
    assert all(alive(pid) for pid in cluster.daemon_pids().values()), "stopping one cluster ended another's daemons"
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
BATCHES_PER_EPOCH = 2
JOB_TIMEOUT_S = 300
REQUEUE_CREDENTIAL_WAIT_S = 2.0  # a job credential must be younger than its revocation, in whole seconds


@pytest.fixture(scope="module")
def demo_shards() -> Path:
    """The demo set, built before any job starts (the jobs' data modules then only read it)."""
    from datamodules.demo import ensure_demo

    return ensure_demo(progress=False)


@dataclasses.dataclass
class TrainingJob:
    """A submitted training job and where it leaves its traces."""

    job_id: int
    run_dir: Path
    probe: Path
    log: Path

    def events(self, rank: int, event: str, restart: int | None = None) -> list[dict]:
        """The probe's ``event`` records of ``rank`` (of one SLURM run of the job, or all)."""
        records = read_events(self.probe).get(rank, [])
        return [e for e in records if e["event"] == event and (restart is None or e["restart"] == restart)]


def submit_training(
    cluster: LocalSlurmCluster,
    script: Path,
    run_name: str,
    folder: Path,
    max_steps: int,
    recipe_options: Sequence[str] = (),
    environment: dict[str, str] | None = None,
    step_delay_s: float = 0.0,
) -> TrainingJob:
    """Submit a batch script as a user would (config, run name and runs folder exported), on CPU.

    Validation is off (these tests are about distribution, not metrics) and so the checkpoint
    callback monitors nothing: it then saves at the end of every epoch. The probe callback records
    every rank's steps, sample keys and final weights.
    """
    runs, probe, log = folder / "runs", folder / "probe", folder / f"{run_name}.log"
    job_id = cluster.submit(
        script,
        [*CPU_ALLOCATION, f"--job-name={run_name}", f"--output={log}"],
        [
            "--trainer.accelerator=cpu",
            f"--trainer.max_steps={max_steps}",
            f"--data.batches_per_epoch={BATCHES_PER_EPOCH}",
            "--trainer.limit_val_batches=0",
            "--checkpoint.monitor=null",
            "--trainer.callbacks+=tests._cluster_probe.TrainingProbe",
            f"--trainer.callbacks.output_dir={probe}",
            f"--trainer.callbacks.step_delay_s={step_delay_s}",
            *recipe_options,
        ],
        env={
            "CONFIG": "tests/configs/gifnet-tiny.yaml",
            "RUN_NAME": run_name,
            "UNIFUSE_RUNS_DIR": str(runs),
            "OMP_NUM_THREADS": "1",  # two ranks share two cores
            **(environment or {}),
        },
    )
    return TrainingJob(job_id, runs / run_name, probe, log)


@pytest.mark.slow
def test_ddp_script_trains_two_nodes_on_different_data_to_identical_weights(
    cluster: LocalSlurmCluster, demo_shards: Path, tmp_path: Path
) -> None:
    max_steps = 2 * BATCHES_PER_EPOCH
    # Without resampling each rank reads its own fixed share of the shards: disjoint samples.
    job = submit_training(
        cluster, DDP_SCRIPT, "ddp", tmp_path, max_steps, ["--data.resampled=false", "--trainer.logger=false"]
    )
    cluster.wait_until_done(job.job_id, JOB_TIMEOUT_S, job.log)

    starts = {rank: job.events(rank, "start") for rank in (0, 1)}
    assert [len(starts[0]), len(starts[1])] == [1, 1], f"one start per rank expected: {starts}"
    assert {starts[rank][0]["world_size"] for rank in (0, 1)} == {2}

    keys = {rank: [key for batch in job.events(rank, "batch") for key in batch["keys"]] for rank in (0, 1)}
    assert keys[0] and keys[1]
    assert not set(keys[0]) & set(keys[1]), f"both ranks trained on the same samples: {set(keys[0]) & set(keys[1])}"

    ends = {rank: job.events(rank, "end") for rank in (0, 1)}
    assert [ends[0][0]["global_step"], ends[1][0]["global_step"]] == [max_steps, max_steps]
    assert ends[0][0]["weights_sha256"] == ends[1][0]["weights_sha256"], "the ranks ended with different weights"

    # One checkpoint of the final state, written once (rank 0); no preemption checkpoint.
    checkpoints = sorted(path.name for path in (job.run_dir / "checkpoints").iterdir())
    assert checkpoints == [f"epoch=1-step={max_steps}.ckpt", "last.ckpt"]
    last = torch.load(job.run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == max_steps
    assert weights_digest(last["state_dict"]) == ends[0][0]["weights_sha256"], (
        "last.ckpt does not hold the final weights"
    )
    assert not list(job.run_dir.glob("hpc_ckpt_*.ckpt"))


def wait_for_training(cluster: LocalSlurmCluster, job: TrainingJob, step: int) -> None:
    """Return once rank 0 finished training step ``step`` in the job's first run."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not any(batch["global_step"] >= step for batch in job.events(0, "batch", restart=0)):
        state = cluster.job(job.job_id).get("JobState")
        if state not in ("RUNNING", "PENDING") or time.monotonic() > deadline:
            raise AssertionError(f"job {job.job_id} is {state} before training step {step}\n{cluster.report(job.log)}")
        time.sleep(0.5)


@pytest.mark.slow
def test_sigusr1_saves_requeues_and_the_job_resumes_where_it_stopped(
    cluster: LocalSlurmCluster, demo_shards: Path, tmp_path: Path
) -> None:
    max_steps = 3 * BATCHES_PER_EPOCH
    # Slow steps, so that the job is still training when the signal comes.
    job = submit_training(cluster, DDP_SCRIPT, "preempt", tmp_path, max_steps, step_delay_s=1.0)
    wait_for_training(cluster, job, step=2)

    # What SLURM does 90 s before the time limit (--signal=SIGUSR1@90): signal every task.
    cluster.command("scancel", "--signal=USR1", str(job.job_id))
    fields = cluster.wait_for(
        job.job_id,
        # past the kill of the first run (COMPLETING), back in the queue or already running again
        lambda f: int(f.get("Restarts", 0)) >= 1 and f["JobState"] not in ("COMPLETING", "REQUEUED"),
        120,
        "a requeue",
        job.log,
    )
    if fields["JobState"] == "PENDING":  # SLURM holds a requeued job ~2 min (BeginTime); let it start now
        cluster.command("scontrol", "update", f"JobId={job.job_id}", "StartTime=now")
    fields = cluster.wait_until_done(job.job_id, JOB_TIMEOUT_S, job.log)
    assert fields["Restarts"] == "1"

    hpc_checkpoints = sorted(job.run_dir.glob("hpc_ckpt_*.ckpt"))
    assert [path.name for path in hpc_checkpoints] == ["hpc_ckpt_1.ckpt"], hpc_checkpoints
    saved_step = torch.load(hpc_checkpoints[0], map_location="cpu", weights_only=False)["global_step"]
    assert 2 <= saved_step < max_steps

    for rank in (0, 1):
        first_run_steps = [batch["global_step"] for batch in job.events(rank, "batch", restart=0)]
        assert max(first_run_steps) == saved_step, f"rank {rank} trained past the step it saved"
        starts = job.events(rank, "start")
        assert [(start["restart"], start["global_step"]) for start in starts] == [(0, 0), (1, saved_step)]
        resumed_steps = [batch["global_step"] for batch in job.events(rank, "batch", restart=1)]
        assert resumed_steps == list(range(saved_step + 1, max_steps + 1)), (
            f"rank {rank} did not continue the global step"
        )

    final = [job.events(rank, "end", restart=1)[-1] for rank in (0, 1)]
    assert [end["global_step"] for end in final] == [max_steps, max_steps]
    assert final[0]["weights_sha256"] == final[1]["weights_sha256"], "the ranks ended with different weights"

    run_id = wandb_run_id("unifuse", "preempt")
    assert [start["wandb_run_id"] for start in job.events(0, "start")] == [run_id, run_id]
    wandb_runs = sorted((job.run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(wandb_runs) == 2, f"both runs of the job should log to W&B run {run_id}: {wandb_runs}"


def requeue_and_start_now(cluster: LocalSlurmCluster, job: TrainingJob, restarts: int) -> None:
    """Wait for the job's ``restarts``-th requeue and let it start at once (SLURM holds it ~2 min)."""
    cluster.wait_for(
        job.job_id,
        lambda f: int(f.get("Restarts", 0)) >= restarts and f["JobState"] not in ("COMPLETING", "REQUEUED"),
        120,
        f"requeue {restarts}",
        job.log,
    )
    # SLURM's hold hides two races that starting at once exposes: the first run's processes must be
    # gone, and slurmd refuses a job credential issued in the same second as the requeue killed the
    # job ("Job credential revoked", "already killed, do not launch").
    deadline = time.monotonic() + 60
    while job_processes(job.job_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(REQUEUE_CREDENTIAL_WAIT_S)
    if cluster.job(job.job_id)["JobState"] == "PENDING":
        cluster.command("scontrol", "update", f"JobId={job.job_id}", "StartTime=now")


def kill_task(cluster: LocalSlurmCluster, job: TrainingJob, rank: int, after_step: int) -> None:
    """SIGKILL the training process of ``rank`` once it finished step ``after_step`` (a process failure)."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not any(batch["global_step"] >= after_step for batch in job.events(rank, "batch", restart=0)):
        assert time.monotonic() < deadline, f"rank {rank} did not reach step {after_step}\n{cluster.report(job.log)}"
        time.sleep(0.2)
    pid = task_pid(job.job_id, rank)
    assert pid is not None, f"no single training process of rank {rank} in job {job.job_id}"
    os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_task_killed_without_a_signal_requeues_the_job_which_resumes_from_its_newest_save(
    cluster: LocalSlurmCluster, demo_shards: Path, tmp_path: Path
) -> None:
    max_steps = 3 * BATCHES_PER_EPOCH
    job = submit_training(
        cluster, DDP_SCRIPT, "task-killed", tmp_path, max_steps, ["--trainer.logger=false"], step_delay_s=1.0
    )
    # past the save at the end of the first epoch: the batch script finds a checkpoint newer than its start
    kill_task(cluster, job, rank=1, after_step=BATCHES_PER_EPOCH + 1)
    requeue_and_start_now(cluster, job, restarts=1)
    fields = cluster.wait_until_done(job.job_id, JOB_TIMEOUT_S, job.log)

    assert fields["Restarts"] == "1"
    assert "requeueing to resume from the newest checkpoint" in job.log.read_text()
    for rank in (0, 1):
        starts = [(start["restart"], start["global_step"]) for start in job.events(rank, "start")]
        assert starts == [(0, 0), (1, BATCHES_PER_EPOCH)], f"rank {rank} did not resume from the newest save: {starts}"
        assert job.events(rank, "end")[-1]["global_step"] == max_steps


@pytest.mark.slow
def test_a_task_killed_before_any_save_fails_the_job_instead_of_requeueing_it(
    cluster: LocalSlurmCluster, demo_shards: Path, tmp_path: Path
) -> None:
    # a failure that would recur before the first save must not requeue the job forever
    job = submit_training(
        cluster,
        DDP_SCRIPT,
        "killed-early",
        tmp_path,
        3 * BATCHES_PER_EPOCH,
        ["--trainer.logger=false"],
        step_delay_s=1.0,
    )
    kill_task(cluster, job, rank=1, after_step=1)
    fields = cluster.wait_for(job.job_id, lambda f: f.get("JobState") in TERMINAL_STATES, 120, "the end", job.log)

    assert (fields["JobState"], fields["Restarts"]) == ("FAILED", "0"), cluster.report(job.log)
    assert "not requeued" in job.log.read_text()


@pytest.mark.slow
def test_a_restart_without_the_signal_resumes_from_the_newest_save_not_an_older_hpc_checkpoint(
    cluster: LocalSlurmCluster, demo_shards: Path, tmp_path: Path
) -> None:
    max_steps = 12 * BATCHES_PER_EPOCH  # long enough to kill the resumed run while it trains
    job = submit_training(
        cluster, DDP_SCRIPT, "stale-hpc", tmp_path, max_steps, ["--trainer.logger=false"], step_delay_s=1.0
    )
    # 1. preemption: SIGUSR1, every rank saves hpc_ckpt_1.ckpt, the job requeues itself and resumes from it
    wait_for_training(cluster, job, step=2)
    cluster.command("scancel", "--signal=USR1", str(job.job_id))
    requeue_and_start_now(cluster, job, restarts=1)
    hpc_step = checkpoint_step(job.run_dir / "hpc_ckpt_1.ckpt")
    assert hpc_step is not None and hpc_step < max_steps - BATCHES_PER_EPOCH

    # 2. the resumed run trains on past an epoch end, where last.ckpt is saved after the hpc checkpoint
    past_save = hpc_step + BATCHES_PER_EPOCH + 1
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not any(batch["global_step"] >= past_save for batch in job.events(0, "batch", restart=1)):
        assert cluster.job(job.job_id)["JobState"] in ("RUNNING", "PENDING"), cluster.report(job.log)
        assert time.monotonic() < deadline, f"the resumed run did not reach step {past_save}\n{cluster.report(job.log)}"
        time.sleep(0.2)

    # 3. a node failure: the tasks die by SIGKILL, no signal to save on; then the job is restarted
    cluster.command("scancel", "--signal=KILL", str(job.job_id))
    cluster.wait_for(job.job_id, lambda f: f.get("JobState") in TERMINAL_STATES, 120, "the kill", job.log)
    last_step = checkpoint_step(job.run_dir / "checkpoints" / "last.ckpt")
    assert last_step is not None and hpc_step < last_step < max_steps, (last_step, hpc_step)
    cluster.command("scontrol", "requeue", str(job.job_id))
    requeue_and_start_now(cluster, job, restarts=2)
    cluster.wait_until_done(job.job_id, JOB_TIMEOUT_S, job.log)

    for rank in (0, 1):
        starts = [(start["restart"], start["global_step"]) for start in job.events(rank, "start")]
        assert starts == [(0, 0), (1, hpc_step), (2, last_step)], f"rank {rank} resumed from an older save: {starts}"
        assert job.events(rank, "end")[-1]["global_step"] == max_steps


@pytest.mark.slow
def test_deepspeed_script_trains_zero2_and_its_checkpoint_converts_for_predict(
    cluster: LocalSlurmCluster, demo_shards: Path, tmp_path: Path
) -> None:
    build_deepspeed_cpu_ops()  # compiled (once per machine) before the ranks start
    max_steps = BATCHES_PER_EPOCH
    job = submit_training(
        cluster,
        DEEPSPEED_SCRIPT,
        "zero2",
        tmp_path,
        max_steps,
        ["--trainer.logger=false"],
        # Lightning's DeepSpeed strategy wants CUDA; the test-only subclass runs it on CPU processes.
        environment={"ZERO_STAGE": "2", "DEEPSPEED_STRATEGY": "tests._deepspeed_cpu.CPUDeepSpeedStrategy"},
    )
    cluster.wait_until_done(job.job_id, JOB_TIMEOUT_S, job.log)

    ends = [job.events(rank, "end")[-1] for rank in (0, 1)]
    assert [end["global_step"] for end in ends] == [max_steps, max_steps]
    assert ends[0]["weights_sha256"] == ends[1]["weights_sha256"], "the ranks ended with different weights"
    checkpoint_dir = job.run_dir / "checkpoints" / "last.ckpt"
    assert_shards_of_both_ranks(checkpoint_dir, stage=2)
    assert_converts_and_predict_loads(checkpoint_dir, ends[0]["weights_sha256"], max_steps, tmp_path)
