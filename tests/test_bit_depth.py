"""Effective bit depth of 16-bit sources: 12-bit data in 16-bit PNG reads back at full range, in
shards (detected at build time, or set with --bit-depth) and in pair folders (detected per pair,
or set in meta.json), and predict writes fusions on the sources' scale."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import images
from datamodules.images import ImageError
from datamodules.mixture import crop_sample
from datamodules.pairs import PairFolderDataset
from datamodules.schema import SampleMeta
from datamodules.shards.cli import main as shards_main
from datamodules.shards.stream import StreamStats, expand_urls
from datamodules.shards.tar import iter_shard, parse_sample
from lightning_modules.inference.writer import to_integer_image

from data_helpers import save_png

SIZE = 32


def _twelve_bit(seed: int) -> np.ndarray:
    """A 12-bit image in a uint16 array that reaches the top value 4095."""
    image = np.random.default_rng(seed).integers(0, 4096, (SIZE, SIZE)).astype(np.uint16)
    image[0, 0] = 4095
    return image


def _build(tmp_path: Path, *extra: str, status: int = 0) -> tuple[dict[str, np.ndarray], Path]:
    sources = {"a": _twelve_bit(1), "b": _twelve_bit(2)}
    for role, image in sources.items():
        save_png(tmp_path / role / "x.png", image)
    out = tmp_path / "out"
    argv = ["build", str(out), "--a", str(tmp_path / "a"), "--b", str(tmp_path / "b"), "--task", "med"]
    assert shards_main([*argv, "--workers", "1", "--quiet", *extra]) == status
    return sources, out


def _read_sample(out: Path) -> tuple[SampleMeta, dict[str, bytes]]:
    (url,) = expand_urls(out)
    (raw,) = list(iter_shard(url, StreamStats()))
    return parse_sample(raw)


def _crop(meta: SampleMeta, members: dict[str, bytes], crop_size: int = SIZE) -> dict[str, torch.Tensor]:
    sample = crop_sample(meta, members, np.random.default_rng(0), crop_size, flips=False)
    return {role: sample[role][0] for role in ("a", "b")}


def test_a_12_bit_source_is_detected_and_trains_at_full_range(tmp_path: Path) -> None:
    sources, out = _build(tmp_path)
    meta, members = _read_sample(out)
    assert meta.bit_depth == 12
    crops = _crop(meta, members)
    for role, image in sources.items():
        assert torch.allclose(crops[role], torch.from_numpy(image / 4095.0).float(), atol=1e-6)
        assert crops[role].max().item() == pytest.approx(1.0)
    enlarged = _crop(meta, members, crop_size=SIZE * 2)  # the enlarging path scales the same way
    assert enlarged["a"].max() > 0.99
    assert enlarged["a"].mean().item() == pytest.approx(crops["a"].mean().item(), abs=0.02)


def test_bit_depth_16_keeps_the_container_scale(tmp_path: Path) -> None:
    sources, out = _build(tmp_path, "--bit-depth", "16")
    meta, members = _read_sample(out)
    assert meta.bit_depth == 16
    crops = _crop(meta, members)
    assert torch.allclose(crops["a"], torch.from_numpy(sources["a"] / 65535.0).float(), atol=1e-6)
    assert crops["a"].max() < 0.07  # what 12-bit data looked like before: nearly black


def test_a_bit_depth_too_small_for_the_data_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _build(tmp_path, "--bit-depth", "10", status=2)
    assert f"{tmp_path / 'a' / 'x.png'}: value 4095 does not fit --bit-depth 10" in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("*.tar"))


def test_8_bit_and_full_16_bit_sources_record_no_depth(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    save_png(tmp_path / "a" / "x.png", rng.integers(0, 256, (SIZE, SIZE)).astype(np.uint8))
    save_png(tmp_path / "b" / "x.png", np.full((SIZE, SIZE), 65535, np.uint16))
    argv = ["build", str(tmp_path / "out"), "--a", str(tmp_path / "a"), "--b", str(tmp_path / "b"), "--task", "nir"]
    assert shards_main([*argv, "--workers", "1", "--quiet"]) == 0
    url = expand_urls(tmp_path / "out")[0]
    (raw,) = list(iter_shard(url, StreamStats()))
    assert "bit_depth" not in json.loads(raw["json"])


def _pair_folder(root: Path, meta: dict) -> dict[str, np.ndarray]:
    arrays = {"a": _twelve_bit(4), "b": np.stack([_twelve_bit(5)] * 3, axis=-1)}
    for role, array in arrays.items():
        (root / "p1" / f"{role}.png").parent.mkdir(parents=True, exist_ok=True)
        (root / "p1" / f"{role}.png").write_bytes(images.encode_png(array))
    (root / "p1" / "meta.json").write_text(json.dumps(meta))
    return arrays


def test_a_12_bit_pair_validates_and_predicts_at_full_range(tmp_path: Path) -> None:
    arrays = _pair_folder(tmp_path, {"task": "med"})
    item = PairFolderDataset(tmp_path)[0]
    assert item["bit_depth"] == 12
    assert torch.allclose(item["a"][0], torch.from_numpy(arrays["a"] / 4095.0).float(), atol=1e-6)
    assert item["b_color"].max().item() == pytest.approx(1.0)
    # the writer puts a fused image back on the sources' 12-bit scale in a 16-bit PNG
    written = images.decode_png(images.encode_png(to_integer_image(item["b_color"], item["bit_depth"])))
    assert written.dtype == np.uint16 and np.array_equal(written, arrays["b"])


def test_a_pair_bit_depth_in_meta_json_wins_and_is_checked(tmp_path: Path) -> None:
    arrays = _pair_folder(tmp_path / "wide", {"task": "med", "bit_depth": 16})
    item = PairFolderDataset(tmp_path / "wide")[0]
    assert item["bit_depth"] == 16
    assert torch.allclose(item["a"][0], torch.from_numpy(arrays["a"] / 65535.0).float(), atol=1e-6)
    _pair_folder(tmp_path / "narrow", {"task": "med", "bit_depth": 10})
    with pytest.raises(ImageError, match=r"a\.png: value 4095 does not fit bit_depth 10"):
        PairFolderDataset(tmp_path / "narrow")[0]
