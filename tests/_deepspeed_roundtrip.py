"""Test helpers for the DeepSpeed runs: the CPU op built up front, and a sharded checkpoint ->
``convert-checkpoint`` -> ``predict`` as a user runs them.

Shared by the DeepSpeed tests with and without SLURM: both end with a Lightning DeepSpeed
checkpoint directory and the probe's digest of the weights the ranks ended with. (Runs only in the
test process; the job-side modules are _deepspeed_cpu.py and _cluster_probe.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _cluster_probe import weights_digest
from _cluster_slurm import PROJECT_ROOT, interpreter_environment
from PIL import Image

TINY_CONFIG = "tests/configs/gifnet-tiny.yaml"
STALE_LOCK_S = 15 * 60
"""A compile lock older than this is a leftover: compiling the op takes a few minutes at most."""


def build_deepspeed_cpu_ops() -> Path:
    """Compile, or load from ``$TORCH_EXTENSIONS_DIR``, the op DeepSpeed's CPU backend loads at start; its folder.

    Done once in the test process before any run, so that two ranks never compile it side by side.
    torch guards a compile with a ``lock`` file; a process killed while holding it (a cancelled job,
    a timed-out test) leaves it behind, and every later load then waits forever. Such a leftover,
    recognised by its age, is removed first.
    """
    from deepspeed.accelerator import get_accelerator
    from torch.utils.cpp_extension import _get_build_directory

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    build_dir = Path(_get_build_directory(builder.NAME, verbose=False))
    lock = build_dir / "lock"
    if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_S:
        lock.unlink()
    # The same ninja as the runs use (theirs comes first on PATH), or they would rebuild it.
    path_before = os.environ.get("PATH", "")
    os.environ["PATH"] = interpreter_environment()["PATH"]
    try:
        builder.load()
    finally:
        os.environ["PATH"] = path_before
    return build_dir


def run_recipe(*args: str, timeout: float = 300) -> str:
    """``python -m recipes.gifnet ARGS`` from the project root; its output, or a failure showing it."""
    env = {**interpreter_environment(), "OMP_NUM_THREADS": "1"}  # two ranks share two cores
    result = subprocess.run(
        [sys.executable, "-m", "recipes.gifnet", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, (
        f"recipes.gifnet {' '.join(args[:1])} failed ({result.returncode}):\n{output[-6000:]}"
    )
    return output


def write_pairs(root: Path, count: int) -> None:
    """``count`` small infrared-visible pairs (grey a, colour b) in the task-folder layout of datamodules/pairs.py."""
    rng = np.random.default_rng(0)
    for index in range(count):
        pair = root / "IVIF" / f"pair{index}"
        pair.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (40, 48), dtype=np.uint8)).save(pair / "a.png")
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(pair / "b.png")


def assert_shards_of_both_ranks(checkpoint_dir: Path, stage: int) -> None:
    """The DeepSpeed checkpoint directory holds each rank's optimizer shard (and, for ZeRO-3, model shard)."""
    assert checkpoint_dir.is_dir(), f"DeepSpeed should save a directory at {checkpoint_dir}"
    shards = sorted(path.name for path in checkpoint_dir.glob("*/*_states.pt"))
    for rank in (0, 1):
        assert f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" in shards, (
            f"no optimizer shard of rank {rank}: {shards}"
        )
        if stage == 3:
            assert f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt" in shards, (
                f"no model shard of rank {rank}: {shards}"
            )


def assert_converts_and_predict_loads(
    checkpoint_dir: Path, trained_digest: str, global_step: int, folder: Path
) -> None:
    """Convert the checkpoint with the recipe's ``convert-checkpoint``; the single file must hold the
    trained weights (by digest) and step, and ``predict`` must load it and fuse every pair."""
    single_file = folder / "converted.ckpt"
    run_recipe("convert-checkpoint", str(checkpoint_dir), str(single_file))
    converted = torch.load(single_file, map_location="cpu", weights_only=False)
    assert converted["global_step"] == global_step
    assert weights_digest(converted["state_dict"]) == trained_digest, "the converted weights are not the trained ones"

    pairs, fused = folder / "pairs", folder / "fused"
    write_pairs(pairs, count=2)
    run_recipe(
        "predict",
        "--config", TINY_CONFIG,
        "--runs_dir", str(folder / "predict-runs"),
        "--run_name", "predict",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.logger=false",
        "--ckpt_path", str(single_file),
        f"--data.predict_pairs=[{pairs}]",
        "--output_dir", str(fused),
    )  # fmt: skip
    outputs = sorted(path.relative_to(fused).as_posix() for path in fused.rglob("*.png"))
    assert len(outputs) == 2, f"predict should write one fused image per pair, wrote {outputs}"
