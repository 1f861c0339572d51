"""GIFNet under plain DDP (no ``find_unused_parameters``) with any task mix: two CPU ranks over gloo.

A task branch that no sample of a rank's batch trains gets no gradient from that batch; plain DDP
then fails on the next step. Two mixtures cover both ways it happens: one whose tasks all train
the same branch (infrared-visible and multi-exposure with ``inference_branch: per_task``: every
step), and the demo mix with the default settings.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datamodules.demo import ensure_demo

from conftest import PROJECT_ROOT
from ddp_fit import assert_ranks_agree, ddp_fit

TINY = str(PROJECT_ROOT / "tests" / "configs" / "gifnet-tiny.yaml")
STEPS = 10


def single_branch_sources() -> str:
    """The demo's infrared-visible and multi-exposure shards: tasks that train the IVIF branch only."""
    train = Path(ensure_demo(progress=False)) / "train"
    return json.dumps(
        [{"urls": sorted(str(path) for path in train.glob(f"{task}-*.tar")), "task": task} for task in ("ivif", "meif")]
    )


def single_branch_args() -> list[str]:
    return ["--data.sources", single_branch_sources(), "--model.inference_branch", "per_task"]


@pytest.mark.parametrize(
    "mixture_args", [pytest.param(single_branch_args, id="ivif+meif"), pytest.param(list, id="demo-mix")]
)
def test_plain_ddp_trains_every_task_mix_to_identical_weights_on_both_ranks(tmp_path: Path, mixture_args) -> None:
    args = [
        "--config", TINY,
        *mixture_args(),
        f"--trainer.max_steps={STEPS}",
        f"--data.batches_per_epoch={STEPS}",
        "--trainer.limit_val_batches=0",  # training is what is under test; nothing to monitor then
        "--checkpoint.monitor=null",
        "--trainer.logger=false",
    ]  # fmt: skip
    assert_ranks_agree(ddp_fit("gifnet", args, tmp_path), steps=STEPS)
