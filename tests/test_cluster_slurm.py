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
from pathlib import Path

import pytest

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
