"""The streaming mixture: task weights, rank/worker splitting, shared crops, corrupt data, Lightning."""

from __future__ import annotations

import collections
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.mixture import (
    FusionDataModule,
    MixtureStream,
    ShardSource,
    StreamLoader,
)
from datamodules.schema import TASK_IDS, TASKS, SampleMeta
from datamodules.shards.writer import ShardSetWriter, encode_sample

from data_helpers import random_image, write_shards

CROP = 16


@pytest.fixture(scope="module")
def three_tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    write_shards(out, "ivif", "ivif", count=40, maxcount=5, seed=1)
    write_shards(out, "mfif", "mfif", count=40, maxcount=5, seed=2)
    write_shards(out, "restore", "restore", count=40, maxcount=5, seed=3, degradations=["noise:2", "blur:3"])
    return out


def _sources(root: Path, weights: tuple[float, float, float] = (1, 1, 1)) -> list[ShardSource]:
    return [
        ShardSource(urls=str(root / f"{task}-{{000000..000007}}.tar"), weight=weight, task=task)
        for task, weight in zip(("ivif", "mfif", "restore"), weights)
    ]


def test_task_mix_follows_the_weights(three_tasks: Path) -> None:
    weights = (1.0, 2.0, 5.0)
    stream = MixtureStream(_sources(three_tasks, weights), batch_size=50, crop_size=CROP, batches_per_epoch=60, seed=3)
    counts: collections.Counter = collections.Counter()
    total = 0
    for batch in StreamLoader(stream):
        counts.update(batch["task"].tolist())
        total += batch["task"].numel()
    assert total == 3000
    tolerance = 0.03  # binomial sd is at most 0.0091 at n = 3000: 0.03 is more than 3 sd
    for task, weight in zip(("ivif", "mfif", "restore"), weights):
        share = counts[TASK_IDS[task]] / total
        assert abs(share - weight / sum(weights)) < tolerance, (task, share)


def test_batches_mix_tasks_and_carry_the_contract(three_tasks: Path) -> None:
    stream = MixtureStream(_sources(three_tasks), batch_size=24, crop_size=CROP, batches_per_epoch=2)
    batch = next(iter(StreamLoader(stream)))
    assert batch["a"].shape == batch["b"].shape == batch["gt"].shape == (24, 1, CROP, CROP)
    assert batch["a"].dtype == torch.float32 and 0 <= batch["a"].min() and batch["a"].max() <= 1
    restore = batch["task"] == TASK_IDS["restore"]
    assert 0 < restore.sum() < 24  # one batch mixes tasks
    assert torch.equal(batch["has_b"], ~restore) and bool(batch["has_gt"].all())
    assert torch.all(batch["b"][restore] == 0)
    noise, blur = 0, 1
    assert torch.all(batch["degradation"][restore][:, noise] == 2) and torch.all(
        batch["degradation"][restore][:, blur] == 3
    )
    assert torch.all(batch["degradation"][~restore] == 0)
    assert len(batch["key"]) == 24 and "stream_stats" not in batch


def test_rgb_mode_keeps_three_channels(three_tasks: Path) -> None:
    stream = MixtureStream(_sources(three_tasks), batch_size=8, crop_size=CROP, batches_per_epoch=1, luminance=False)
    batch = next(iter(StreamLoader(stream)))
    assert batch["a"].shape == (8, 3, CROP, CROP)


def test_same_crop_and_flips_for_a_b_gt(tmp_path: Path) -> None:
    """b is the photographic negative of a and gt equals a: any crop or flip not shared would break that."""
    rng = np.random.default_rng(0)
    with ShardSetWriter(tmp_path, "mfif", maxcount=10) as writer:
        for number in range(10):
            a = random_image(rng, 37, 45, 1, 16)
            writer.write(encode_sample(f"s{number}", {"a": a, "b": 65535 - a, "gt": a.copy()}, SampleMeta(task="mfif")))
    stream = MixtureStream([ShardSource(urls=str(tmp_path))], batch_size=10, crop_size=CROP, batches_per_epoch=5)
    flips_seen = set()
    for batch in StreamLoader(stream):
        assert torch.allclose(batch["b"], 1 - batch["a"], atol=1e-6)
        assert torch.equal(batch["gt"], batch["a"])
        flips_seen.add(float(batch["a"].std()))
    assert len(flips_seen) > 1


def _run_rank(root: Path, rank: int, resampled: bool, batches: int | None = None) -> tuple[int, list[str]]:
    module = FusionDataModule(
        sources=[
            ShardSource(urls=str(root / "ivif-{000000..000007}.tar"), weight=1.0, task="ivif"),
            ShardSource(urls=str(root / "mfif-{000000..000007}.tar"), weight=3.0, task="mfif"),
        ],
        batch_size=4,
        crop_size=CROP,
        batches_per_epoch=batches,
        resampled=resampled,
        num_workers=2,
        rank=rank,
        world_size=2,
    )
    module.setup("fit")
    loader = module.train_dataloader()
    keys: list[str] = []
    count = 0
    for batch in loader:
        count += 1
        keys.extend(batch["key"])
    assert count == len(loader)
    return count, keys


def test_two_ranks_two_workers_without_resampling(three_tasks: Path) -> None:
    results = [_run_rank(three_tasks, rank, resampled=False) for rank in (0, 1)]
    counts = [count for count, _ in results]
    assert counts[0] == counts[1] > 0  # the same number of batches on every rank
    keys = [key for _, rank_keys in results for key in rank_keys]
    assert len(keys) == len(set(keys)), "a sample was read twice in one epoch"
    # one pass: 80 samples over 2 ranks x 2 workers, 4 per batch -> 20 per partition -> 5 batches
    assert counts[0] == 2 * 5


def test_two_ranks_two_workers_resampled(three_tasks: Path) -> None:
    results = [_run_rank(three_tasks, rank, resampled=True, batches=7) for rank in (0, 1)]
    assert [count for count, _ in results] == [7, 7]
    assert results[0][1] != results[1][1]  # ranks draw different streams


def test_uneven_shards_still_give_equal_counts(tmp_path: Path) -> None:
    write_shards(tmp_path, "ivif", "ivif", count=37, maxcount=6, seed=5)  # 6,6,6,6,6,6,1
    module_args = dict(
        sources=[ShardSource(urls=str(tmp_path))],
        batch_size=3,
        crop_size=CROP,
        resampled=False,
        num_workers=2,
        world_size=2,
    )
    counts, keys = [], []
    for rank in (0, 1):
        module = FusionDataModule(rank=rank, **module_args)
        module.setup("fit")
        batches = list(module.train_dataloader())
        counts.append(len(batches))
        keys += [key for batch in batches for key in batch["key"]]
    assert counts[0] == counts[1] > 0
    assert len(keys) == len(set(keys))


def test_too_few_shards_for_the_partitions_is_a_clear_error(tmp_path: Path) -> None:
    write_shards(tmp_path, "ivif", "ivif", count=6, maxcount=6)
    with pytest.raises(ValueError, match="cannot be split over 2 rank"):
        MixtureStream(
            [ShardSource(urls=str(tmp_path))],
            batch_size=2,
            crop_size=CROP,
            resampled=False,
            world_size=2,
            num_workers=2,
        )


@pytest.fixture()
def damaged(tmp_path: Path) -> tuple[Path, str]:
    write_shards(tmp_path, "ivif", "ivif", count=30, maxcount=10)
    truncated = tmp_path / "ivif-000001.tar"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    broken = tmp_path / "ivif-000002.tar"
    data = bytearray(broken.read_bytes())
    at = data.find(b"ivif-00023.b.png")  # the visible image of sample 23
    at = data.find(b"IDAT", at) + 100
    data[at : at + 16] = b"\xff" * 16
    broken.write_bytes(bytes(data))
    return tmp_path, "ivif-00023"


def test_corrupt_members_and_truncated_shards_are_skipped_and_counted(
    damaged: tuple[Path, str], caplog: pytest.LogCaptureFixture
) -> None:
    root, corrupt_key = damaged
    module = FusionDataModule(
        sources=[ShardSource(urls=str(root))],
        batch_size=2,
        crop_size=CROP,
        batches_per_epoch=6,
        resampled=False,
        num_workers=2,
    )
    module.setup("fit")
    loader = module.train_dataloader()
    loader.timeout = 60  # a hang fails the test instead of blocking it
    with caplog.at_level(logging.WARNING, logger="datamodules.mixture"):
        iterator = iter(loader)
        batches = [next(iterator) for _ in range(len(loader))]  # stop at len() without exhausting it, as Lightning does
    assert len(batches) == 6
    keys = {key.rsplit("#", 1)[1] for batch in batches for key in batch["key"]}
    assert corrupt_key not in keys
    stats = module.stream_stats
    assert stats.broken_shards == 1
    assert stats.skipped_samples >= 2  # the corrupt PNG and the sample the truncation cut off
    assert any(corrupt_key in message and "CRC" in message for message in stats.messages)
    assert any("ivif-000001.tar" in message and "truncated" in message for message in stats.messages)
    assert "corrupt sample(s) skipped" in caplog.text and "1 broken shard(s)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="datamodules.mixture"):
        list(loader)  # the next epoch sums up the last one
    assert "epoch 0:" in caplog.text and "corrupt samples skipped" in caplog.text
    assert module.stream_stats.broken_shards == 2  # once per epoch


def test_a_source_with_nothing_readable_stops_with_its_name(tmp_path: Path) -> None:
    (tmp_path / "bad-000000.tar").write_bytes(b"this is not a tar archive" * 40)
    stream = MixtureStream(
        [ShardSource(urls=str(tmp_path / "bad-000000.tar"), name="broken-source")],
        batch_size=2,
        crop_size=CROP,
        batches_per_epoch=1,
    )
    with pytest.raises(RuntimeError, match="broken-source"):
        next(iter(StreamLoader(stream)))


def test_a_partition_with_nothing_readable_stops_instead_of_looping(tmp_path: Path) -> None:
    write_shards(tmp_path, "ivif", "ivif", count=4, maxcount=2)
    for shard in tmp_path.glob("*.tar"):
        shard.write_bytes(b"garbage" * 100)
    stream = MixtureStream(
        [ShardSource(urls=str(tmp_path))], batch_size=2, crop_size=CROP, batches_per_epoch=1, resampled=False
    )
    with pytest.raises(RuntimeError, match="nothing readable in its share"):
        next(iter(StreamLoader(stream)))


def test_declared_task_must_match_the_index(three_tasks: Path) -> None:
    module = FusionDataModule(
        sources=[ShardSource(urls=str(three_tasks / "ivif-000000.tar"), task="mfif")],
        batch_size=2,
        crop_size=CROP,
        batches_per_epoch=2,
        num_workers=0,
    )
    with pytest.raises(ValueError, match="declared as task mfif"):
        module.setup("fit")


def test_small_images_are_enlarged_to_the_crop(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with ShardSetWriter(tmp_path, "meif", maxcount=4) as writer:
        for number in range(4):
            writer.write(
                encode_sample(
                    f"s{number}",
                    {"a": random_image(rng, 9, 12), "b": random_image(rng, 9, 12)},
                    SampleMeta(task="meif"),
                )
            )
    stream = MixtureStream([ShardSource(urls=str(tmp_path))], batch_size=4, crop_size=CROP, batches_per_epoch=1)
    batch = next(iter(StreamLoader(stream)))
    assert batch["a"].shape == (4, 1, CROP, CROP) and not bool(batch["has_gt"].any())


def test_fit_with_lightning(three_tasks: Path, tmp_path: Path) -> None:
    import pytorch_lightning as pl

    from data_helpers import save_png

    rng = np.random.default_rng(0)
    for pair in ("p1", "p2"):
        save_png(tmp_path / "val" / "IVIF" / pair / "a.png", random_image(rng, 20, 28))
        save_png(tmp_path / "val" / "IVIF" / pair / "b.png", random_image(rng, 20, 28, 3))

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Conv2d(2, 1, 3, padding=1)
            self.train_batches = 0
            self.val_keys: list[str] = []

        def training_step(self, batch, _):
            self.train_batches += 1
            return torch.nn.functional.l1_loss(self.layer(torch.cat([batch["a"], batch["b"]], 1)), batch["gt"])

        def validation_step(self, batch, _):
            self.val_keys += batch["key"]
            assert batch["a_color"].shape[1] == 3

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    model = Tiny()
    data = FusionDataModule(
        sources=_sources(three_tasks),
        batch_size=4,
        crop_size=CROP,
        batches_per_epoch=3,
        num_workers=2,
        val_pairs=[str(tmp_path / "val")],
        eval_workers=0,
    )
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=data)
    assert model.train_batches == 6
    assert sorted(set(model.val_keys)) == ["IVIF/p1", "IVIF/p2"]
    assert data.stream_stats.samples == 2 * 3 * 4 and data.stream_stats.skipped_samples == 0


def test_task_names_are_the_schema_tasks() -> None:
    assert FusionDataModule().task_names == TASKS


def test_an_empty_source_list_is_an_error_not_the_demo_set() -> None:
    with pytest.raises(ValueError, match=r"data.sources is an empty list.*unset \(null\)"):
        FusionDataModule(sources=[])


def test_explicit_sources_without_val_pairs_warn_that_nothing_validates(
    three_tasks: Path, caplog: pytest.LogCaptureFixture
) -> None:
    module = FusionDataModule(sources=_sources(three_tasks), batch_size=2, crop_size=CROP, num_workers=0)
    with caplog.at_level(logging.WARNING, logger="datamodules.mixture"):
        module.setup("fit")
    assert any("data.val_pairs is not set" in record.getMessage() for record in caplog.records)


def test_an_index_that_cannot_be_read_stops_the_run_and_names_itself(tmp_path: Path) -> None:
    write_shards(tmp_path, "ivif", "ivif", count=4, maxcount=2)
    (tmp_path / "index.json").write_text('{"format": "unifuse-shards/1", "shards": [')  # cut off mid-write
    module = FusionDataModule(
        sources=[ShardSource(urls=str(tmp_path / "ivif-{000000..000001}.tar"), task="ivif")],
        batch_size=2,
        crop_size=CROP,
        batches_per_epoch=2,
        num_workers=0,
        val_pairs=[str(tmp_path)],
    )
    with pytest.raises(ValueError, match=r"index.json: not a valid index.*rebuild the shards"):
        module.setup("fit")
