"""Shard build / read round trips, the index, inspect / verify, and the errors on bad input."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from datamodules import images
from datamodules.images import ImageError
from datamodules.shards.build import build_from_folders
from datamodules.shards.cli import main as shards_main
from datamodules.shards.stream import StreamStats, expand_urls
from datamodules.shards.tar import ShardError, iter_shard, iter_tar, parse_sample
from datamodules.shards.verify import inspect
from datamodules.shards.writer import read_index

from data_helpers import random_image, save_png, write_shards


def _read_back(out: Path) -> dict[str, tuple[dict, dict[str, bytes]]]:
    samples = {}
    for url in expand_urls(out):
        stats = StreamStats()
        for raw in iter_shard(url, stats):
            meta, members = parse_sample(raw)
            samples[raw["__key__"]] = (meta, members)
        assert stats.skipped_samples == 0 and stats.broken_shards == 0, stats.summary()
    return samples


@pytest.mark.parametrize("depth", [8, 16])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("level", [0, 1])
def test_round_trip_is_bit_exact(tmp_path: Path, depth: int, channels: int, level: int) -> None:
    rng = np.random.default_rng(depth * 10 + channels)
    originals = {}
    for number in range(5):
        height, width = int(rng.integers(17, 90)), int(rng.integers(17, 90))
        a = random_image(rng, height, width, channels, depth)
        b = random_image(rng, height, width, 3 if channels == 1 else 1, depth)  # mixed grey/RGB pairs
        stem = f"img.{number}"  # a dot in the stem must not break the sample key
        save_png(tmp_path / "a" / f"{stem}.png", a)
        save_png(tmp_path / "b" / f"{stem}.png", b)
        originals[stem] = (a, b)

    build_from_folders(
        tmp_path / "out",
        a=tmp_path / "a",
        b=tmp_path / "b",
        task="ivif",
        maxcount=2,
        level=level,
        workers=1,
        progress=False,
    )
    samples = _read_back(tmp_path / "out")
    assert len(samples) == 5
    for stem, (a, b) in originals.items():
        meta, members = samples[f"ivif-{images.safe_key(stem)}"]
        assert meta.task == "ivif"
        for role, original in (("a", a), ("b", b)):
            decoded = images.decode_png(members[role])
            assert decoded.dtype == original.dtype and decoded.shape == original.shape
            assert np.array_equal(decoded, original)
            # the member is a standard PNG: OpenCV reads the same pixels
            other = cv2.imdecode(np.frombuffer(members[role], np.uint8), cv2.IMREAD_UNCHANGED)
            other = other if other.ndim == 2 else cv2.cvtColor(other, cv2.COLOR_BGR2RGB)
            assert np.array_equal(other, original)
            # and a window decodes to the same pixels as cropping the whole image
            top, left = original.shape[0] // 3, original.shape[1] // 4
            window = images.decode_png(members[role], (top, left, 11, 13))
            assert np.array_equal(window, original[top : top + 11, left : left + 13])


def test_jpeg_and_tiff_sources_are_kept_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    grey16 = random_image(rng, 33, 41, 1, 16)
    rgb8 = random_image(rng, 33, 41, 3, 8)
    tifffile.imwrite(tmp_path / "grey16.tif", grey16)
    Image.fromarray(rgb8).save(tmp_path / "rgb8.jpg", quality=90)
    decoded_jpeg = images.read_image(tmp_path / "rgb8.jpg")  # what the JPEG decodes to is what is kept
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "grey16.tif").rename(tmp_path / "a" / "x.tif")
    (tmp_path / "rgb8.jpg").rename(tmp_path / "b" / "x.jpg")
    build_from_folders(tmp_path / "out", a=tmp_path / "a", b=tmp_path / "b", task="nir", workers=1, progress=False)
    ((_, members),) = _read_back(tmp_path / "out").values()
    assert np.array_equal(images.decode_png(members["a"]), grey16)
    assert np.array_equal(images.decode_png(members["b"]), decoded_jpeg)


def test_index_counts_and_inspect(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(0)
    for number in range(7):
        save_png(tmp_path / "low" / f"{number}.png", random_image(rng, 20, 20, 3))
        save_png(tmp_path / "clean" / f"{number}.png", random_image(rng, 20, 20, 3))
    out = tmp_path / "out"
    assert (
        shards_main(
            [
                "build",
                str(out),
                "--a",
                str(tmp_path / "low"),
                "--gt",
                str(tmp_path / "clean"),
                "--task",
                "restore",
                "--degradation",
                "lowlight:2",
                "--degradation",
                "noise",
                "--maxcount",
                "3",
                "--quiet",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    for number in range(4):
        save_png(tmp_path / "ir" / f"{number}.png", random_image(rng, 20, 20))
        save_png(tmp_path / "vi" / f"{number}.png", random_image(rng, 20, 20, 3))
    assert (
        shards_main(
            [
                "build",
                str(out),
                "--a",
                str(tmp_path / "ir"),
                "--b",
                str(tmp_path / "vi"),
                "--task",
                "ivif",
                "--synthetic",
                "--maxsize",
                "5K",
                "--quiet",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    index = read_index(out)
    by_name = {shard["name"]: shard for shard in index["shards"]}
    assert [by_name[f"restore-{n:06d}.tar"]["samples"] for n in range(3)] == [3, 3, 1]
    assert sum(s["samples"] for n, s in by_name.items() if n.startswith("ivif-")) == 4
    assert len([n for n in by_name if n.startswith("ivif-")]) == 4  # --maxsize 5K: one sample per shard
    assert index["totals"]["samples"] == 11
    assert index["totals"]["tasks"] == {"ivif": 4, "restore": 7}
    assert index["totals"]["degradations"] == {"lowlight:2": 7, "noise:1": 7}
    assert index["totals"]["synthetic"] == 4
    for name, shard in by_name.items():  # index counts match the tar contents
        samples = list(iter_shard(str(out / name), StreamStats()))
        assert len(samples) == shard["samples"]
    capsys.readouterr()
    assert shards_main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "samples: 11" in text and "restore" in text and "lowlight" in text
    record = json.loads(json.dumps(inspect(out)))
    assert record["tasks"]["restore"] == 7
    # rebuilding one prefix replaces its entries and keeps the others
    build_from_folders(out, a=tmp_path / "ir", b=tmp_path / "vi", task="ivif", workers=1, progress=False)
    assert read_index(out)["totals"]["tasks"] == {"ivif": 4, "restore": 7}
    assert len(list(out.glob("ivif-*.tar"))) == 1


def test_one_sided_stems_are_named(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for stem in ("00", "01", "02"):
        save_png(tmp_path / "ir" / f"{stem}.png", random_image(rng, 8, 8))
    for stem in ("00", "02", "03"):
        save_png(tmp_path / "vi" / f"{stem}.png", random_image(rng, 8, 8))
    with pytest.raises(ImageError) as caught:
        build_from_folders(
            tmp_path / "out", a=tmp_path / "ir", b=tmp_path / "vi", task="ivif", workers=1, progress=False
        )
    message = str(caught.value)
    assert "2 stem(s) present on one side only" in message
    assert str(tmp_path / "ir" / "01.png") in message and str(tmp_path / "vi" / "03.png") in message
    assert not (tmp_path / "out" / "index.json").exists()


def test_size_mismatch_is_named_and_resize_aligns(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    save_png(tmp_path / "a" / "ok.png", random_image(rng, 16, 16))
    save_png(tmp_path / "b" / "ok.png", random_image(rng, 16, 16))
    save_png(tmp_path / "a" / "odd.png", random_image(rng, 16, 16))
    save_png(tmp_path / "b" / "odd.png", random_image(rng, 20, 24))
    with pytest.raises(ImageError) as caught:
        build_from_folders(tmp_path / "out", a=tmp_path / "a", b=tmp_path / "b", task="mfif", workers=1, progress=False)
    message = str(caught.value)
    assert f"{tmp_path / 'a' / 'odd.png'} is 16x16" in message and f"{tmp_path / 'b' / 'odd.png'} is 20x24" in message
    assert "--resize" in message
    assert not list((tmp_path / "out").glob("*.tar"))
    build_from_folders(
        tmp_path / "out", a=tmp_path / "a", b=tmp_path / "b", task="mfif", resize="a", workers=1, progress=False
    )
    for _, members in _read_back(tmp_path / "out").values():
        assert images.decode_png(members["b"]).shape == (16, 16)
    # the command line reports the same error and exits non-zero
    assert (
        shards_main(
            [
                "build",
                str(tmp_path / "cli"),
                "--a",
                str(tmp_path / "a"),
                "--b",
                str(tmp_path / "b"),
                "--task",
                "mfif",
                "--quiet",
                "--workers",
                "1",
            ]
        )
        == 2
    )


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    save_png(tmp_path / "a" / "x.png", random_image(rng, 8, 8))
    save_png(tmp_path / "b" / "x.png", random_image(rng, 8, 8))
    (tmp_path / "a" / "y.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    save_png(tmp_path / "b" / "y.png", random_image(rng, 8, 8))
    with pytest.raises(ImageError) as caught:
        build_from_folders(tmp_path / "out", a=tmp_path / "a", b=tmp_path / "b", task="meif", workers=2, progress=False)
    assert str(tmp_path / "a" / "y.png") in str(caught.value)


def test_a_failed_rebuild_keeps_the_previous_shards_and_index(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for stem in ("00", "01", "02", "03"):
        save_png(tmp_path / "a" / f"{stem}.png", random_image(rng, 8, 8))
        save_png(tmp_path / "b" / f"{stem}.png", random_image(rng, 8, 8))
    out = tmp_path / "out"
    build_from_folders(out, a=tmp_path / "a", b=tmp_path / "b", task="meif", maxcount=2, workers=1, progress=False)
    before = {path.name: path.read_bytes() for path in out.glob("*.tar")}
    index_before = read_index(out)
    # the rebuild fails after its first shard is written: one more pair, unreadable, sorted last
    save_png(tmp_path / "a" / "04.png", random_image(rng, 8, 8))
    save_png(tmp_path / "b" / "04.png", random_image(rng, 8, 8))
    (tmp_path / "a" / "05.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    save_png(tmp_path / "b" / "05.png", random_image(rng, 8, 8))
    with pytest.raises(ImageError, match="05.png"):
        build_from_folders(out, a=tmp_path / "a", b=tmp_path / "b", task="meif", maxcount=2, workers=1, progress=False)
    assert {path.name: path.read_bytes() for path in out.glob("*.tar")} == before
    assert read_index(out) == index_before
    assert sorted(path.name for path in out.iterdir()) == ["index.json", *sorted(before)], "staging left behind"
    assert len(_read_back(out)) == 4


def test_verify_lists_broken_members(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    write_shards(out, "mfif", "mfif", count=6, maxcount=3)
    assert shards_main(["verify", str(out), "--quiet"]) == 0
    shard = out / "mfif-000001.tar"
    data = bytearray(shard.read_bytes())
    at = data.find(b"IDAT") + 200  # inside the pixel data of the first PNG of the second shard
    data[at : at + 8] = bytes(8)
    shard.write_bytes(bytes(data))
    capsys.readouterr()
    assert shards_main(["verify", str(out), "--quiet"]) == 1
    text = capsys.readouterr().out
    assert "5 samples decode cleanly; 1 problem(s)" in text
    assert "mfif-000001.tar#mfif-00003" in text and "CRC" in text


def test_tar_reader_handles_long_names_and_pax(tmp_path: Path) -> None:
    import tarfile

    names = {"k" * 150 + ".a.png": b"x" * 700, "short.json": b"{}", "dir/" + "d" * 120 + ".b.png": b"y" * 3}
    for form in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT):
        path = tmp_path / f"{form}.tar"
        with tarfile.open(path, "w", format=form) as archive:
            for name, data in names.items():
                if form == tarfile.USTAR_FORMAT and len(name.rsplit("/", 1)[-1]) > 100:
                    continue
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
        with open(path, "rb") as stream:
            read = dict(iter_tar(stream))
        expected = {n: d for n, d in names.items() if form != tarfile.USTAR_FORMAT or len(n.rsplit("/", 1)[-1]) <= 100}
        assert read == expected
    cut = tmp_path / "cut.tar"
    cut.write_bytes((tmp_path / f"{tarfile.GNU_FORMAT}.tar").read_bytes()[:1500])
    with open(cut, "rb") as stream, pytest.raises(ShardError, match="truncated"):
        list(iter_tar(stream))
