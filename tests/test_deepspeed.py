"""DeepSpeed ZeRO-3 through Lightning on two CPU processes, then convert and predict.

The test runs the GIFNet recipe as a user would (``python -m recipes.gifnet fit``) in a
subprocess; Lightning starts the second rank by re-running that command. The strategy is the
test-only CPU subclass of the project's DeepSpeed strategy (tests/_deepspeed_cpu.py) with the
project's ZeRO-3 config from cluster/deepspeed/. The sharded checkpoint is converted with
``python -m recipes.gifnet convert-checkpoint`` and must hold exactly the weights both ranks ended
with (tests/_cluster_probe.py records their digests), and ``predict`` must load it. ZeRO-2 takes
the same path through the SLURM batch script in test_cluster_slurm.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _cluster_probe import read_events
from _deepspeed_roundtrip import (
    TINY_CONFIG,
    assert_converts_and_predict_loads,
    assert_shards_of_both_ranks,
    build_deepspeed_cpu_ops,
    run_recipe,
)

MAX_STEPS = 2  # one epoch: the checkpoint saved at its end holds the final weights


@pytest.mark.slow
def test_zero3_trains_on_two_cpu_processes_and_converts_to_a_checkpoint_predict_loads(tmp_path: Path) -> None:
    build_deepspeed_cpu_ops()  # compiled (once per machine) before the ranks start
    runs, probe = tmp_path / "runs", tmp_path / "probe"
    run_recipe(
        "fit",
        "--config", TINY_CONFIG,
        "--runs_dir", str(runs),
        "--run_name", "zero3",
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=tests._deepspeed_cpu.CPUDeepSpeedStrategy",
        "--trainer.strategy.config=cluster/deepspeed/zero3.json",
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

    checkpoint_dir = runs / "zero3" / "checkpoints" / "last.ckpt"
    assert_shards_of_both_ranks(checkpoint_dir, stage=3)
    events = read_events(probe)
    ends = [event for rank in (0, 1) for event in events[rank] if event["event"] == "end"]
    assert [end["global_step"] for end in ends] == [MAX_STEPS, MAX_STEPS]
    assert ends[0]["weights_sha256"] == ends[1]["weights_sha256"], "ranks ended with different weights"

    assert_converts_and_predict_loads(checkpoint_dir, ends[0]["weights_sha256"], MAX_STEPS, tmp_path)
