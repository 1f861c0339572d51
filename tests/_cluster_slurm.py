"""Test helpers: drive the one-host SLURM cluster of cluster/local_slurm/ from pytest.

:class:`LocalSlurmCluster` starts the cluster on free ports in a folder of the test's choosing,
submits batch scripts with ``sbatch``, reads job state with ``scontrol`` and stops exactly its own
daemons. Failures carry the job's log and the controller's log, since a batch job's output is the
only trace it leaves.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
INTERPRETER_BIN = str(Path(sys.executable).parent)
"""The bin folder of the interpreter running the tests (the venv's): its tools, like the ninja that
compiles DeepSpeed's ops, must be the ones every process uses, or the compiled-op cache is rebuilt."""
LOCAL_SLURM = PROJECT_ROOT / "cluster" / "local_slurm"
SBIN_PATH = "/usr/sbin:/sbin"  # where Debian puts slurmctld, slurmd and munged
TERMINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}


def interpreter_environment(extra_path: str = "") -> dict[str, str]:
    """This process's environment with :data:`INTERPRETER_BIN` first on PATH (and ``extra_path`` last)."""
    path = os.pathsep.join(part for part in (INTERPRETER_BIN, os.environ.get("PATH", ""), extra_path) if part)
    return {**os.environ, "PATH": path}


def slurm_installed() -> bool:
    """True when the SLURM daemons and munge are installed (cluster/install_slurm.sh puts them there)."""
    path = f"{os.environ.get('PATH', '')}:{SBIN_PATH}"
    return all(shutil.which(command, path=path) for command in ("slurmctld", "slurmd", "munged", "sbatch"))


def free_port_block(count: int, first: int = 30000, last: int = 32000) -> int:
    """The first port of ``count`` consecutive ports that nothing on this machine listens on now."""
    for base in range(first, last - count):
        try:
            for port in range(base, base + count):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {count} consecutive free ports in {first}..{last}")


def alive(pid: int) -> bool:
    """Whether a process with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def job_processes(job_id: int) -> dict[int, tuple[list[bytes], dict[bytes, bytes], str]]:
    """The processes of a job on this machine (every node of the one-host cluster is here).

    pid -> (command line, environment, the parent's name); read from /proc, which needs root for
    other users' processes.
    """
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environment = dict(
                item.split(b"=", 1) for item in (proc / "environ").read_bytes().split(b"\0") if b"=" in item
            )
            if environment.get(b"SLURM_JOB_ID") != str(job_id).encode():
                continue
            command = (proc / "cmdline").read_bytes().split(b"\0")
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            found[int(proc.name)] = (command, environment, Path(f"/proc/{parent}/comm").read_text().strip())
        except (OSError, ValueError, IndexError):  # ended while being read
            continue
    return found


def task_pid(job_id: int, rank: int, argument: str = "fit") -> int | None:
    """The pid of the job's task of global rank ``rank`` whose command line holds ``argument``.

    A task is a process slurmstepd started (not one it forked, like a data loader worker); the batch
    script, which slurmstepd starts too and which has rank 0's SLURM_PROCID, lacks the argument.
    """
    found = [
        pid
        for pid, (command, environment, parent) in job_processes(job_id).items()
        if parent == "slurmstepd"
        and argument.encode() in command
        and environment.get(b"SLURM_PROCID") == str(rank).encode()
    ]
    return found[0] if len(found) == 1 else None


def checkpoint_step(path: Path) -> int | None:
    """The global step saved in a checkpoint file, or None while it is missing or half written."""
    import torch  # here: the cluster commands need no torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])
    except Exception:  # a file the job is writing fails to load in many ways
        return None


def tail(path: Path, lines: int = 60) -> str:
    """The last ``lines`` lines of a text file, or a note that it does not exist."""
    if not path.is_file():
        return f"<{path} does not exist>"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class LocalSlurmCluster:
    """The two-node cluster of cluster/local_slurm/start.sh, state under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.env = {**interpreter_environment(SBIN_PATH), "SLURM_CONF": str(self.directory / "slurm.conf")}

    def start(self) -> None:
        """Start munged, slurmctld and two slurmd on free ports; returns when both nodes are idle."""
        env = {**self.env, "UNIFUSE_SLURM_PORT": str(free_port_block(3))}
        self._run([str(LOCAL_SLURM / "start.sh"), str(self.directory)], env=env, timeout=60)

    def stop(self) -> None:
        """Cancel the cluster's jobs and end its daemons (cluster/local_slurm/stop.sh)."""
        self._run([str(LOCAL_SLURM / "stop.sh"), str(self.directory)], env=self.env, timeout=60)

    def daemon_pids(self) -> dict[str, int]:
        """Pid per daemon from the cluster's pid files (``munged``, ``slurmctld``, ``slurmd-node1``, ...)."""
        return {path.stem: int(path.read_text().strip()) for path in sorted((self.directory / "run").glob("*.pid"))}

    def command(self, *args: str, timeout: float = 30) -> str:
        """Run a SLURM client command against this cluster; its stdout."""
        return self._run(list(args), env=self.env, timeout=timeout)

    def submit(
        self,
        script: Path,
        sbatch_options: Sequence[str] = (),
        script_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> int:
        """``sbatch`` a script from the project root (as a user would); the job id."""
        output = self._run(
            ["sbatch", "--parsable", *sbatch_options, str(script), *script_args],
            env={**self.env, **(env or {})},
            cwd=PROJECT_ROOT,
            timeout=30,
        )
        return int(output.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """``scontrol show job``'s fields of a job (JobState, Restarts, Reason, ExitCode, ...)."""
        text = self.command("scontrol", "--oneliner", "show", "job", str(job_id))
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def wait_for(
        self, job_id: int, condition: Callable[[dict[str, str]], bool], timeout: float, what: str, log: Path
    ) -> dict[str, str]:
        """Poll until ``condition(fields)`` holds; after ``timeout``, fail with the job's and slurmctld's logs."""
        deadline = time.monotonic() + timeout
        while True:
            fields = self.job(job_id)
            if condition(fields):
                return fields
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"job {job_id}: {what} not reached in {timeout:.0f}s; now "
                    f"{fields.get('JobState')}\n{self.report(log)}"
                )
            time.sleep(0.5)

    def wait_until_done(self, job_id: int, timeout: float, log: Path) -> dict[str, str]:
        """Wait for the job to end; assert it COMPLETED with exit code 0, else show its logs."""
        fields = self.wait_for(job_id, lambda f: f.get("JobState") in TERMINAL_STATES, timeout, "the end", log)
        assert fields["JobState"] == "COMPLETED" and fields["ExitCode"] == "0:0", (
            f"job {job_id} ended {fields['JobState']} with exit code {fields['ExitCode']}\n{self.report(log)}"
        )
        return fields

    def report(self, log: Path) -> str:
        """The job log's and the controller log's tails, for failure messages."""
        return (
            f"--- job log {log}:\n{tail(log)}\n--- slurmctld log:\n{tail(self.directory / 'log' / 'slurmctld.log', 20)}"
        )

    @staticmethod
    def _run(command: list[str], env: Mapping[str, str], timeout: float, cwd: Path | None = None) -> str:
        result = subprocess.run(command, env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result.stdout
