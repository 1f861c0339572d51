"""Small shard sets and image folders made on the fly for the data-plane tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datamodules.schema import SampleMeta
from datamodules.shards.writer import ShardSetWriter, encode_sample


def random_image(rng: np.random.Generator, height: int, width: int, channels: int = 1, depth: int = 8) -> np.ndarray:
    high = 256 if depth == 8 else 65536
    dtype = np.uint8 if depth == 8 else np.uint16
    shape = (height, width) if channels == 1 else (height, width, channels)
    return rng.integers(0, high, shape).astype(dtype)


def write_shards(
    out: Path,
    prefix: str,
    task: str,
    count: int,
    maxcount: int,
    size: tuple[int, int] = (40, 48),
    seed: int = 0,
    degradations: list[str] | None = None,
) -> list[str]:
    """``count`` random samples of ``task`` as shards ``out/prefix-*.tar``; returns their keys."""
    rng = np.random.default_rng(seed)
    keys = []
    with ShardSetWriter(out, prefix, maxcount=maxcount) as writer:
        for number in range(count):
            key = f"{prefix}-{number:05d}"
            arrays = {"a": random_image(rng, *size), "gt": random_image(rng, *size)}
            if task != "restore":
                arrays["b"] = random_image(rng, *size, channels=3)
            meta = SampleMeta(task=task, degradations=degradations or [], source=f"test/{prefix}")
            writer.write(encode_sample(key, arrays, meta))
            keys.append(key)
    return keys


def save_png(path: Path, image: np.ndarray) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), bgr)
