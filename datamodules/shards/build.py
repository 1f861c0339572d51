"""Building shards from folders of images paired by file stem.

Every image is re-encoded losslessly as a window-decodable PNG (:func:`datamodules.images.encode_png`;
grey, RGB, 8- and 16-bit kept exactly). Bad input stops the build with one error that names every
offending file: stems present on one side only, pairs of different sizes (unless ``resize`` says how
to align them), files that do not decode.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from datamodules import images
from datamodules.images import ImageError
from datamodules.schema import SampleMeta
from datamodules.shards.progress import progress_bar
from datamodules.shards.writer import ShardSetWriter, encode_sample, read_index


@dataclasses.dataclass
class _PairJob:
    key: str
    paths: dict[str, Path]
    meta: SampleMeta
    resize: str | None
    level: int


def _encode_pair(job: _PairJob) -> tuple[str, dict[str, bytes] | None, str | None]:
    try:
        arrays = {role: images.read_image(path) for role, path in job.paths.items()}
        arrays = images.same_size(arrays, job.paths, job.resize)
        meta = dataclasses.replace(
            job.meta, source=f"{job.meta.source}/{job.paths['a'].stem}" if job.meta.source else job.paths["a"].stem
        )
        return job.key, encode_sample(job.key, arrays, meta, job.level), None
    except (ImageError, ValueError) as error:
        return job.key, None, str(error)


def parse_size(text: str | int) -> int:
    """``"500M"`` -> 524288000; accepts K, M, G, T suffixes (powers of 1024) or plain bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 1000000, 500M, 2G)")
    scale = 1024 ** " KMGT".index(match.group(2).upper() or " ")
    return int(float(match.group(1)) * scale)


def build_from_folders(
    out_dir: str | Path,
    a: str | Path,
    task: str,
    b: str | Path | None = None,
    gt: str | Path | None = None,
    degradations: Sequence[str] = (),
    prompt: str | None = None,
    source: str = "",
    synthetic: bool = False,
    prefix: str | None = None,
    maxcount: int = 1000,
    maxsize: int = 1 << 30,
    resize: str | None = None,
    level: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Pair ``a``/``b``/``gt`` folders by stem and write them as shards; returns the updated index.

    All bad inputs are collected and raised together as one :class:`ImageError`, and no shard of
    this prefix is left behind.
    """
    meta = SampleMeta(task=task, degradations=list(degradations), prompt=prompt, source=source, synthetic=synthetic)
    folders = {"a": a}
    if b is not None:
        folders["b"] = b
    if gt is not None:
        folders["gt"] = gt
    if task == "restore" and b is not None:
        raise ValueError("a restoration pair is degraded (--a) and clean (--gt); it takes no --b")
    if task == "restore" and gt is None:
        raise ValueError("a restoration pair needs the clean images as --gt")
    if task != "restore" and b is None:
        raise ValueError(f"task {task} fuses two sources: pass the second folder as --b")
    if resize is not None and resize not in (*folders, "crop"):
        raise ValueError(f"--resize {resize}: choose one of {', '.join([*folders, 'crop'])}")
    pairs = images.pair_by_stem(folders)
    prefix = prefix or task
    jobs = []
    used: dict[str, str] = {}
    for stem, paths in pairs:
        key = f"{prefix}-{images.safe_key(stem)}"
        if key in used:
            raise ImageError(f"stems {used[key]!r} and {stem!r} map to the same sample key {key!r}; rename one")
        used[key] = stem
        jobs.append(_PairJob(key, paths, meta, resize, level))

    errors: list[str] = []
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    writer = ShardSetWriter(out_dir, prefix, maxcount=maxcount, maxsize=maxsize)
    try:
        results: Iterable[tuple[str, dict[str, bytes] | None, str | None]]
        pool = None
        if workers > 1:
            pool = multiprocessing.get_context("fork").Pool(workers)
            results = pool.imap(_encode_pair, jobs, chunksize=2)
        else:
            results = map(_encode_pair, jobs)
        for _, members, error in progress_bar(results, total=len(jobs), desc=f"building {prefix}", enabled=progress):
            if error is not None:
                errors.append(error)
            elif not errors:
                writer.write(members)
        if pool is not None:
            pool.close()
            pool.join()
    except BaseException:
        writer.close(write_index=False)
        _remove_prefix(Path(out_dir), prefix)
        raise
    if errors:
        writer.close(write_index=False)
        _remove_prefix(Path(out_dir), prefix)
        shown = "\n  ".join(errors[:30]) + (f"\n  ... and {len(errors) - 30} more" if len(errors) > 30 else "")
        raise ImageError(f"{len(errors)} of {len(jobs)} pairs could not be used; nothing was written:\n  {shown}")
    writer.close()
    return read_index(out_dir)


def _remove_prefix(out_dir: Path, prefix: str) -> None:
    for shard in out_dir.glob(f"{prefix}-[0-9][0-9][0-9][0-9][0-9][0-9].tar"):
        shard.unlink()
