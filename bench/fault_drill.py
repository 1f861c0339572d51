"""Fault drill: one rank of a 2-node DDP job dies by SIGKILL mid-run; the job must requeue and finish.

    python bench/fault_drill.py                         # GIFNet, real data, 30 steps, kill rank 1 after step 13
    python bench/fault_drill.py --repeats 3             # median timings of three drills
    python bench/fault_drill.py --kill-rank 0 --validate --keep DIR   # rank 0 dies; files kept in DIR

Runs as root (the one-host SLURM cluster of cluster/local_slurm/ needs it; tests/_cluster_slurm.py
starts it on free ports in a temporary folder). The job is the project's own batch script,
cluster/slurm/ddp.sbatch, with recipes/configs/gifnet-real.yaml on the shards in data/real (build them
with ``python -m datamodules.shards build-all ../shared/datasets data/real --holdout 10``): two nodes of
one task each on CPU, gloo, W&B offline. So that the drill runs in a few minutes on two busy CPU cores,
the command line shrinks the model (the tiny test config's widths), the batch (4 crops of 64 px, no
loader workers) and the run (``--max-steps``), and saves every ``--save-every`` steps at an epoch end
without validation (``--validate``: validate on one fusion-bench pair per task before each save, as
the config does; minutes per validation on this CPU). A test-only callback (tests/_cluster_probe.py)
records each rank's steps.

The drill: once rank ``--kill-rank`` has trained past ``--kill-after-step`` (between two saves), its
training process gets SIGKILL (a process or node failure: no signal to save on, nothing else is
touched). Then it checks, and prints with PASS/FAIL:

- the job was requeued once and completed (exit 0);
- the surviving rank ended promptly (``srun --kill-on-bad-exit``), not after the collective timeout
  (Lightning's default process group timeout: 1800 s);
- the restart resumed from the newest checkpoint on disk at the kill (every rank's first step);
- the final global step on every rank and in ``last.ckpt`` equals ``--max-steps``, and both ranks
  ended with identical weights;
- every checkpoint file left loads (``torch.load`` and ``GIFNetModule.load_from_checkpoint``);
- the W&B run's history (its offline files, read back) holds no (metric, step) twice, and its
  training loss covers every step.

Timings: detect (kill to the end of the failed step: the survivor's exit), requeue (kill to the job
back in the queue), resume (the requeued job released to its first trained step: start-up of the
processes, checkpoint load, one step), total (submission to completion). SLURM holds a requeued job for
about two minutes (``BeginTime``); the drill skips the hold with ``scontrol update StartTime=now`` (as
an operator can), once the failed run's processes are gone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from lightning_modules.gifnet import GIFNetModule  # noqa: E402  (after the path insert)
from recipes.run_identity import wandb_run_id  # noqa: E402
from recipes.wandb_history import STEP_KEY, history, repeated_steps, run_files  # noqa: E402
from tests._cluster_probe import read_events  # noqa: E402
from tests._cluster_slurm import (  # noqa: E402
    TERMINAL_STATES,
    LocalSlurmCluster,
    alive,
    checkpoint_step,
    job_processes,
    slurm_installed,
    task_pid,
)

DDP_SCRIPT = PROJECT_ROOT / "cluster" / "slurm" / "ddp.sbatch"
CONFIG = "recipes/configs/gifnet-real.yaml"
TINY_MODEL = [  # tests/configs/gifnet-tiny.yaml's network
    "--model.encoder_growth=8",
    "--model.reconstruction_channels=[16,8]",
    "--model.decoder_pointwise_channels=[26,16]",
    "--model.decoder_channels=[16,8]",
    "--model.position_hidden=16",
    "--model.ms_ssim_scales=3",
    "--model.warmup_steps=1",
    "--model.val_panel_size=1",
]
RUN_NAME = "fault-drill"
POLL_S = 0.1
REQUEUE_CREDENTIAL_WAIT_S = 2.0  # see run_drill
TIMINGS = ("detect", "requeue", "resume", "total")


def save_points(every: int, validate: bool) -> list[str]:
    """Options that save a checkpoint every ``every`` steps: after validation, or at the end of every epoch."""
    if validate:  # as the config does, on one fusion-bench pair per task
        return [f"--trainer.val_check_interval={every}", "--data.val_pairs_per_task=1"]
    # no validation: the checkpoint callbacks then save at every epoch end, and an epoch is `every` batches
    return [
        f"--data.batches_per_epoch={every}",
        "--trainer.val_check_interval=null",
        "--trainer.check_val_every_n_epoch=1",
        "--trainer.limit_val_batches=0",
        "--checkpoint.monitor=null",
    ]


class Drill:
    """The drill's state: cluster, job, where its traces are, and the timings it measured."""

    def __init__(self, folder: Path, options: argparse.Namespace) -> None:
        self.folder = folder
        self.options = options
        self.cluster = LocalSlurmCluster(folder / "slurm")
        self.probe = folder / "probe"
        self.log = folder / "job.log"
        self.run_dir = folder / "runs" / RUN_NAME
        self.job_id = 0
        self.times: dict[str, float] = {}
        self.checks: list[tuple[str, bool, str]] = []

    def check(self, name: str, passed: bool, detail: str = "") -> None:
        self.checks.append((name, passed, detail))
        print(f"  [{'PASS' if passed else 'FAIL'}] {name}{': ' + detail if detail else ''}", flush=True)

    def events(self, rank: int, event: str, restart: int | None = None) -> list[dict]:
        return [
            e
            for e in read_events(self.probe).get(rank, [])
            if e["event"] == event and (restart is None or e["restart"] == restart)
        ]

    def submit(self) -> None:
        o = self.options
        self.times["submit"] = time.monotonic()
        self.job_id = self.cluster.submit(
            DDP_SCRIPT,
            [
                "--nodes=2",
                "--ntasks-per-node=1",
                "--gpus-per-node=0",
                "--cpus-per-task=1",
                f"--job-name={RUN_NAME}",
                f"--output={self.log}",
            ],
            [
                "--trainer.accelerator=cpu",
                f"--trainer.max_steps={o.max_steps}",
                "--trainer.log_every_n_steps=1",
                "--trainer.enable_progress_bar=false",
                f"--data.batch_size={o.batch_size}",
                f"--data.crop_size={o.crop_size}",
                "--data.num_workers=0",
                *save_points(o.save_every, o.validate),
                *TINY_MODEL,
                "--trainer.callbacks+=tests._cluster_probe.TrainingProbe",
                f"--trainer.callbacks.output_dir={self.probe}",
                f"--trainer.callbacks.step_delay_s={o.step_delay_s}",
            ],
            env={
                "CONFIG": CONFIG,
                "RUN_NAME": RUN_NAME,
                "UNIFUSE_RUNS_DIR": str(self.run_dir.parent),
                "OMP_NUM_THREADS": "1",
                "WANDB_MODE": "offline",
            },
        )
        print(f"job {self.job_id} submitted; log {self.log}", flush=True)

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> float:
        """Poll ``condition`` until it holds; the time it did. Raises with the job's logs after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not reached in {timeout:.0f}s\n{self.cluster.report(self.log)}")
            time.sleep(POLL_S)
        return time.monotonic()

    def job_state(self) -> dict[str, str]:
        return self.cluster.job(self.job_id)


def newest_checkpoint(run_dir: Path) -> tuple[Path | None, int | None]:
    files = [path for path in run_dir.rglob("*.ckpt") if path.is_file()]
    if not files:
        return None, None
    newest = max(files, key=lambda path: path.stat().st_mtime)
    return newest, checkpoint_step(newest)


def run_drill(drill: Drill) -> None:
    o = drill.options
    cluster = drill.cluster
    cluster.start()
    drill.submit()
    survivor = 1 - o.kill_rank

    # 1. train until the rank to kill is past kill_after_step, with a checkpoint behind it
    drill.wait(
        lambda: any(e["global_step"] >= o.kill_after_step for e in drill.events(o.kill_rank, "batch", 0)),
        o.timeout,
        f"rank {o.kill_rank} at step {o.kill_after_step}",
    )
    victim, survivor_pid = task_pid(drill.job_id, o.kill_rank), task_pid(drill.job_id, survivor)
    assert victim and survivor_pid, f"training processes not found: rank {o.kill_rank} {victim}, {survivor_pid}"
    os.kill(victim, signal.SIGKILL)
    killed = drill.times["kill"] = time.monotonic()
    steps_at_kill = {rank: max(e["global_step"] for e in drill.events(rank, "batch", 0)) for rank in (0, 1)}
    print(f"SIGKILL to rank {o.kill_rank} (pid {victim}) at step {steps_at_kill[o.kill_rank]}", flush=True)

    # 2. the failed step ends: the survivor exits (srun --kill-on-bad-exit), the job requeues itself
    drill.times["detect"] = drill.wait(lambda: not alive(survivor_pid), o.timeout, "the survivor's exit") - killed
    newest, newest_step = newest_checkpoint(drill.run_dir)
    print(f"newest checkpoint after the kill: {newest} (step {newest_step})", flush=True)
    fields: dict[str, str] = {}

    def requeued() -> bool:
        fields.update(drill.job_state())
        return int(fields.get("Restarts", 0)) >= 1 or fields.get("JobState") in TERMINAL_STATES

    drill.times["requeue"] = drill.wait(requeued, o.timeout, "a requeue") - killed
    if int(fields.get("Restarts", 0)) < 1:
        drill.check("the job was requeued", False, f"it ended {fields.get('JobState')} ({fields.get('ExitCode')})")
        return
    drill.wait(lambda: drill.job_state().get("JobState") not in ("COMPLETING", "REQUEUED"), o.timeout, "pending")
    # SLURM's hold hides two races that starting at once exposes: the failed run's processes must be
    # gone, and slurmd refuses a job credential issued in the same second as the requeue killed the
    # job ("Job credential revoked")
    drill.wait(lambda: not job_processes(drill.job_id), o.timeout, "the end of the failed run's processes")
    time.sleep(REQUEUE_CREDENTIAL_WAIT_S)
    state = drill.job_state()
    if state["JobState"] == "PENDING":  # SLURM's hold of a requeued job (Reason=BeginTime)
        cluster.command("scontrol", "update", f"JobId={drill.job_id}", "StartTime=now")
        print(f"requeued job held until {state.get('StartTime')} ({state.get('Reason')}); started now", flush=True)

    # 3. the requeued run starts and trains its first step again
    released = time.monotonic()
    first_step = drill.wait(lambda: bool(drill.events(0, "batch", 1)), o.timeout, "a resumed step")
    drill.times["resume"] = first_step - released
    done = cluster.wait_until_done(drill.job_id, o.timeout, drill.log)
    drill.times["total"] = time.monotonic() - drill.times["submit"]

    # 4. checks
    drill.check("the job was requeued once and completed", done["Restarts"] == "1", f"Restarts={done['Restarts']}")
    drill.check(
        "the surviving rank did not wait for the collective timeout",
        drill.times["detect"] < o.hang_bound_s,
        f"it ended {drill.times['detect']:.1f}s after the kill (bound {o.hang_bound_s:.0f}s; the timeout is 1800s)",
    )
    drill.check(
        "a checkpoint lay between the start and the kill",
        newest_step is not None and 0 < newest_step < steps_at_kill[o.kill_rank],
        f"newest save at step {newest_step}, killed at step {steps_at_kill[o.kill_rank]}",
    )
    resumed_at = {rank: [e["global_step"] for e in drill.events(rank, "start", 1)] for rank in (0, 1)}
    drill.check(
        "both ranks resumed from the newest checkpoint",
        resumed_at == {0: [newest_step], 1: [newest_step]},
        f"restart started at {resumed_at}, newest save step {newest_step}",
    )
    ends = {rank: drill.events(rank, "end", 1) for rank in (0, 1)}
    final = {rank: [e["global_step"] for e in ends[rank]] for rank in (0, 1)}
    last_step = checkpoint_step(drill.run_dir / "checkpoints" / "last.ckpt")
    drill.check(
        "the final global step equals max_steps",
        final == {0: [o.max_steps], 1: [o.max_steps]} and last_step == o.max_steps,
        f"ranks {final}, last.ckpt {last_step}, planned {o.max_steps}",
    )
    digests = {e["weights_sha256"] for rank in (0, 1) for e in ends[rank]}
    drill.check("both ranks ended with identical weights", len(digests) == 1, f"{len(digests)} distinct digests")
    checkpoints = sorted(path for path in drill.run_dir.rglob("*.ckpt") if path.is_file())
    unloadable = []
    for path in checkpoints:
        try:
            torch.load(path, map_location="cpu", weights_only=False)
            GIFNetModule.load_from_checkpoint(path, map_location="cpu")
        except Exception as error:  # report every bad file, whatever the failure
            unloadable.append(f"{path.name}: {error}")
    drill.check(
        "every checkpoint file loads",
        bool(checkpoints) and not unloadable,
        ", ".join(str(path.relative_to(drill.run_dir)) for path in checkpoints) + "; " + "; ".join(unloadable),
    )
    files = run_files(drill.run_dir, wandb_run_id("unifuse", RUN_NAME))
    rows = [row for path in files for row in history(path)]
    repeated = repeated_steps(rows)
    drill.check(
        "the W&B history holds no (metric, step) twice",
        bool(rows) and not repeated,
        f"{len(files)} run files, {len(rows)} rows; repeated: {repeated[:8]}{' ...' if len(repeated) > 8 else ''}",
    )
    loss_steps = sorted(row[STEP_KEY] for row in rows if "train/loss" in row)
    # Lightning logs a step's loss under the step count before it: 0 .. max_steps - 1
    missing = sorted(set(range(o.max_steps)) - set(loss_steps))
    drill.check(
        "the W&B training loss covers every step",
        not missing,
        f"{len(loss_steps)} loss rows; missing steps {missing}",
    )
    drill.times["lost_steps"] = steps_at_kill[o.kill_rank] - (newest_step or 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-steps", type=int, default=30, help="planned global steps")
    parser.add_argument("--save-every", type=int, default=10, help="checkpoint every N steps")
    parser.add_argument(
        "--validate",
        action="store_true",
        help="validate before each checkpoint, as the config does (one pair per task; minutes per validation on CPU)",
    )
    parser.add_argument("--kill-after-step", type=int, default=13, help="kill once the rank trained past this step")
    parser.add_argument("--kill-rank", type=int, default=1, choices=(0, 1), help="global rank whose process dies")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--step-delay-s", type=float, default=0.0, help="sleep after each step (slows the run)")
    parser.add_argument("--hang-bound-s", type=float, default=60.0, help="the survivor must exit within this")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up waiting for any phase after this")
    parser.add_argument("--repeats", type=int, default=1, help="run the drill this many times (median timings)")
    parser.add_argument("--keep", type=Path, help="keep the drills' files here (default: a temporary folder)")
    options = parser.parse_args()
    if not slurm_installed() or os.geteuid() != 0:
        print("the drill needs SLURM (cluster/install_slurm.sh) and root", file=sys.stderr)
        return 2
    if not (PROJECT_ROOT / "data" / "real" / "roadscene").is_dir():
        print(
            "no shards in data/real: python -m datamodules.shards build-all ../shared/datasets data/real --holdout 10"
        )
        return 2
    if not options.save_every < options.kill_after_step < options.max_steps:
        parser.error("need --save-every < --kill-after-step < --max-steps (a save before the kill, steps after it)")

    drills = []
    for repeat in range(options.repeats):
        print(f"--- drill {repeat + 1} of {options.repeats}", flush=True)
        drills.append(one_drill(options, None if options.keep is None else options.keep / f"drill{repeat + 1}"))
    timings = {
        name: statistics.median(drill.times[name] for drill in drills)
        for name in TIMINGS
        if all(name in drill.times for drill in drills)
    }
    print(
        f"timings, median of {len(drills)}: "
        + ", ".join(f"{name} {value:.1f}s" for name, value in timings.items())
        + " (SLURM's hold of the requeued job skipped)"
    )
    checks = [ok for drill in drills for _, ok, _ in drill.checks]
    passed = all(bool(drill.checks) and all(ok for _, ok, _ in drill.checks) for drill in drills)
    print("PASS" if passed else "FAIL", f"({sum(checks)}/{len(checks)} checks in {len(drills)} drills)")
    return 0 if passed else 1


def one_drill(options: argparse.Namespace, keep: Path | None) -> Drill:
    """Run the drill once in ``keep`` (or a temporary folder, removed after); prints its checks and timings."""
    folder = Path(tempfile.mkdtemp(prefix="fault-drill-")) if keep is None else keep
    folder.mkdir(parents=True, exist_ok=True)
    drill = Drill(folder, options)
    try:
        run_drill(drill)
    except (TimeoutError, AssertionError, RuntimeError) as error:
        drill.check("the drill ran to the end", False, str(error))
    finally:
        drill.cluster.stop()
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    t = drill.times
    print(
        "timings: "
        + ", ".join(f"{name} {t[name]:.1f}s" for name in TIMINGS if name in t)
        + (f"; steps trained twice: {t['lost_steps']:.0f}" if "lost_steps" in t else "")
    )
    return drill


if __name__ == "__main__":
    sys.exit(main())
