"""Paired-folder reading (validation / test / predict) and the built-in demo set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import demo, images
from datamodules.images import ImageError
from datamodules.mixture import FusionDataModule
from datamodules.pairs import PairFolderDataset
from datamodules.schema import TASK_IDS, collate
from datamodules.shards.verify import verify
from datamodules.shards.writer import read_index

from conftest import FUSION_BENCH
from data_helpers import random_image, save_png


@pytest.mark.skipif(not (FUSION_BENCH / "pairs").is_dir(), reason="needs ../shared/fusion-bench")
def test_fusion_bench_layout_reads_as_it_is() -> None:
    dataset = PairFolderDataset(FUSION_BENCH / "pairs")
    manifest = json.loads((FUSION_BENCH / "manifest.json").read_text())
    assert len(dataset) == len(manifest)
    keys = {pair["key"] for pair in dataset.pairs}
    assert {f"{row['task']}/{row['pair_id']}" for row in manifest} == keys
    row = next(r for r in manifest if r["b_channels"] == 3 and r["task"] == "MED")
    item = dataset[[pair["key"] for pair in dataset.pairs].index(f"MED/{row['pair_id']}")]
    width, height = row["stored_wh"]
    assert item["a"].shape == (1, height, width) and item["b_color"].shape == (3, height, width)
    assert item["task"] == TASK_IDS["med"] and item["b_channels"] == 3 and item["a_channels"] == row["a_channels"]
    batch = collate([item])
    assert (
        batch["has_b"].tolist() == [True] and batch["has_gt"].tolist() == [False] and batch["bit_depth"].tolist() == [8]
    )


def test_pair_layouts_meta_and_16_bit(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a16 = random_image(rng, 10, 12, 1, 16)
    save_png(tmp_path / "flat" / "p1" / "a.png", a16)
    save_png(tmp_path / "flat" / "p1" / "gt.png", random_image(rng, 10, 12, 3, 16))
    (tmp_path / "flat" / "p1" / "meta.json").write_text(
        json.dumps({"task": "restore", "degradations": ["haze:3"], "prompt": "dehaze"})
    )
    item = PairFolderDataset(tmp_path / "flat")[0]
    assert item["bit_depth"] == 16 and item["b"] is None and item["degradation"][3] == 3 and item["prompt"] == "dehaze"
    assert torch.allclose(item["a"][0], torch.from_numpy(a16.astype(np.float32) / 65535))
    # folders matched by stem
    save_png(tmp_path / "stems" / "ir" / "x.png", random_image(rng, 8, 8))
    save_png(tmp_path / "stems" / "vi" / "x.png", random_image(rng, 8, 8, 3))
    dataset = PairFolderDataset(tmp_path / "stems", task="ivif", a_dir="ir", b_dir="vi")
    assert [pair["key"] for pair in dataset.pairs] == ["x"] and dataset[0]["b_color"].shape == (3, 8, 8)
    # a pair of different sizes is an error naming both files
    save_png(tmp_path / "bad" / "IVIF" / "p" / "a.png", random_image(rng, 8, 8))
    save_png(tmp_path / "bad" / "IVIF" / "p" / "b.png", random_image(rng, 9, 8))
    with pytest.raises(ImageError, match=r"a\.png is 8x8.*b\.png is 9x8"):
        PairFolderDataset(tmp_path / "bad")[0]


def test_empty_pair_folder_says_which_layouts_it_expects(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no pairs found"):
        PairFolderDataset(tmp_path)


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "demo"
    return demo.build_demo(
        root, progress=False, train_photos=("motorcycle_left.png", "camera.png"), val_photos=("coffee.png",)
    )


def test_demo_set_has_every_task_with_tags(small_demo: Path) -> None:
    totals = read_index(small_demo / "train")["totals"]
    assert totals["tasks"] == {"ivif": 4, "meif": 4, "mfif": 4, "restore": 20}
    kinds = {tag.split(":")[0] for tag in totals["degradations"]}
    assert kinds == {"noise", "blur", "lowlight", "haze", "jpeg"}
    assert totals["synthetic"] == 4  # the infrared-like images, and only those
    good, problems = verify(small_demo / "train", progress=False)
    assert good == 32 and problems == []
    manifest = json.loads((small_demo / "demo.json").read_text())
    assert manifest["train_photos"] == ["motorcycle_left.png", "camera.png"]


def test_demo_samples_are_what_they_claim(small_demo: Path) -> None:
    from datamodules.shards.stream import StreamStats
    from datamodules.shards.tar import iter_shard, parse_sample

    seen = set()
    for url in sorted((small_demo / "train").glob("*.tar")):
        for raw in iter_shard(str(url), StreamStats()):
            meta, members = parse_sample(raw)
            arrays = {role: images.decode_png(data).astype(np.float32) / 255 for role, data in members.items()}
            seen.add(meta.task)
            if meta.task == "mfif":  # each focus image is sharper than the other somewhere, never sharper than gt
                assert meta.source.endswith(("depth-defocus", "mask-defocus"))
                assert (
                    np.abs(arrays["a"] - arrays["gt"]).mean() > 0.002
                    and np.abs(arrays["b"] - arrays["gt"]).mean() > 0.002
                )
            if meta.task == "meif":
                assert arrays["a"].mean() < arrays["gt"].mean() < arrays["b"].mean()
            if meta.task == "ivif":
                assert meta.synthetic and arrays["a"].ndim == 2 and "gt" not in arrays
            if meta.task == "restore":
                assert len(meta.degradations) == 1 and "b" not in arrays
                assert np.abs(arrays["a"] - arrays["gt"]).mean() > 0.002
    assert seen == {"ivif", "meif", "mfif", "restore"}
    assert "depth-defocus" in {
        meta.source.rsplit("/", 1)[1]
        for meta in [
            parse_sample(r)[0] for r in iter_shard(str(small_demo / "train" / "mfif-000000.tar"), StreamStats())
        ]
    }


def test_demo_validation_split_is_held_out(small_demo: Path) -> None:
    dataset = PairFolderDataset(small_demo / "val")
    assert len(dataset) == 8  # one mfif, meif, ivif and five restore pairs from the held-out photo
    assert all(pair["key"].split("/")[1].startswith("coffee-") for pair in dataset.pairs)
    item = dataset[0]
    assert item["a"].shape[0] == 1 and item["a_color"].shape[0] == 3


def test_datamodule_without_sources_uses_the_demo(small_demo: Path) -> None:
    module = FusionDataModule(batch_size=6, crop_size=64, batches_per_epoch=2, num_workers=0, demo_dir=str(small_demo))
    module.prepare_data()  # already built: nothing to do
    module.setup("fit")
    assert [source.task for source in module.sources] == list(demo.DEMO_TASKS)
    batches = list(module.train_dataloader())
    assert len(batches) == 2 and batches[0]["a"].shape == (6, 1, 64, 64)
    assert len(module.val_dataloader().dataset) == 8


def test_ensure_demo_builds_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(demo, "build_demo", lambda root, progress=True, force=True: calls.append(root) or Path(root))
    demo.ensure_demo(tmp_path / "missing", progress=False)
    assert calls == [tmp_path / "missing"]
    built = tmp_path / "built"
    built.mkdir()
    (built / "demo.json").write_text(json.dumps({"version": demo.DEMO_VERSION}))
    demo.ensure_demo(built, progress=False)
    assert len(calls) == 1
