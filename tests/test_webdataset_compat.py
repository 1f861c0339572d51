"""The shards are WebDataset: ``webdataset`` reads ours with its own decoders and gets the same
samples, and our reader streams a tar that ``webdataset.ShardWriter`` wrote with ordinary PNG
members (no window index) into the same training crops."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import webdataset as wds

from datamodules import images
from datamodules.mixture import MixtureStream, ShardSource, crop_sample
from datamodules.schema import SampleMeta
from datamodules.shards.build import build_from_folders
from datamodules.shards.stream import StreamStats, expand_urls
from datamodules.shards.tar import iter_shard, parse_sample

from data_helpers import random_image, save_png


def _smooth_image(rng: np.random.Generator, height: int, width: int, channels: int) -> np.ndarray:
    """A photograph-like image (smooth, so ordinary PNG compression has something to do)."""
    noise = random_image(rng, max(2, height // 8), max(2, width // 8), channels)
    return np.ascontiguousarray(cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC))


def _ours(out: Path) -> dict[str, dict]:
    """Every sample of a shard set through our reader: key -> {json, role: pixels}."""
    samples = {}
    for url in expand_urls(out):
        stats = StreamStats()
        for raw in iter_shard(url, stats):
            meta, members = parse_sample(raw)
            samples[raw["__key__"]] = {
                "json": json.loads(raw["json"]),
                **{role: images.decode_image(data) for role, data in members.items()},
            }
        assert not stats.skipped_samples and not stats.broken_shards, stats.summary()
    return samples


def _as_rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image


@pytest.mark.parametrize("level", [0, 1])
def test_webdataset_reads_our_shards(tmp_path: Path, level: int) -> None:
    rng = np.random.default_rng(level)
    for number in range(7):
        height, width = int(rng.integers(20, 70)), int(rng.integers(20, 70))
        save_png(tmp_path / "ir" / f"p{number}.png", _smooth_image(rng, height, width, 1))
        save_png(tmp_path / "vis" / f"p{number}.png", _smooth_image(rng, height, width, 3))
    build_from_folders(
        tmp_path / "out",
        a=tmp_path / "ir",
        b=tmp_path / "vis",
        task="ivif",
        source="test",
        maxcount=3,
        level=level,
        workers=1,
        progress=False,
    )
    ours = _ours(tmp_path / "out")
    urls = expand_urls(tmp_path / "out")
    assert len(urls) == 3

    theirs = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("rgb8"))
    assert [sample["__key__"] for sample in theirs] == sorted(ours)
    for sample in theirs:
        expected = ours[sample["__key__"]]
        assert sample["json"] == expected["json"]  # webdataset's own JSON decoder
        for role in ("a", "b"):
            assert sample[f"{role}.png"].dtype == np.uint8
            assert np.array_equal(sample[f"{role}.png"], _as_rgb(expected[role]))  # PIL, through webdataset

    grey = next(iter(wds.WebDataset(urls[:1], shardshuffle=False, empty_check=False).decode("l8")))
    assert np.array_equal(grey["a.png"], ours[grey["__key__"]]["a"])


def _write_with_shardwriter(folder: Path, count: int, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """``count`` ivif samples as ordinary PNG members (OpenCV's encoder) through ``wds.ShardWriter``."""
    rng = np.random.default_rng(seed)
    originals = {}
    folder.mkdir(parents=True)
    with wds.ShardWriter(str(folder / "plain-%06d.tar"), maxcount=4, verbose=0) as sink:
        for number in range(count):
            height, width = int(rng.integers(70, 120)), int(rng.integers(70, 120))
            arrays = {"a": _smooth_image(rng, height, width, 1), "b": _smooth_image(rng, height, width, 3)}
            record = {"__key__": f"plain-{number:04d}", "json": SampleMeta(task="ivif", source="shardwriter").to_json()}
            for role, array in arrays.items():
                bgr = array if array.ndim == 2 else cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
                record[f"{role}.png"] = cv2.imencode(".png", bgr)[1].tobytes()
            sink.write(record)
            originals[record["__key__"]] = arrays
    return originals


def test_our_reader_streams_a_shardwriter_tar(tmp_path: Path) -> None:
    originals = _write_with_shardwriter(tmp_path / "plain", 9)
    urls = sorted(str(path) for path in (tmp_path / "plain").glob("*.tar"))
    assert len(urls) == 3
    seen = {}
    for url in urls:
        stats = StreamStats()
        for raw in iter_shard(url, stats):
            meta, members = parse_sample(raw)
            assert meta.task == "ivif" and images.INDEX_CHUNK not in members["a"]  # no window index
            seen[raw["__key__"]] = {role: images.decode_image(data) for role, data in members.items()}
        assert not stats.skipped_samples and not stats.broken_shards
    assert sorted(seen) == sorted(originals)
    for key, arrays in originals.items():
        for role, original in arrays.items():
            assert np.array_equal(seen[key][role], original)

    # a training crop of an ordinary PNG equals the crop of the same pixels in our window-indexed PNG
    for key, arrays in originals.items():
        meta = SampleMeta(task="ivif")
        plain = {
            role: cv2.imencode(".png", a if a.ndim == 2 else cv2.cvtColor(a, cv2.COLOR_RGB2BGR))[1].tobytes()
            for role, a in arrays.items()
        }
        indexed = {role: images.encode_png(array) for role, array in arrays.items()}
        for seed in range(3):
            from_plain = crop_sample(meta, plain, np.random.default_rng(seed), 64, where=key)
            from_indexed = crop_sample(meta, indexed, np.random.default_rng(seed), 64, where=key)
            for role in ("a", "b"):
                assert torch.equal(from_plain[role], from_indexed[role])


def test_training_stream_over_a_shardwriter_tar(tmp_path: Path) -> None:
    _write_with_shardwriter(tmp_path / "plain", 8)
    urls = sorted(str(path) for path in (tmp_path / "plain").glob("*.tar"))
    stream = MixtureStream(
        [ShardSource(urls=urls, task="ivif")], batch_size=4, crop_size=48, batches_per_epoch=2, resampled=False, seed=0
    )
    batches = list(stream)
    assert len(batches) == 2
    for batch in batches:
        assert batch["a"].shape == (4, 1, 48, 48) and batch["b"].shape == (4, 1, 48, 48)
        assert bool(batch["has_b"].all()) and not bool(batch["has_gt"].any())
    keys = [where.rsplit("#", 1)[1] for batch in batches for where in batch["key"]]
    assert sorted(set(keys)) == [f"plain-{number:04d}" for number in range(8)]
