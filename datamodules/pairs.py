"""Paired folders at full resolution, for validation, test and predict.

Three layouts are recognised (the first that fits wins):

1. Task folders of pair folders, as in ``shared/fusion-bench/pairs``::

       ROOT/IVIF/<pair_id>/a.png, b.png [, gt.png] [, meta.json]
       ROOT/MFIF/<pair_id>/...

   Task folder names are the task names in any case (IVIF, mfif, RESTORE, ...).
2. Pair folders directly under ROOT (``ROOT/<pair_id>/a.png, b.png ...``); the task comes from
   each pair's ``meta.json`` or the ``task`` argument.
3. Source folders matched by file stem (``ROOT/<a_dir>/x.png`` with ``ROOT/<b_dir>/x.png``, and
   ``ROOT/<gt_dir>/x.png`` if given), e.g. ``a_dir="ir", b_dir="vi"``; the task comes from ``task``.

Images may be PNG, JPEG or TIFF, grey or RGB, 8- or 16-bit; pairs may differ in size from each
other (batch them one at a time), but a pair's own images must match. An optional
``meta.json`` holds ``{"task", "degradations", "prompt", "bit_depth"}`` for that pair. Restoration
pairs (task ``restore``) hold ``a`` (degraded) and ``gt`` (clean) only.

Bit depth of 16-bit pairs: ``bit_depth`` from ``meta.json`` (10, 12, 14 or 16) if given, else the
smallest of 10, 12, 14, 16 bits that holds the largest value in any of the pair's 16-bit images;
images are scaled to [0, 1] by ``2**bits - 1`` and predict writes 16-bit PNGs on that same scale.

Each item follows :mod:`datamodules.schema`: luminance ``a``/``b``/``gt`` plus ``a_color`` /
``b_color`` (RGB), the stored channel counts and the bit depth, and ``key`` = ``TASKDIR/pair_id``
(or the stem), which predict uses to name its outputs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules import images
from datamodules.images import ImageError
from datamodules.schema import (
    TASKS,
    SampleMeta,
    degradation_vector,
    effective_bit_depth,
    luminance,
    task_id,
    to_float,
)


def write_pair_folder(folder: Path, arrays: dict[str, np.ndarray], meta: SampleMeta) -> None:
    """Write one pair folder (``a.png`` [``b.png``] [``gt.png``] ``meta.json``) that this module reads back."""
    folder.mkdir(parents=True, exist_ok=True)
    for role, array in arrays.items():
        (folder / f"{role}.png").write_bytes(images.encode_png(array, level=6))
    (folder / "meta.json").write_text(json.dumps(meta.to_json(), indent=1, sort_keys=True) + "\n")


def _find_member(folder: Path, role: str) -> Path | None:
    for suffix in images.IMAGE_SUFFIXES:
        for candidate in (folder / f"{role}{suffix}", folder / f"{role}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def _pair_folder(folder: Path, key: str, task: str | None) -> dict[str, Any] | None:
    paths = {role: _find_member(folder, role) for role in ("a", "b", "gt")}
    if paths["a"] is None:
        return None
    meta_path = folder / "meta.json"
    record: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    record.setdefault("task", task)
    if record["task"] is None:
        raise ValueError(f"{folder}: no task; put it in {meta_path.name} or pass the pair task (data.pair_task)")
    return {"key": key, "paths": {role: path for role, path in paths.items() if path is not None}, "meta": record}


def discover_pairs(
    root: str | Path,
    task: str | None = None,
    a_dir: str | None = None,
    b_dir: str | None = None,
    gt_dir: str | None = None,
) -> list[dict[str, Any]]:
    """The pairs under ``root`` as ``{"key", "paths": {role: path}, "meta": {...}}``, sorted by key."""
    root = Path(root)
    if not root.is_dir():
        raise ImageError(f"{root}: pair folder not found")
    if a_dir is not None:
        if b_dir is None and task != "restore":
            raise ValueError("stem-matched pairs need b_dir (or task='restore' with gt_dir)")
        folders = {"a": root / a_dir}
        if b_dir is not None:
            folders["b"] = root / b_dir
        if gt_dir is not None:
            folders["gt"] = root / gt_dir
        if task is None:
            raise ValueError("stem-matched pairs need the task")
        return [{"key": stem, "paths": paths, "meta": {"task": task}} for stem, paths in images.pair_by_stem(folders)]
    pairs: list[dict[str, Any]] = []
    task_dirs = sorted(d for d in root.iterdir() if d.is_dir() and d.name.lower() in TASKS)
    if task_dirs:
        for task_dir in task_dirs:
            for folder in sorted(d for d in task_dir.iterdir() if d.is_dir()):
                pair = _pair_folder(folder, f"{task_dir.name}/{folder.name}", task_dir.name.lower())
                if pair is not None:
                    pairs.append(pair)
    else:
        for folder in sorted(d for d in root.iterdir() if d.is_dir()):
            pair = _pair_folder(folder, folder.name, task)
            if pair is not None:
                pairs.append(pair)
    if not pairs:
        raise ImageError(
            f"{root}: no pairs found; expected ROOT/<TASK>/<pair>/a.png,b.png or ROOT/<pair>/a.png,b.png "
            "(or set a_dir/b_dir for folders matched by stem)"
        )
    return pairs


def _color(image: np.ndarray, bit_depth: int) -> torch.Tensor:
    tensor = to_float(image, bit_depth)
    return tensor.expand(3, -1, -1).contiguous() if tensor.shape[0] == 1 else tensor


def _bit_depth(arrays: dict[str, np.ndarray], paths: dict[str, Path], declared: int | None) -> int:
    """The pair's effective bit depth (rule in the module docstring); 8 when no image is 16-bit."""
    deep = {role: array for role, array in arrays.items() if array.dtype == np.uint16}
    if not deep:
        return 8
    peak = max(int(array.max()) for array in deep.values())
    if declared is None:
        return effective_bit_depth(peak)
    if peak >= 1 << declared:
        role = max(deep, key=lambda name: int(deep[name].max()))
        raise ImageError(
            f"{paths[role]}: value {peak} does not fit bit_depth {declared} of its meta.json; "
            "raise bit_depth there or remove it to detect the depth"
        )
    return declared


class PairFolderDataset(Dataset):
    """Full-resolution pairs from a folder (layouts in the module docstring).

    ``key_prefix`` is put before every key (to keep keys apart when several folders are read).
    """

    def __init__(
        self,
        root: str | Path,
        task: str | None = None,
        a_dir: str | None = None,
        b_dir: str | None = None,
        gt_dir: str | None = None,
        key_prefix: str | None = None,
    ):
        self.root = Path(root)
        self.pairs = discover_pairs(root, task=task, a_dir=a_dir, b_dir=b_dir, gt_dir=gt_dir)
        if key_prefix:
            for pair in self.pairs:
                pair["key"] = f"{key_prefix}/{pair['key']}"
        for pair in self.pairs:
            meta = SampleMeta.from_json(pair["meta"])  # validates task and degradation tags
            if meta.task == "restore" and "gt" not in pair["paths"]:
                raise ValueError(f"{self.root}/{pair['key']}: a restore pair needs gt (the clean image)")
            if meta.task != "restore" and "b" not in pair["paths"]:
                raise ValueError(f"{self.root}/{pair['key']}: a {meta.task} pair needs b")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair = self.pairs[index]
        meta = SampleMeta.from_json(pair["meta"])
        arrays = {role: images.read_image(path) for role, path in pair["paths"].items()}
        sizes = {role: array.shape[:2] for role, array in arrays.items()}
        if len(set(sizes.values())) > 1:
            listing = ", ".join(f"{pair['paths'][role]} is {h}x{w}" for role, (h, w) in sizes.items())
            raise ImageError(f"pair sizes differ: {listing} (H x W)")
        bit_depth = _bit_depth(arrays, pair["paths"], meta.bit_depth)
        item: dict[str, Any] = {
            "task": task_id(meta.task),
            "degradation": degradation_vector(meta.degradations),
            "prompt": meta.prompt or "",
            "key": pair["key"],
            "a_channels": images.image_info(arrays["a"])[0],
            "bit_depth": bit_depth,
        }
        for role in ("a", "b", "gt"):
            array = arrays.get(role)
            item[role] = None if array is None else luminance(to_float(array, bit_depth))
        item["a_color"] = _color(arrays["a"], bit_depth)
        if "b" in arrays:
            item["b_color"] = _color(arrays["b"], bit_depth)
            item["b_channels"] = images.image_info(arrays["b"])[0]
        else:
            item["b_color"] = None
            item["b_channels"] = 0
        return item
