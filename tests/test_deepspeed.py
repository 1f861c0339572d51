"""DeepSpeed ZeRO-2 and ZeRO-3 through Lightning on two CPU processes, then convert and predict.

Each test runs the GIFNet recipe as a user would (``python -m recipes.gifnet fit``) in a
subprocess; Lightning starts the second rank by re-running that command. The strategy is the
test-only CPU subclass of Lightning's DeepSpeedStrategy (tests/_deepspeed_cpu.py) with the
project's own ZeRO configs from cluster/deepspeed/. The sharded checkpoint is converted with
``python -m recipes.gifnet convert-checkpoint`` and must hold exactly the weights both ranks ended
with (tests/_cluster_probe.py records their digests), and ``predict`` must load it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _cluster_probe import read_events, weights_digest
from _cluster_slurm import PROJECT_ROOT
from _deepspeed_cpu import build_deepspeed_cpu_ops

TINY_CONFIG = "recipes/configs/gifnet-tiny.yaml"
MAX_STEPS = 2  # one epoch: the checkpoint saved at its end holds the final weights


def run_recipe(*args: str, timeout: float = 300) -> str:
    """``python -m recipes.gifnet ARGS`` from the project root; its output, or a failure showing it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two ranks share two cores
    result = subprocess.run(
        [sys.executable, "-m", "recipes.gifnet", *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"recipes.gifnet {' '.join(args[:1])} failed ({result.returncode}):\n{output[-6000:]}"
    return output


def write_pairs(root: Path, count: int) -> None:
    """``count`` small infrared-visible pairs in the task-folder layout (datamodules/pairs.py)."""
    rng = np.random.default_rng(0)
    for index in range(count):
        pair = root / "IVIF" / f"pair{index}"
        pair.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (40, 48), dtype=np.uint8)).save(pair / "a.png")
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(pair / "b.png")


@pytest.fixture(scope="module")
def deepspeed_ops() -> Path:
    """DeepSpeed's CPU op compiled (once per machine) before the ranks start."""
    return build_deepspeed_cpu_ops()


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_trains_on_two_cpu_processes_and_converts_to_a_checkpoint_predict_loads(
    stage: int, deepspeed_ops: Path, tmp_path: Path
) -> None:
    runs, probe = tmp_path / "runs", tmp_path / "probe"
    run_recipe(
        "fit",
        "--config", TINY_CONFIG,
        "--runs_dir", str(runs),
        "--run_name", f"zero{stage}",
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=tests._deepspeed_cpu.CPUDeepSpeedStrategy",
        f"--trainer.strategy.config=cluster/deepspeed/zero{stage}.json",
        f"--trainer.max_steps={MAX_STEPS}",
        f"--data.batches_per_epoch={MAX_STEPS}",
        # No validation (this test is about ZeRO training and its checkpoint), so nothing to
        # monitor: the checkpoint callback then saves at the end of every epoch.
        "--trainer.limit_val_batches=0",
        "--checkpoint.monitor=null",
        "--trainer.logger=false",
        "--trainer.callbacks+=tests._cluster_probe.TrainingProbe",
        f"--trainer.callbacks.output_dir={probe}",
    )  # fmt: skip

    checkpoint_dir = runs / f"zero{stage}" / "checkpoints" / "last.ckpt"
    assert checkpoint_dir.is_dir(), f"DeepSpeed should save a directory at {checkpoint_dir}"
    shards = sorted(path.name for path in checkpoint_dir.glob("*/*_states.pt"))
    for rank in (0, 1):
        assert f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" in shards, f"no optimizer shard of rank {rank}: {shards}"
        if stage == 3:
            assert f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt" in shards, f"no model shard of rank {rank}: {shards}"

    events = read_events(probe)
    ends = [event for rank in (0, 1) for event in events[rank] if event["event"] == "end"]
    assert [end["global_step"] for end in ends] == [MAX_STEPS, MAX_STEPS]
    assert ends[0]["weights_sha256"] == ends[1]["weights_sha256"], "ranks ended with different weights"

    single_file = tmp_path / f"zero{stage}.ckpt"
    run_recipe("convert-checkpoint", str(checkpoint_dir), str(single_file))
    converted = torch.load(single_file, map_location="cpu", weights_only=False)
    assert converted["global_step"] == MAX_STEPS
    assert weights_digest(converted["state_dict"]) == ends[0]["weights_sha256"], "the converted weights are not the trained ones"

    pairs, fused = tmp_path / "pairs", tmp_path / "fused"
    write_pairs(pairs, count=2)
    run_recipe(
        "predict",
        "--config", TINY_CONFIG,
        "--runs_dir", str(runs),
        "--run_name", f"zero{stage}-predict",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.logger=false",
        "--ckpt_path", str(single_file),
        f"--data.predict_pairs=[{pairs}]",
        "--output_dir", str(fused),
    )  # fmt: skip
    outputs = sorted(path.relative_to(fused).as_posix() for path in fused.rglob("*.png"))
    assert len(outputs) == 2, f"predict should write one fused image per pair, wrote {outputs}"
