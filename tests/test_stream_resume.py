"""A resume in the middle of an epoch continues the training stream where it stopped (issue 13).

The batches after a resume must be those the uninterrupted run trains on at the same steps: same
sample keys, same pixels (crops and flips), same order, with one worker or several, resampled or
one pass, and through ``recipes.gifnet``'s main (what ``python -m recipes.gifnet fit`` runs) stopped
mid-epoch by ``max_steps`` and resumed with ``--ckpt_path last``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from batch_recorder import read_records

from datamodules.mixture import MixtureStream, ShardSource, StreamLoader

from conftest import PROJECT_ROOT
from data_helpers import write_shards

TINY = str(PROJECT_ROOT / "tests" / "configs" / "gifnet-tiny.yaml")


@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    write_shards(out, "ivif", "ivif", count=24, maxcount=4, size=(24, 30), seed=1)
    write_shards(out, "restore", "restore", count=24, maxcount=4, size=(24, 30), seed=2, degradations=["noise:1"])
    return out


def _stream(root: Path, workers: int, resampled: bool, batches: int | None) -> MixtureStream:
    sources = [
        ShardSource(urls=str(root / "ivif-{000000..000005}.tar"), weight=1.0, task="ivif"),
        ShardSource(urls=str(root / "restore-{000000..000005}.tar"), weight=2.0, task="restore"),
    ]
    return MixtureStream(
        sources, batch_size=3, crop_size=16, batches_per_epoch=batches, resampled=resampled, num_workers=workers, seed=5
    )


def _passes(loader: StreamLoader, count: int) -> list[list[dict[str, Any]]]:
    return [list(loader) for _ in range(count)]


def _assert_same_batches(resumed: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert [batch["key"] for batch in resumed] == [batch["key"] for batch in expected]
    for got, want in zip(resumed, expected):
        for name in ("a", "b", "gt", "task", "degradation"):
            assert torch.equal(got[name], want[name]), f"{name} differs for samples {got['key']}"


@pytest.mark.parametrize(
    "workers, persistent, resampled, batches, consumed",
    [
        (0, False, True, 5, 2),  # one process
        (2, False, True, 7, 3),  # an odd number consumed: the resumed pass starts with the second worker
        (2, True, True, 7, 5),  # persistent workers: only their first pass skips
        (2, False, False, None, 1),  # one pass over the shards, each sample once
    ],
)
def test_a_resumed_loader_yields_what_the_uninterrupted_one_would(
    two_tasks: Path, workers: int, persistent: bool, resampled: bool, batches: int | None, consumed: int
) -> None:
    options = {"persistent_workers": True} if persistent else {}
    uninterrupted = _passes(StreamLoader(_stream(two_tasks, workers, resampled, batches), **options), 3)
    assert len({len(epoch) for epoch in uninterrupted}) == 1 and len(uninterrupted[0]) > consumed

    interrupted = StreamLoader(_stream(two_tasks, workers, resampled, batches), **options)
    list(interrupted)  # epoch 0
    for seen, _ in enumerate(interrupted, start=1):  # epoch 1, stopped `consumed` batches in
        if seen == consumed:
            break
    state = interrupted.state_dict()
    assert (state["epoch"], state["batches"]) == (1, consumed)

    resumed = StreamLoader(_stream(two_tasks, workers, resampled, batches), **options)
    resumed.load_state_dict(state)
    rest_of_epoch, next_epoch = _passes(resumed, 2)
    _assert_same_batches(rest_of_epoch, uninterrupted[1][consumed:])
    _assert_same_batches(next_epoch, uninterrupted[2])


def test_a_resume_with_a_changed_stream_warns_that_the_epoch_will_differ(
    two_tasks: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = {"epoch": 1, "batches": 2, "layout": _stream(two_tasks, 0, True, 5).layout()}
    changed = _stream(two_tasks, 0, True, 5)
    changed.seed = 6
    with caplog.at_level(logging.WARNING, logger="datamodules.mixture"):
        StreamLoader(changed).load_state_dict(state)
    assert "training stream's seed changed since the checkpoint" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="datamodules.mixture"):
        StreamLoader(_stream(two_tasks, 0, True, 5)).load_state_dict(state)
    assert not caplog.text


# --------------------------------------------------------------------------------------------
# Through the recipe: fit stopped mid-epoch by max_steps, resumed with --ckpt_path last


def _fit(runs_dir: Path, record: Path, *args: str) -> list[dict[str, Any]]:
    """``python -m recipes.gifnet fit`` with the tiny config (in this process: the same main, no second start-up).

    Returns what it trained on, batch by batch (:mod:`batch_recorder`).
    """
    from recipes.gifnet import main

    probe = record.with_suffix(".yaml")
    probe.write_text(
        "trainer:\n  callbacks:\n    - class_path: batch_recorder.RecordTrainingBatches\n"
        f"      init_args: {{path: '{record}'}}\n"
    )
    main([
        "fit", "--config", TINY, "--config", str(probe), "--runs_dir", str(runs_dir), "--run_name", "tiny",
        "--data.num_workers", "2", "--trainer.limit_val_batches", "0", "--trainer.logger", "false", *args,
    ])  # fmt: skip
    return read_records(record)


@pytest.mark.parametrize(
    "accumulate, batches_per_epoch, stop, end",
    [
        (1, 4, 5, 8),  # stopped after step 5: epoch 1, one batch in (the second worker's batch comes next)
        (2, 6, 4, 6),  # two batches a step: stopped after step 4, epoch 1, two batches in
    ],
)
def test_fit_resumed_mid_epoch_trains_on_the_uninterrupted_runs_batches(
    tmp_path: Path, accumulate: int, batches_per_epoch: int, stop: int, end: int
) -> None:
    options = ["--trainer.accumulate_grad_batches", str(accumulate), "--data.batches_per_epoch", str(batches_per_epoch)]
    whole = _fit(tmp_path / "whole", tmp_path / "whole.jsonl", *options, "--trainer.max_steps", str(end))
    first = _fit(tmp_path / "parts", tmp_path / "first.jsonl", *options, "--trainer.max_steps", str(stop))
    resumed = _fit(
        tmp_path / "parts", tmp_path / "resumed.jsonl", *options, "--trainer.max_steps", str(end), "--ckpt_path", "last"
    )
    assert [record["step"] for record in whole] == [step for step in range(end) for _ in range(accumulate)]
    assert first == whole[: stop * accumulate]
    assert resumed[0]["epoch"] == 1 and resumed[0]["batch_idx"] == stop * accumulate - batches_per_epoch
    # the same samples and pixels at every step and micro-batch (batch index): what LURE's draws are seeded with
    assert resumed == whole[stop * accumulate :]


def test_a_checkpoint_saved_inside_a_step_resumes_at_that_steps_batch(two_tasks: Path, tmp_path: Path) -> None:
    """As the SLURM requeue signal may: saved mid-step, the resumed fit retrains that step's batch, no other.

    Rank 1 of 2 (its own partition of the shards), two workers, through Lightning's own checkpoint and restore.
    """
    import pytorch_lightning as pl

    from datamodules.mixture import FusionDataModule

    class Recorder(pl.LightningModule):
        def __init__(self, save_at: int | None = None) -> None:
            super().__init__()
            self.layer = torch.nn.Conv2d(1, 1, 3, padding=1)
            self.save_at = save_at
            self.seen: list[tuple[int, int, list[str]]] = []

        def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
            self.seen.append((self.global_step, batch_idx, list(batch["key"])))
            if self.global_step == self.save_at:
                self.trainer.save_checkpoint(tmp_path / "inside-step.ckpt")
            return torch.nn.functional.l1_loss(self.layer(batch["a"]), batch["gt"])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    def fit(model: Recorder, ckpt_path: Path | None = None) -> None:
        data = FusionDataModule(
            sources=_stream(two_tasks, 2, True, 4).sources,
            batch_size=3, crop_size=16, batches_per_epoch=4, num_workers=2, seed=5, rank=1, world_size=2,
        )  # fmt: skip
        trainer = pl.Trainer(
            accelerator="cpu", max_steps=8, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=tmp_path,
        )  # fmt: skip
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)

    whole = Recorder(save_at=5)
    fit(whole)
    assert [step for step, _, _ in whole.seen] == list(range(8))
    resumed = Recorder()
    fit(resumed, tmp_path / "inside-step.ckpt")
    assert resumed.seen == whole.seen[5:]
