"""Run identity: which checkpoint a command starts from, and when a fresh ``fit`` must refuse.

A run directory ``<runs_dir>/<run_name>`` is one run. Reusing a command must never mix two runs
in it, nor go back to an older save:

- ``fit`` without ``--ckpt_path`` into a directory that holds checkpoints refuses, naming the ways
  on: ``--ckpt_path last`` (resume), a new ``--run_name``, or ``--overwrite true`` (which deletes
  the old checkpoints first, so none of them can be resumed by mistake later, and starts a new
  W&B run: the run's generation, counted in the run directory, is part of the W&B run id).
- A restarted SLURM job (``SLURM_RESTART_COUNT`` > 0: a requeue after preemption or a node
  failure) resumes by itself, from the *newest* save of the run: Lightning alone would take an
  ``hpc_ckpt_*.ckpt`` whenever one exists, even one older than ``last.ckpt``, and so go back in
  time after a restart that came without the requeue signal.
- ``--ckpt_path last`` also means the newest of ``checkpoints/last.ckpt`` and the ``hpc``
  checkpoints (Lightning's ``last`` ignores the latter).
- ``validate``, ``test`` and ``predict`` without ``--ckpt_path`` would run a randomly initialised
  network: an error, unless ``--untrained true`` asks for exactly that.

"Newest" is by modification time; a DeepSpeed checkpoint is a directory, dated by its newest file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

from pytorch_lightning.utilities import rank_zero_only

log = logging.getLogger(__name__)

HPC_CHECKPOINTS = "hpc_ckpt_*.ckpt"
"""Lightning's name for the checkpoints saved on the SLURM requeue signal, in the run directory."""


class RunDirectoryError(ValueError):
    """A command would mix two runs in one run directory, or run without trained weights."""


GENERATION_FILE = "generation"
"""In the run directory: how often ``--overwrite`` started the run afresh (absent: never)."""


def run_generation(run_dir: Path) -> int:
    path = Path(run_dir) / GENERATION_FILE
    return int(path.read_text()) if path.is_file() else 0


def wandb_run_id(project: str, run_name: str, run_dir: Path | None = None) -> str:
    """The W&B run id of a run: stable across restarts, distinct across projects sharing a run name.

    With ``run_dir``, a run started afresh by ``--overwrite`` gets a new id (its generation is part of
    it), so its steps, counted from 0 again, never land in the discarded run's W&B history.
    """
    generation = run_generation(run_dir) if run_dir is not None else 0
    key = f"{project}/{run_name}" + (f"/{generation}" if generation else "")
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def slurm_restart_count() -> int:
    """How often SLURM restarted this job (0 outside SLURM and in a job's first run)."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def _modified(path: Path) -> float:
    if path.is_dir():
        return max((item.stat().st_mtime for item in path.rglob("*") if item.is_file()), default=path.stat().st_mtime)
    return path.stat().st_mtime


def saved_checkpoints(run_dir: Path, checkpoint_dir: Path) -> list[Path]:
    """Every checkpoint of the run: the ``hpc`` ones and all of ``checkpoint_dir`` (last and best)."""
    found = sorted(Path(run_dir).glob(HPC_CHECKPOINTS))
    if Path(checkpoint_dir).is_dir():
        found += sorted(Path(checkpoint_dir).glob("*.ckpt"))
    return found


def newest_resume_checkpoint(run_dir: Path, checkpoint_dir: Path) -> Path | None:
    """The newest of ``last.ckpt`` and the ``hpc`` checkpoints (or of any checkpoint, if neither exists)."""
    candidates = sorted(Path(run_dir).glob(HPC_CHECKPOINTS))
    last = Path(checkpoint_dir) / "last.ckpt"
    if last.exists():
        candidates.append(last)
    candidates = candidates or saved_checkpoints(run_dir, checkpoint_dir)
    return max(candidates, key=_modified, default=None)


def _delete(paths: list[Path]) -> None:
    # Every rank of a multi-node job may get here at once: what another rank removed is gone already.
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def fit_checkpoint(ckpt_path: str | None, run_dir: Path, checkpoint_dir: Path, overwrite: bool) -> str | None:
    """The checkpoint ``fit`` starts from (``None``: a fresh start), or :class:`RunDirectoryError`."""
    if ckpt_path == "last":
        newest = newest_resume_checkpoint(run_dir, checkpoint_dir)
        if newest is None:
            log.warning("--ckpt_path last: %s holds no checkpoint yet, so training starts from scratch", run_dir)
        return None if newest is None else str(newest)
    if ckpt_path is not None:
        return ckpt_path
    existing = saved_checkpoints(run_dir, checkpoint_dir)
    if not existing:
        return None
    if slurm_restart_count() > 0:
        newest = newest_resume_checkpoint(run_dir, checkpoint_dir)
        log.info("SLURM restart %d: resuming from the newest checkpoint, %s", slurm_restart_count(), newest)
        return str(newest)
    if overwrite:
        log.warning("--overwrite: deleting the checkpoints of the earlier run in %s", run_dir)
        _delete(existing)
        if rank_zero_only.rank == 0:  # one writer; the W&B run that counts is rank 0's
            (Path(run_dir) / GENERATION_FILE).write_text(f"{run_generation(run_dir) + 1}\n")
        return None
    shown = ", ".join(str(path.relative_to(run_dir)) for path in existing[:4]) + (", ..." if len(existing) > 4 else "")
    raise RunDirectoryError(
        f"the run directory {run_dir} already holds checkpoints of an earlier run ({shown}); a fresh fit would "
        f"overwrite them. Resume that run with --ckpt_path last, start a new run with --run_name NEW_NAME, "
        f"or discard the old checkpoints with --overwrite true."
    )


def evaluation_checkpoint(
    subcommand: str, ckpt_path: str | None, run_dir: Path, checkpoint_dir: Path, untrained: bool
) -> str | None:
    """The checkpoint ``validate`` / ``test`` / ``predict`` load, or :class:`RunDirectoryError`."""
    if ckpt_path == "last":
        newest = newest_resume_checkpoint(run_dir, checkpoint_dir)
        if newest is None:
            raise RunDirectoryError(
                f"{subcommand} --ckpt_path last: {run_dir} holds no checkpoint; check --run_name and --runs_dir, "
                f"or pass the checkpoint file"
            )
        return str(newest)
    if ckpt_path is None and not untrained:
        raise RunDirectoryError(
            f"{subcommand} needs trained weights: pass --ckpt_path (a checkpoint file, or 'last' for the newest "
            f"checkpoint of --run_name), or --untrained true to run the randomly initialised network on purpose"
        )
    return ckpt_path
