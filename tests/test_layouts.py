"""Published dataset layouts: every named layout on a tiny tree in its documented folder names,
the errors for unknown layouts and non-matching folders, and layout builds into real shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from datamodules.images import ImageError
from datamodules.shards import layouts
from datamodules.shards.build import WriteOptions, build_layout
from datamodules.shards.cli import main as shards_main
from datamodules.shards.stream import StreamStats, expand_urls
from datamodules.shards.tar import iter_shard, parse_sample

from data_helpers import random_image, save_png

QUIET = WriteOptions(workers=1, progress=False)
DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def _write(root: Path, relative: str, shape: tuple[int, ...] = (24, 32), seed: int = 0) -> None:
    """An image at ``root/relative``: grey for (H, W), RGB for (H, W, 3); TIFF through tifffile."""
    rng = np.random.default_rng(seed)
    image = random_image(rng, shape[0], shape[1], shape[2] if len(shape) == 3 else 1)
    path = root / relative
    if path.suffix.lower() in (".tif", ".tiff"):
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, image)
    else:
        save_png(path, image)


# layout -> (files of a tiny tree, {group name: number of pairs}, roles of every pair)
TREES = {
    "roadscene": (
        [
            "cropinfrared/FLIR_1.jpg",
            "crop_LR_visible/FLIR_1.jpg",
            "crop_HR_visible/FLIR_1.jpg",
            "cropinfrared/FLIR_2.jpg",
            "crop_LR_visible/FLIR_2.jpg",
            "crop_HR_visible/FLIR_2.jpg",
        ],
        {"": 2},
        {"a", "b"},
    ),
    "msrs": (
        [
            "train/ir/00001D.png",
            "train/vi/00001D.png",
            "test/ir/00002N.png",
            "test/vi/00002N.png",
            "train/Label/00001D.png",
        ],
        {"train": 1, "test": 1},
        {"a", "b"},
    ),
    "llvip": (
        [
            "infrared/train/010001.jpg",
            "visible/train/010001.jpg",
            "infrared/test/190001.jpg",
            "visible/test/190001.jpg",
        ],
        {"train": 1, "test": 1},
        {"a", "b"},
    ),
    "m3fd": (
        [
            "M3FD_Fusion/Ir/00000.png",
            "M3FD_Fusion/Vis/00000.png",
            "M3FD_Fusion/Ir/00001.png",
            "M3FD_Fusion/Vis/00001.png",
        ],
        {"m3fd_fusion": 2},
        {"a", "b"},
    ),
    "tno": (["IR/1.bmp", "VIS/1.bmp", "IR/2.bmp", "VIS/2.bmp"], {"": 2}, {"a", "b"}),
    "harvard": (
        [
            "CT-MRI/MRI/1.png",
            "CT-MRI/CT/1.png",
            "PET-MRI/MRI/2.png",
            "PET-MRI/PET/2.png",
            "SPECT-MRI/MRI/3.png",
            "SPECT-MRI/SPECT/3.png",
        ],
        {"ct-mri": 1, "pet-mri": 1, "spect-mri": 1},
        {"a", "b"},
    ),
    "mfifb": (["A/aymaz_01.bmp", "B/aymaz_01.bmp", "A/books.jpg", "B/books.jpg"], {"": 2}, {"a", "b"}),
    "lytro": (["lytro-01-A.jpg", "lytro-01-B.jpg", "lytro-02-A.jpg", "lytro-02-B.jpg"], {"": 2}, {"a", "b"}),
    "mefb": (
        ["input/House/House_A.png", "input/House/House_B.png", "input/Lamp/Lamp_A.tif", "input/Lamp/Lamp_B.tif"],
        {"": 2},
        {"a", "b"},
    ),
    "sice": (
        [
            "Dataset_Part1/1/1.JPG",
            "Dataset_Part1/1/2.JPG",
            "Dataset_Part1/1/10.JPG",
            "Dataset_Part1/Label/1.JPG",
            "Dataset_Part2/7/1.JPG",
            "Dataset_Part2/7/2.JPG",
            "Dataset_Part2/Label/7.JPG",
        ],
        {"dataset_part1": 1, "dataset_part2": 1},
        {"a", "b", "gt"},
    ),
    "lol": (
        ["our485/low/2.png", "our485/high/2.png", "eval15/low/1.png", "eval15/high/1.png"],
        {"our485": 1, "eval15": 1},
        {"a", "gt"},
    ),
}


def test_every_layout_has_a_tree() -> None:
    assert set(TREES) | {"roadscene-hr"} == set(layouts.LAYOUTS)


@pytest.mark.parametrize("name", sorted(TREES))
def test_layout_finds_its_pairs(tmp_path: Path, name: str) -> None:
    files, expected_groups, roles = TREES[name]
    for number, relative in enumerate(files):
        _write(tmp_path, relative, seed=number)
    groups = layouts.discover(name, tmp_path)
    assert {group.name: len(group.pairs) for group in groups} == expected_groups
    for group in groups:
        for _, paths in group.pairs:
            assert set(paths) == roles
            assert all(path.is_file() for path in paths.values())


def test_sides_are_the_documented_ones(tmp_path: Path) -> None:
    for number, relative in enumerate(TREES["sice"][0] + ["Dataset_Part1/1/3.JPG"]):
        _write(tmp_path / "sice", relative, seed=number)
    (group, _) = layouts.discover("sice", tmp_path / "sice")
    _, paths = group.pairs[0]
    assert (paths["a"].name, paths["b"].name, paths["gt"].name) == ("1.JPG", "10.JPG", "1.JPG")  # natural order
    for relative in TREES["lytro"][0]:
        _write(tmp_path / "lytro", relative)
    (group,) = layouts.discover("lytro", tmp_path / "lytro")
    assert [(pair_id, paths["a"].name, paths["b"].name) for pair_id, paths in group.pairs] == [
        ("lytro-01", "lytro-01-A.jpg", "lytro-01-B.jpg"),
        ("lytro-02", "lytro-02-A.jpg", "lytro-02-B.jpg"),
    ]
    for relative in ["IR12.png", "VIS12.png"]:
        _write(tmp_path / "tno", relative)
    (group,) = layouts.discover("tno", tmp_path / "tno")  # DenseFuse-style flat folder
    assert group.pairs[0][0] == "12" and group.pairs[0][1]["a"].name == "IR12.png"


def test_a_subset_folder_matches_on_its_own(tmp_path: Path) -> None:
    for relative in TREES["harvard"][0]:
        _write(tmp_path, relative)
    (group,) = layouts.discover("harvard", tmp_path / "PET-MRI")
    assert group.name == "" and group.pairs[0][1]["b"].parent.name == "PET"


def test_unknown_layout_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown layout 'kaist'") as error:
        layouts.get_layout("kaist")
    assert "msrs" in str(error.value) and "lol" in str(error.value)


def test_non_matching_folder_says_what_was_expected_and_found(tmp_path: Path) -> None:
    _write(tmp_path, "infrared/1.png")
    _write(tmp_path, "rgb/1.png")
    with pytest.raises(ImageError) as error:
        layouts.discover("msrs", tmp_path)
    message = str(error.value)
    assert "does not match the msrs" in message
    assert "{group}/ir" in message and "{group}/vi" in message  # expected
    assert "infrared/: 1 images" in message and "rgb/: 1 images" in message  # found


def test_incomplete_named_pairs_are_named(tmp_path: Path) -> None:
    for relative in ["x_A.png", "x_B.png", "y_A.png"]:
        _write(tmp_path, relative)
    with pytest.raises(ImageError, match=r"y_A.png has no b image"):
        layouts.discover("mfifb", tmp_path)


def _samples(out: Path) -> dict[str, tuple]:
    samples = {}
    for url in expand_urls(out):
        stats = StreamStats()
        for raw in iter_shard(url, stats):
            samples[raw["__key__"]] = parse_sample(raw)
        assert not stats.skipped_samples and not stats.broken_shards, stats.summary()
    return samples


def test_layout_build_mixed_types_and_sizes(tmp_path: Path) -> None:
    """jpg/png/bmp/tif, grey and RGB, sizes that vary across pairs: one shard set, task and sides kept."""
    src = tmp_path / "mfifb"
    for number, (ext, shape_a, shape_b) in enumerate(
        [
            ("bmp", (20, 30), (20, 30)),
            ("jpg", (33, 25, 3), (33, 25, 3)),
            ("tif", (40, 40), (40, 40, 3)),
            ("png", (18, 50, 3), (18, 50)),
        ]
    ):
        _write(src, f"A/p{number}.{ext}", shape_a, seed=number)
        _write(src, f"B/p{number}.{ext}", shape_b, seed=number + 10)
    index = build_layout(tmp_path / "out", "mfifb", src, options=QUIET)
    assert index["totals"]["tasks"] == {"mfif": 4}
    samples = _samples(tmp_path / "out")
    assert sorted(samples) == [f"mfifb-p{number}" for number in range(4)]
    meta, members = samples["mfifb-p2"]
    assert meta.task == "mfif" and meta.source == "MFIFB/p2" and not meta.synthetic and set(members) == {"a", "b"}


def test_pair_of_different_sizes_names_both_files_unless_resized(tmp_path: Path) -> None:
    src = tmp_path / "roadscene"
    for relative, shape in [
        ("cropinfrared/F1.jpg", (20, 30)),
        ("crop_LR_visible/F1.jpg", (20, 30, 3)),
        ("crop_HR_visible/F1.jpg", (60, 90, 3)),
    ]:
        _write(src, relative, shape)
    with pytest.raises(ImageError) as error:
        build_layout(tmp_path / "out", "roadscene-hr", src, options=QUIET)
    assert "cropinfrared/F1.jpg is 20x30" in str(error.value) and "crop_HR_visible/F1.jpg is 60x90" in str(error.value)
    assert not list((tmp_path / "out").glob("*.tar"))
    build_layout(tmp_path / "out", "roadscene-hr", src, resize="a", options=QUIET)
    ((_, members),) = _samples(tmp_path / "out").values()
    from datamodules.images import decode_png

    assert decode_png(members["b"]).shape == (20, 30, 3)


def test_cli_build_with_layout_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for relative in TREES["lol"][0]:
        _write(tmp_path / "LOL", relative)
    assert shards_main(["build", "--layout", "lol", str(tmp_path / "LOL"), str(tmp_path / "out"), "--quiet"]) == 0
    samples = _samples(tmp_path / "out")
    assert sorted(samples) == ["lol-eval15-1", "lol-our485-2"]
    meta, members = samples["lol-eval15-1"]
    assert meta.task == "restore" and meta.degradations == ["lowlight:3"] and set(members) == {"a", "gt"}
    assert shards_main(["build", "--layout", "nope", str(tmp_path / "LOL"), str(tmp_path / "out2")]) == 2
    assert "unknown layout 'nope'" in capsys.readouterr().err
    assert shards_main(["build", "--layout", "msrs", str(tmp_path / "LOL"), str(tmp_path / "out2")]) == 2
    assert "does not match the msrs" in capsys.readouterr().err


@pytest.mark.skipif(not DATASETS.is_dir(), reason="../shared/datasets is not on this machine")
@pytest.mark.parametrize("name", ["roadscene", "harvard", "mfifb"])
def test_real_download_builds(tmp_path: Path, name: str) -> None:
    """A few pairs of each real download in ../shared/datasets, as published, build and read back."""
    index = build_layout(tmp_path / "out", name, DATASETS / name, limit=2, options=QUIET)
    expected = {"roadscene": ("ivif", 2), "harvard": ("med", 6), "mfifb": ("mfif", 2)}[name]
    assert index["totals"]["tasks"] == {expected[0]: expected[1]}
    assert len(_samples(tmp_path / "out")) == expected[1]


def test_cli_layouts_synthesize_and_build_all(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert shards_main(["layouts"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in layouts.LAYOUTS) and "crop_LR_visible" in listing
    for number, relative in enumerate(TREES["msrs"][0]):
        _write(tmp_path / "downloads" / "MSRS", relative, (40, 48, 3) if "/vi/" in relative else (40, 48), seed=number)
    out = tmp_path / "out"
    arguments = ["synthesize", str(tmp_path / "downloads" / "MSRS"), str(out / "x"), "--layout", "msrs"]
    assert shards_main([*arguments, "--task", "restore", "--quiet"]) == 0
    keys = sorted(_samples(out / "x"))
    assert len(keys) == 10 and keys[0].startswith("msrs-restore-test-00002N-blur")  # 5 kinds x 2 photographs
    assert shards_main(["build-all", str(tmp_path / "downloads"), str(out), "--synthesize", "", "--quiet"]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["msrs", "x"]
    assert shards_main(["build-all", str(tmp_path / "downloads"), str(out), "--synthesize", "ivif"]) == 2
    assert "--synthesize ivif: choose from mfif, meif, restore" in capsys.readouterr().err
