"""GIFNet-style synthetic training data from real photographs: focus masks, depth-dependent
defocus, exposure pairs, restoration pairs, and the builders that write them as tagged shards."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from datamodules import images, synthesis
from datamodules.pairs import discover_pairs
from datamodules.shards.build import WriteOptions, build_all, build_synthetic
from datamodules.shards.stream import StreamStats, expand_urls
from datamodules.shards.tar import iter_shard, parse_sample

from data_helpers import save_png

QUIET = WriteOptions(workers=1, progress=False)
DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photograph (RGB, float in [0, 1]), small enough to keep the tests quick."""
    return synthesis.to_unit_float(cv2.resize(skimage.data.astronaut(), (160, 160), interpolation=cv2.INTER_AREA))


def _sharpness(image: np.ndarray) -> np.ndarray:
    grey = image if image.ndim == 2 else image.mean(axis=2)
    return np.abs(cv2.Laplacian(grey.astype(np.float32), cv2.CV_32F, ksize=3))


@pytest.mark.parametrize("seed", range(6))
def test_focus_masks_are_smooth_regions_not_only_rectangles(seed: int) -> None:
    mask = synthesis.focus_mask((96, 128), np.random.default_rng(seed))
    assert mask.shape == (96, 128) and mask.min() >= 0 and mask.max() <= 1
    inside = mask > 0.5
    assert 0.05 < inside.mean() < 0.95
    assert ((mask > 0.02) & (mask < 0.98)).any()  # a feathered edge, not a hard cut
    rows, cols = np.nonzero(inside)
    box = (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
    assert inside.sum() < 0.97 * box  # not a filled axis-aligned rectangle


def test_defocus_grows_with_depth_and_spares_the_focused_region() -> None:
    rng = np.random.default_rng(3)
    mask = synthesis.focus_mask((80, 80), rng)
    depth = synthesis.mask_depth(mask, rng)
    near_sigma, far_sigma = synthesis.focus_sigmas(mask, depth, max_sigma=4.0)
    assert np.all(near_sigma[mask > 0.999] <= 4e-3) and np.all(
        far_sigma[mask < 0.001] <= 4e-3
    )  # sigma <= max x (1 - sharp)
    background = mask < 0.001
    # near focus: farther background pixels are blurred more (thin-lens circle of confusion)
    assert np.corrcoef(depth[background], near_sigma[background])[0, 1] > 0.9
    assert near_sigma.max() <= 4.0 + 1e-6 and far_sigma.max() <= 4.0 + 1e-6


def test_focus_pair_is_complementary_and_deterministic(photo: np.ndarray) -> None:
    near, far = synthesis.make_focus_pair(photo, np.random.default_rng(7))
    again_near, again_far = synthesis.make_focus_pair(photo, np.random.default_rng(7))
    assert np.array_equal(near, again_near) and np.array_equal(far, again_far)
    sharp = _sharpness(photo)
    textured = sharp > np.quantile(sharp, 0.7)
    lost_near = (np.abs(near - photo).mean(axis=2) > 0.03) & textured
    lost_far = (np.abs(far - photo).mean(axis=2) > 0.03) & textured
    assert lost_near.mean() > 0.05 and lost_far.mean() > 0.05  # each image is defocused somewhere
    assert (lost_near & lost_far).sum() < 0.1 * (lost_near | lost_far).sum()  # ... and not in the same places
    best = np.minimum(np.abs(near - photo), np.abs(far - photo)).mean(axis=2)
    assert np.quantile(best, 0.9) < 0.02  # the photograph (target) is sharp in one source or the other


def test_exposure_pairs_in_linear_light(photo: np.ndarray) -> None:
    ((_, under_over, tags, how),) = list(synthesis.synthetic_samples(photo, "meif", np.random.default_rng(0)))
    assert tags == [] and how.startswith("exposure-")
    assert under_over["a"].mean() < photo.mean() - 0.1 < photo.mean() + 0.1 < under_over["b"].mean()
    assert under_over["gt"] is photo


def test_restoration_pairs_cover_every_kind_at_distinct_severities(photo: np.ndarray) -> None:
    samples = list(synthesis.synthetic_samples(photo, "restore", np.random.default_rng(1), variants=2))
    kinds = {}
    for name, arrays, tags, how in samples:
        (tag,) = tags
        kind, severity = tag.split(":")
        assert name == f"{kind}{severity}" and how == kind and set(arrays) == {"a", "gt"}
        assert np.abs(arrays["a"] - photo).mean() > 0.002
        kinds.setdefault(kind, []).append(int(severity))
    assert set(kinds) == set(synthesis.PHOTO_DEGRADATIONS)
    assert all(len(set(severities)) == 2 for severities in kinds.values())


def test_unknown_synthetic_task_is_named(photo: np.ndarray) -> None:
    with pytest.raises(ValueError, match="cannot synthesise task 'ivif'"):
        list(synthesis.synthetic_samples(photo, "ivif", np.random.default_rng(0)))


def _fake_roadscene(root: Path, count: int = 3) -> Path:
    source = skimage.data.astronaut()
    for number in range(count):
        visible = np.ascontiguousarray(source[number * 40 : number * 40 + 72, number * 30 : number * 30 + 96])
        save_png(root / "crop_LR_visible" / f"FLIR_{number:05d}.jpg", visible)
        save_png(root / "cropinfrared" / f"FLIR_{number:05d}.jpg", visible[..., 0])
    return root


def _read(out: Path) -> dict[str, tuple]:
    samples = {}
    for url in expand_urls(out):
        stats = StreamStats()
        for raw in iter_shard(url, stats):
            samples[raw["__key__"]] = (parse_sample(raw), json.loads(raw["json"]))
        assert not stats.skipped_samples and not stats.broken_shards
    return samples


def test_synthetic_build_is_tagged_and_deterministic(tmp_path: Path) -> None:
    src = _fake_roadscene(tmp_path / "roadscene")
    index = build_synthetic(tmp_path / "one", "roadscene", src, "mfif", seed=5, variants=2, options=QUIET)
    assert index["totals"]["tasks"] == {"mfif": 6} and index["totals"]["synthetic"] == 6
    samples = _read(tmp_path / "one")
    assert sorted(samples)[:2] == ["roadscene-mfif-FLIR_00000-mf0", "roadscene-mfif-FLIR_00000-mf1"]
    for (meta, members), record in samples.values():
        assert record["synthetic"] is True and meta.task == "mfif" and set(members) == {"a", "b", "gt"}
        assert meta.source.startswith("RoadScene/FLIR_") and meta.source.endswith("/defocus")

    build_synthetic(
        tmp_path / "two", "roadscene", src, "mfif", seed=5, variants=2, options=WriteOptions(workers=2, progress=False)
    )
    assert (tmp_path / "one" / "roadscene-mfif-000000.tar").read_bytes() == (
        tmp_path / "two" / "roadscene-mfif-000000.tar"
    ).read_bytes()
    build_synthetic(tmp_path / "subset", "roadscene", src, "mfif", seed=5, variants=2, limit=1, options=QUIET)
    subset = _read(tmp_path / "subset")
    assert len(subset) == 2 and all(subset[key][0][1] == samples[key][0][1] for key in subset)  # per-photo seeds
    build_synthetic(tmp_path / "other", "roadscene", src, "mfif", seed=6, variants=2, options=QUIET)
    other = _read(tmp_path / "other")
    assert other["roadscene-mfif-FLIR_00000-mf0"][0][1]["a"] != samples["roadscene-mfif-FLIR_00000-mf0"][0][1]["a"]


def test_synthesis_needs_an_infrared_visible_layout(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="infrared-visible layout .*harvard is med"):
        build_synthetic(tmp_path / "out", "harvard", tmp_path, "mfif")


def test_build_all_makes_one_folder_per_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fake_roadscene(tmp_path / "downloads" / "roadscene", count=2)
    for number in range(2):
        save_png(tmp_path / "downloads" / "MFIFB" / "A" / f"x{number}.png", np.full((40, 40), number, np.uint8))
        save_png(tmp_path / "downloads" / "MFIFB" / "B" / f"x{number}.png", np.full((40, 40), number, np.uint8))
    (tmp_path / "downloads" / "notes").mkdir()
    totals = build_all(tmp_path / "downloads", tmp_path / "shards", options=QUIET)
    assert "not a known layout, skipped: notes" in capsys.readouterr().err
    names = {Path(folder).name: value["tasks"] for folder, value in totals.items()}
    assert names == {
        "roadscene": {"ivif": 2},
        "roadscene-mfif": {"mfif": 2},
        "roadscene-meif": {"meif": 2},
        "roadscene-restore": {"restore": 10},
        "mfifb": {"mfif": 2},
    }


@pytest.mark.skipif(not DATASETS.is_dir(), reason="../shared/datasets is not on this machine")
def test_build_all_on_the_real_downloads(tmp_path: Path) -> None:
    """The documented command on ../shared/datasets, one pair per group (the full build is the same code)."""
    totals = build_all(DATASETS, tmp_path, synthesize=("mfif",), limit=1, options=QUIET)
    assert {Path(folder).name: value["samples"] for folder, value in totals.items()} == {
        "roadscene": 1,
        "roadscene-mfif": 1,
        "harvard": 3,
        "mfifb": 1,
    }


def test_holdout_photographs_stay_out_of_training_and_become_validation_pairs(tmp_path: Path) -> None:
    _fake_roadscene(tmp_path / "downloads" / "roadscene", count=3)
    totals = build_all(tmp_path / "downloads", tmp_path / "shards", ("mfif", "restore"), holdout=1, options=QUIET)
    names = {Path(folder).name: value["tasks"] for folder, value in totals.items()}
    assert names == {
        "roadscene": {"ivif": 2},
        "roadscene-mfif": {"mfif": 2},
        "roadscene-restore": {"restore": 10},
        "roadscene-holdout": {"mfif": 1, "restore": 5},
    }
    trained = set(_read(tmp_path / "shards" / "roadscene-mfif")) | set(_read(tmp_path / "shards" / "roadscene"))
    assert not any("FLIR_00002" in key for key in trained)  # the last photograph is held out

    held = discover_pairs(tmp_path / "shards" / "roadscene-holdout")
    assert sorted(pair["key"] for pair in held)[0] == "MFIF/roadscene-mfif-FLIR_00002-mf0"
    assert {pair["meta"]["task"] for pair in held} == {"mfif", "restore"}
    # the held-out sample is the one the shards would hold for that photograph
    build_synthetic(tmp_path / "all", "roadscene", tmp_path / "downloads" / "roadscene", "mfif", options=QUIET)
    (_, members), _ = _read(tmp_path / "all")["roadscene-mfif-FLIR_00002-mf0"]
    folder = tmp_path / "shards" / "roadscene-holdout" / "MFIF" / "roadscene-mfif-FLIR_00002-mf0"
    for role in ("a", "b", "gt"):
        assert np.array_equal(images.read_image(folder / f"{role}.png"), images.decode_png(members[role]))

    with pytest.raises(ValueError, match="--holdout 3 leaves no pair to train on"):
        build_synthetic(tmp_path / "x", "roadscene", tmp_path / "downloads" / "roadscene", "mfif", holdout=3)
