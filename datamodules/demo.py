"""The built-in demo set: a small multi-task training set made from real photographs.

    python -m datamodules.demo [--out DIR] [--force]

The photographs ship inside scikit-image (``skimage/data``: astronaut, camera, the Middlebury
motorcycle stereo pair with its disparity map, ...), so nothing is downloaded. From each one the
builder derives, deterministically:

* ``mfif``: near- and far-focus pairs with the all-in-focus photograph as target. The defocus
  follows a depth map: the real one from the stereo pair's disparity for the motorcycle, a
  foreground mask (smooth random blobs) for the others.
* ``meif``: under- and over-exposed pairs (exposure shift in linear light, then a film-like tone
  curve and 8-bit quantisation), the photograph as the well-exposed target.
* ``restore``: degraded -> clean pairs for noise, blur, lowlight, haze and jpeg, each at a
  severity of 1..3 (tagged ``kind:severity``).
* ``ivif``: an infrared-like image made synthetically (smoothed emission, hot foreground
  objects, sensor noise) with the photograph as the visible image, tagged ``"synthetic": true``.

Training samples are written as shards (``DIR/train/<task>-NNNNNN.tar`` + ``index.json``); the
held-out validation split, from photographs the training set never sees, is written as paired
folders (``DIR/val/<TASK>/<pair>/a.png, b.png, gt.png, meta.json``) for
:class:`datamodules.pairs.PairFolderDataset`. ``fit`` without explicit sources builds it on first
use via :func:`ensure_demo`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from datamodules import images, synthesis
from datamodules.pairs import write_pair_folder
from datamodules.schema import SampleMeta
from datamodules.shards.verify import format_totals
from datamodules.shards.writer import (
    ShardSetWriter,
    encode_sample,
    normalise_tag,
    read_index,
)

DEMO_VERSION = 1
DEMO_TASKS = ("mfif", "meif", "restore", "ivif")
TRAIN_PHOTOS = (
    "astronaut.png",
    "camera.png",
    "chelsea.png",
    "moon.png",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
    "cell.png",
    "brick.png",
    "grass.png",
    "gravel.png",
)
VAL_PHOTOS = ("coffee.png", "coins.png", "rocket.jpg")
MAX_SIDE = 512
MIN_SIDE = 256
PROJECT_ROOT = Path(__file__).resolve().parents[1]
_DONE = "demo.json"


def demo_root(path: str | Path | None = None) -> Path:
    """Where the demo set lives: ``path``, ``$UNIFUSE_DEMO_DIR``, or ``data/demo`` in the project."""
    if path is not None:
        return Path(path)
    if os.environ.get("UNIFUSE_DEMO_DIR"):
        return Path(os.environ["UNIFUSE_DEMO_DIR"])
    if (PROJECT_ROOT / "pyproject.toml").is_file():
        return PROJECT_ROOT / "data" / "demo"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "unifuse" / "demo"


def photo_dir() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


# --------------------------------------------------------------------------------------------
# Depth of the stereo photograph


def motorcycle_depth(shape: tuple[int, int]) -> np.ndarray:
    """Depth in [0, 1] (0 near) from the Middlebury disparity map that ships with the stereo pair."""
    disparity = np.load(photo_dir() / "motorcycle_disp.npz")["arr_0"].astype(np.float32)
    valid = np.isfinite(disparity)
    filled = disparity.copy()
    filled[~valid] = 0
    # fill occlusions with the surrounding (background) disparity
    filled = cv2.inpaint(filled, (~valid).astype(np.uint8), 5, cv2.INPAINT_TELEA) if (~valid).any() else filled
    filled = cv2.resize(filled, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    near = (filled - filled.min()) / (np.ptp(filled) + 1e-6)
    return 1.0 - near


# --------------------------------------------------------------------------------------------
# Assembling samples


def load_photo(name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A photograph as float32 in [0, 1] (long side <= MAX_SIDE, short side >= MIN_SIDE), and its depth if known."""
    image = images.read_image(photo_dir() / name)
    height, width = image.shape[:2]
    scale = min(1.0, MAX_SIDE / max(height, width))
    scale = max(scale, MIN_SIDE / min(height, width))
    if scale != 1.0:
        image = images.resize_to(image, round(height * scale), round(width * scale))
    photo = synthesis.to_unit_float(image)
    depth = motorcycle_depth(photo.shape[:2]) if name.startswith("motorcycle") else None
    return photo, depth


def photo_samples(
    name: str, rng: np.random.Generator, split: str
) -> Iterator[tuple[str, dict[str, np.ndarray], SampleMeta]]:
    """The demo samples made from one photograph: (pair id, {role: uint8 array}, metadata)."""
    photo, depth = load_photo(name)
    stem = images.safe_key(Path(name).stem)
    source = f"skimage/{Path(name).stem}"
    variants = 2 if split == "train" else 1

    for index in range(variants):
        near, far, how = synthesis.make_multifocus(photo, depth, rng)
        yield (
            f"{stem}-mf{index}",
            {"a": synthesis.to_uint8(near), "b": synthesis.to_uint8(far), "gt": synthesis.to_uint8(photo)},
            SampleMeta(
                task="mfif",
                source=f"{source}/{how}-defocus",
                prompt="fuse the near- and far-focused images into one sharp image",
            ),
        )
    for index in range(variants):
        under, over, stops = synthesis.make_exposures(photo, rng)
        yield (
            f"{stem}-me{index}",
            {"a": synthesis.to_uint8(under), "b": synthesis.to_uint8(over), "gt": synthesis.to_uint8(photo)},
            SampleMeta(
                task="meif", source=f"{source}/exposure-{stops:.1f}ev", prompt="fuse the under- and over-exposed images"
            ),
        )
    for index in range(variants):
        infrared = synthesis.make_infrared(photo, rng)
        yield (
            f"{stem}-ir{index}",
            {"a": synthesis.to_uint8(infrared), "b": synthesis.to_uint8(photo)},
            SampleMeta(
                task="ivif",
                source=f"{source}/synthetic-infrared",
                synthetic=True,
                prompt="fuse the infrared and visible images",
            ),
        )
    severities = [2] * len(synthesis.PHOTO_DEGRADATIONS) if split == "val" else None
    for index, kind in enumerate(synthesis.PHOTO_DEGRADATIONS):
        for severity in severities[index : index + 1] if severities else rng.choice([1, 2, 3], size=2, replace=False):
            degraded = synthesis.degrade_photo(photo, kind, int(severity), rng, depth)
            tag = normalise_tag(f"{kind}:{int(severity)}")
            yield (
                f"{stem}-{kind}{int(severity)}",
                {"a": synthesis.to_uint8(degraded), "gt": synthesis.to_uint8(photo)},
                SampleMeta(
                    task="restore",
                    degradations=[tag],
                    source=f"{source}/{kind}",
                    prompt=f"remove the {kind} from the image",
                ),
            )


def build_demo(
    out: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    maxcount: int = 16,
    level: int = 0,
    train_photos: tuple[str, ...] = TRAIN_PHOTOS,
    val_photos: tuple[str, ...] = VAL_PHOTOS,
    force: bool = True,
) -> Path:
    """Build the demo set into ``out`` (atomically: a half-built set is never left in place).

    ``level`` is the shards' PNG deflate level (0: stored, fastest to decode); the photo lists
    exist so that tests can build a smaller set. With ``force=False`` a complete set that another
    process finished meanwhile is kept.
    """
    out = demo_root(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-building-", dir=out.parent))
    started = time.time()
    try:
        writers = {task: ShardSetWriter(staging / "train", task, maxcount=maxcount) for task in DEMO_TASKS}
        counts = {"train": 0, "val": 0}
        jobs = [(name, "train") for name in train_photos] + [(name, "val") for name in val_photos]
        iterator: Any = jobs
        if progress:
            from tqdm import tqdm

            iterator = tqdm(jobs, desc="building the demo set", unit="photo", file=sys.stderr, dynamic_ncols=True)
        for name, split in iterator:
            rng = np.random.default_rng([seed, zlib.crc32(name.encode())])  # per photo: stable under subsets
            for pair_id, arrays, meta in photo_samples(name, rng, split):
                if split == "train":
                    writers[meta.task].write(encode_sample(f"demo-{pair_id}", arrays, meta, level=level))
                else:
                    write_pair_folder(staging / "val" / meta.task.upper() / pair_id, arrays, meta)
                counts[split] += 1
        for writer in writers.values():
            writer.close()
        manifest = {
            "version": DEMO_VERSION,
            "seed": seed,
            "train_photos": list(train_photos),
            "val_photos": list(val_photos),
            "samples": counts,
            "train_totals": read_index(staging / "train")["totals"],
            "seconds": round(time.time() - started, 1),
        }
        (staging / _DONE).write_text(json.dumps(manifest, indent=1) + "\n")
        if is_built(out) and not force:  # another process (a node sharing the folder) finished first
            shutil.rmtree(staging)
        else:
            if out.exists():
                shutil.rmtree(out)
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def is_built(root: str | Path | None = None) -> bool:
    marker = demo_root(root) / _DONE
    try:
        return json.loads(marker.read_text()).get("version") == DEMO_VERSION
    except (FileNotFoundError, json.JSONDecodeError):
        return False


def ensure_demo(root: str | Path | None = None, progress: bool = True) -> Path:
    """The demo set's folder, building it first if it is missing or out of date."""
    root = demo_root(root)
    if not is_built(root):
        print(f"The demo set is not built yet: building it in {root} (about a minute, once).", file=sys.stderr)
        build_demo(root, progress=progress, force=False)
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datamodules.demo", description="Build the built-in demo set.")
    parser.add_argument("--out", help="output folder (default: data/demo in the project, or $UNIFUSE_DEMO_DIR)")
    parser.add_argument("--force", action="store_true", help="rebuild even if it is already there")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = demo_root(args.out)
    if is_built(root) and not args.force:
        print(f"demo set already built in {root} (use --force to rebuild)")
    else:
        build_demo(root, seed=args.seed)
    manifest = json.loads((root / _DONE).read_text())
    print(
        f"demo set in {root}: {manifest['samples']['train']} training samples (shards in train/), "
        f"{manifest['samples']['val']} validation pairs (val/)"
    )
    print(format_totals(read_index(root / "train")["totals"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
