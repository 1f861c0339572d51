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
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from datamodules import images
from datamodules.schema import SampleMeta
from datamodules.shards import ShardSetWriter, encode_sample, normalise_tag, read_index

DEMO_VERSION = 1
DEMO_TASKS = ("mfif", "meif", "restore", "ivif")
TRAIN_PHOTOS = (
    "astronaut.png", "camera.png", "chelsea.png", "moon.png", "motorcycle_left.png", "hubble_deep_field.jpg",
    "retina.jpg", "ihc.png", "cell.png", "brick.png", "grass.png", "gravel.png",
)
VAL_PHOTOS = ("coffee.png", "coins.png", "rocket.jpg")
RESTORE_KINDS = ("noise", "blur", "lowlight", "haze", "jpeg")
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
# Image synthesis (float32 RGB or grey in [0, 1])


def _to_float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / (65535.0 if image.dtype == np.uint16 else 255.0)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def _srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def _linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0, 1)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055).astype(np.float32)


def _gaussian(image: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return image
    return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)


def _variable_blur(image: np.ndarray, sigma_map: np.ndarray, max_sigma: float) -> np.ndarray:
    """Per-pixel Gaussian defocus: blend between a stack of uniformly blurred copies."""
    levels = np.linspace(0.0, max_sigma, 7)
    stack = [_gaussian(image, float(s)) for s in levels]
    position = np.clip(sigma_map / max_sigma * (len(levels) - 1), 0, len(levels) - 1 - 1e-6)
    low = np.floor(position).astype(np.int64)
    frac = (position - low).astype(np.float32)
    out = np.zeros_like(image)
    for index in range(len(levels) - 1):
        weight_low = np.where(low == index, 1 - frac, 0).astype(np.float32)
        weight_high = np.where(low == index, frac, 0).astype(np.float32)
        if image.ndim == 3:
            weight_low, weight_high = weight_low[..., None], weight_high[..., None]
        out += weight_low * stack[index] + weight_high * stack[index + 1]
    return out


def _blob_mask(shape: tuple[int, int], rng: np.random.Generator, coverage: float = 0.45) -> np.ndarray:
    """A smooth foreground mask in [0, 1] from thresholded low-frequency noise."""
    height, width = shape
    noise = rng.standard_normal((max(4, height // 32), max(4, width // 32))).astype(np.float32)
    field = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    field = _gaussian(field, min(height, width) / 24)
    threshold = np.quantile(field, 1 - coverage)
    mask = (field > threshold).astype(np.float32)
    return np.clip(_gaussian(mask, 2.0), 0, 1)


def _smooth_depth(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A plausible scene depth in [0, 1] (0 near): a ground-plane gradient plus low-frequency relief."""
    height, width = shape
    rows = np.linspace(1.0, 0.0, height, dtype=np.float32)[:, None].repeat(width, 1)
    relief = cv2.resize(rng.standard_normal((6, 6)).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    depth = 0.7 * rows + 0.3 * (relief - relief.min()) / (np.ptp(relief) + 1e-6)
    return (depth - depth.min()) / (np.ptp(depth) + 1e-6)


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


def make_multifocus(photo: np.ndarray, depth: np.ndarray | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """(near focus, far focus, how): defocus grows with distance from each focal plane."""
    max_sigma = float(rng.uniform(3.0, 5.5))
    if depth is not None:
        plane_near, plane_far = np.quantile(depth, 0.1), np.quantile(depth, 0.85)
        near = _variable_blur(photo, np.abs(depth - plane_near) / (1 - plane_near + 1e-6) * max_sigma * 1.4, max_sigma)
        far = _variable_blur(photo, np.abs(depth - plane_far) / (plane_far + 1e-6) * max_sigma * 1.4, max_sigma)
        return near, far, "depth"
    mask = _blob_mask(photo.shape[:2], rng)
    near = _variable_blur(photo, (1 - mask) * max_sigma, max_sigma)  # foreground sharp
    far = _variable_blur(photo, mask * max_sigma, max_sigma)  # background sharp
    return near, far, "mask"


def _shoulder(x_linear: np.ndarray, knee: float = 0.75) -> np.ndarray:
    """Identity below ``knee``, then an exponential roll-off to 1 (highlights saturate softly)."""
    span = 1.0 - knee
    return np.where(x_linear < knee, x_linear, knee + span * (1 - np.exp(-(x_linear - knee) / span))).astype(np.float32)


def make_exposures(photo: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """(under, over, stops): the photograph shifted by -stops and +stops in linear light."""
    stops = float(rng.uniform(1.8, 3.0))
    linear = _srgb_to_linear(photo)
    under = _linear_to_srgb(linear * 2.0**-stops)
    over = _linear_to_srgb(_shoulder(linear * 2.0**stops))
    return under, over, stops


def degrade(photo: np.ndarray, kind: str, severity: int, rng: np.random.Generator, depth: np.ndarray | None = None) -> np.ndarray:
    """One degradation of ``kind`` at ``severity`` (1..3) applied to a float image in [0, 1]."""
    level = severity - 1
    if kind == "noise":
        sigma = (0.04, 0.09, 0.16)[level]
        return np.clip(photo + rng.normal(0, sigma, photo.shape).astype(np.float32), 0, 1)
    if kind == "blur":
        if rng.random() < 0.5:
            return _gaussian(photo, (1.2, 2.2, 3.5)[level])
        length = (7, 13, 21)[level]
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2, :] = 1.0 / length
        rotation = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), float(rng.uniform(0, 180)), 1.0)
        kernel = cv2.warpAffine(kernel, rotation, (length, length))
        kernel /= kernel.sum()
        return cv2.filter2D(photo, -1, kernel, borderType=cv2.BORDER_REFLECT)
    if kind == "lowlight":
        gain = (0.3, 0.15, 0.07)[level]
        dark = _linear_to_srgb(_srgb_to_linear(photo) * gain)
        shot = rng.normal(0, 1, photo.shape).astype(np.float32) * np.sqrt(np.maximum(dark, 0) * 0.002) + rng.normal(0, 0.004, photo.shape).astype(np.float32)
        return np.clip(dark + shot, 0, 1)
    if kind == "haze":
        depth = depth if depth is not None else _smooth_depth(photo.shape[:2], rng)
        beta = (0.8, 1.5, 2.4)[level]
        transmission = np.exp(-beta * (0.2 + depth)).astype(np.float32)
        if photo.ndim == 3:
            transmission = transmission[..., None]
        airlight = float(rng.uniform(0.75, 0.95))
        return np.clip(photo * transmission + airlight * (1 - transmission), 0, 1)
    if kind == "jpeg":
        quality = (35, 18, 8)[level]
        as_uint8 = _to_uint8(photo)
        bgr = as_uint8 if as_uint8.ndim == 2 else cv2.cvtColor(as_uint8, cv2.COLOR_RGB2BGR)
        ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
        decoded = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
        decoded = decoded if decoded.ndim == 2 else cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
        return _to_float(decoded)
    raise ValueError(f"unknown degradation {kind!r}")


def make_infrared(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A grey infrared-like image: smoothed emission, hot objects, little texture, sensor noise.

    Warm-coloured regions (skin, red paint) of a colour photograph become the hot objects; a grey
    photograph gets a few hot blobs where it is bright.
    """
    grey = photo if photo.ndim == 2 else photo @ np.array([0.299, 0.587, 0.114], np.float32)
    base = 0.2 + 0.3 * _gaussian(0.6 * grey + 0.4 * (1.0 - grey), 4.0)
    if photo.ndim == 3:
        warm = np.clip((photo[..., 0] - photo[..., 2]) * 2.5, 0, 1) * np.clip(photo[..., 0] * 1.5, 0, 1)
        hot = _gaussian(warm, 3.0)
    else:
        hot = _blob_mask(grey.shape, rng, coverage=0.15) * _gaussian(grey, 3.0)
    hot = hot / (hot.max() + 1e-6) * float(rng.uniform(0.4, 0.6))
    edges = np.abs(cv2.Laplacian(_gaussian(grey, 1.5), cv2.CV_32F, ksize=3))
    texture = 0.12 * edges / (np.quantile(edges, 0.99) + 1e-6)
    columns = 0.004 * rng.standard_normal(grey.shape[1]).astype(np.float32)[None, :]  # fixed-pattern noise
    infrared = base + hot + texture + columns + rng.normal(0, 0.01, grey.shape).astype(np.float32)
    return np.clip(infrared, 0, 1)


# --------------------------------------------------------------------------------------------
# Assembling samples


def load_photo(name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A photograph as float32 in [0, 1], long side at most MAX_SIDE, short side at least MIN_SIDE; plus depth if known."""
    image = images.read_image(photo_dir() / name)
    height, width = image.shape[:2]
    scale = min(1.0, MAX_SIDE / max(height, width))
    scale = max(scale, MIN_SIDE / min(height, width))
    if scale != 1.0:
        image = images.resize_to(image, round(height * scale), round(width * scale))
    photo = _to_float(image)
    depth = motorcycle_depth(photo.shape[:2]) if name.startswith("motorcycle") else None
    return photo, depth


def photo_samples(name: str, rng: np.random.Generator, split: str) -> Iterator[tuple[str, dict[str, np.ndarray], SampleMeta]]:
    """The demo samples made from one photograph: (pair id, {role: uint8 array}, metadata)."""
    photo, depth = load_photo(name)
    stem = images.safe_key(Path(name).stem)
    source = f"skimage/{Path(name).stem}"
    variants = 2 if split == "train" else 1

    for index in range(variants):
        near, far, how = make_multifocus(photo, depth, rng)
        yield f"{stem}-mf{index}", {"a": _to_uint8(near), "b": _to_uint8(far), "gt": _to_uint8(photo)}, SampleMeta(
            task="mfif", source=f"{source}/{how}-defocus", prompt="fuse the near- and far-focused images into one sharp image"
        )
    for index in range(variants):
        under, over, stops = make_exposures(photo, rng)
        yield f"{stem}-me{index}", {"a": _to_uint8(under), "b": _to_uint8(over), "gt": _to_uint8(photo)}, SampleMeta(
            task="meif", source=f"{source}/exposure-{stops:.1f}ev", prompt="fuse the under- and over-exposed images"
        )
    for index in range(variants):
        infrared = make_infrared(photo, rng)
        yield f"{stem}-ir{index}", {"a": _to_uint8(infrared), "b": _to_uint8(photo)}, SampleMeta(
            task="ivif", source=f"{source}/synthetic-infrared", synthetic=True,
            prompt="fuse the infrared and visible images",
        )
    severities = [2] * len(RESTORE_KINDS) if split == "val" else None
    for index, kind in enumerate(RESTORE_KINDS):
        for severity in severities[index : index + 1] if severities else rng.choice([1, 2, 3], size=2, replace=False):
            degraded = degrade(photo, kind, int(severity), rng, depth)
            tag = normalise_tag(f"{kind}:{int(severity)}")
            yield f"{stem}-{kind}{int(severity)}", {"a": _to_uint8(degraded), "gt": _to_uint8(photo)}, SampleMeta(
                task="restore", degradations=[tag], source=f"{source}/{kind}", prompt=f"remove the {kind} from the image"
            )


def _write_pair_folder(folder: Path, arrays: dict[str, np.ndarray], meta: SampleMeta) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for role, array in arrays.items():
        (folder / f"{role}.png").write_bytes(images.encode_png(array, level=6))
    record = meta.to_json()
    (folder / "meta.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


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
                    _write_pair_folder(staging / "val" / meta.task.upper() / pair_id, arrays, meta)
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


def demo_sources(root: str | Path | None = None) -> list:
    """One mixture source per demo task, equally weighted."""
    from datamodules.mixture import ShardSource

    root = demo_root(root)
    shards = read_index(root / "train")["shards"]
    return [
        ShardSource(urls=[str(root / "train" / s["name"]) for s in shards if s["name"].startswith(f"{task}-")], weight=1.0, task=task, name=task)
        for task in DEMO_TASKS
    ]


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
    from datamodules.shards import format_totals

    print(f"demo set in {root}: {manifest['samples']['train']} training samples (shards in train/), "
          f"{manifest['samples']['val']} validation pairs (val/)")
    print(format_totals(read_index(root / "train")["totals"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
