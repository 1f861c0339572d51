"""Building shards: from folders paired by file stem, from published dataset layouts, and
synthesised from the visible photographs of an infrared-visible data set.

Every image is re-encoded losslessly as a window-decodable PNG (:func:`datamodules.images.encode_png`;
grey, RGB, 8- and 16-bit kept exactly). Bad input stops the build with one error that names every
offending file: stems present on one side only, pairs of different sizes (unless ``resize`` says how
to align them), files that do not decode; a failed build leaves the previous shards of its prefix
(and their index entries) as they were.

Bit depth: 16-bit sources often hold 10-14-bit data (medical, NIR). Each call of :func:`build_pairs`
(one folder set, or one split of a layout) first finds the largest value in its 16-bit images and
records the smallest of 10, 12, 14, 16 bits that holds it as ``bit_depth`` in every sample's json,
so readers scale by ``2**bits - 1`` instead of 65535; ``bit_depth=`` (``--bit-depth``) sets it
instead, and a value that does not fit it is an error. 16 bits and 8-bit sources record nothing.

- :func:`build_from_folders`: ``a``/``b``/``gt`` folders paired by stem, the task given;
- :func:`build_layout`: a download in a published layout (:mod:`datamodules.shards.layouts`), one
  shard prefix per split or subset (``msrs-train``, ``harvard-ct-mri``);
- :func:`build_synthetic`: multi-focus, multi-exposure or restoration samples made from the
  visible images of an infrared-visible layout (:func:`datamodules.synthesis.synthetic_samples`),
  deterministic from a seed, tagged ``"synthetic": true``;
- :func:`build_all`: every known layout in a folder of downloads, each into its own shard folder,
  plus the synthetic sets from each infrared-visible one (what the ``-real`` configs train on).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import multiprocessing
import os
import re
import shutil
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datamodules import images, synthesis
from datamodules.images import ImageError
from datamodules.pairs import write_pair_folder
from datamodules.schema import SampleMeta, effective_bit_depth
from datamodules.shards.layouts import LAYOUTS, Group, Layout, Pair, discover, get_layout
from datamodules.shards.progress import progress_bar
from datamodules.shards.writer import ShardSetWriter, encode_sample, read_index

Members = dict[str, bytes]
Encoded = tuple[list[Members], str | None]  # the samples of one job, or the error that stopped it


@dataclasses.dataclass
class _PairJob:
    key: str
    paths: dict[str, Path]
    meta: SampleMeta
    resize: str | None
    level: int

    def __call__(self) -> Encoded:
        try:
            arrays = {role: images.read_image(path) for role, path in self.paths.items()}
            arrays = images.same_size(arrays, self.paths, self.resize)
            _check_fits(arrays, self.paths, self.meta.bit_depth)
            return [encode_sample(self.key, arrays, self.meta, self.level)], None
        except (ImageError, ValueError) as error:
            return [], str(error)


def _check_fits(arrays: dict[str, np.ndarray], paths: dict[str, Path], bit_depth: int | None) -> None:
    """An error naming the file if a 16-bit image holds a value above ``2**bit_depth - 1``."""
    for role, array in arrays.items():
        if bit_depth is not None and array.dtype == np.uint16 and int(array.max()) >= 1 << bit_depth:
            raise ImageError(
                f"{paths[role]}: value {int(array.max())} does not fit --bit-depth {bit_depth}; "
                "raise it or leave it out to detect the depth"
            )


def _at_most_8_bits(path: Path) -> bool:
    """True for a JPEG or a PNG whose header says 8 bits or fewer: no need to decode it to know."""
    if path.suffix.lower() in (".jpg", ".jpeg"):
        return True
    with open(path, "rb") as file:
        head = file.read(33)  # signature + IHDR chunk
    try:
        return images.parse_png(head, str(path), with_stream=False).depth <= 8
    except ImageError:
        return False


def _peak_16bit(paths: dict[str, Path]) -> int:
    """The largest value in the 16-bit images among ``paths``; -1 if none is 16-bit or readable."""
    peak = -1
    for path in paths.values():
        if _at_most_8_bits(path):
            continue
        try:
            image = images.read_image(path)
        except ImageError:
            continue  # the encoding pass reports it with every other broken file
        if image.dtype == np.uint16:
            peak = max(peak, int(image.max()))
    return peak


def detect_bit_depth(pairs: Sequence[Pair], workers: int | None = None) -> int | None:
    """The effective depth of the pairs' 16-bit images (10, 12 or 14), or None for 16 bits or 8-bit sources."""
    sets = [paths for _, paths in pairs]
    workers = max(1, min(workers or os.cpu_count() or 1, len(sets)))
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            peaks = pool.map(_peak_16bit, sets, chunksize=4)
    else:
        peaks = list(map(_peak_16bit, sets))
    peak = max(peaks, default=-1)
    if peak < 0:
        return None
    bits = effective_bit_depth(peak)
    return None if bits == 16 else bits


@dataclasses.dataclass
class _SynthesisJob:
    key: str
    photo: Path
    task: str
    source: str
    seed: int
    variants: int
    level: int

    def samples(self) -> Iterator[tuple[str, dict[str, np.ndarray], SampleMeta]]:
        """(key, {role: uint8 image}, metadata) of every sample made from the photograph."""
        photo = synthesis.to_unit_float(images.read_image(self.photo))
        # one generator per photograph and task: the same samples whatever the worker order, --limit or --holdout
        rng = np.random.default_rng([self.seed, zlib.crc32(f"{self.task}/{self.key}".encode())])
        for name, arrays, tags, how in synthesis.synthetic_samples(photo, self.task, rng, self.variants):
            meta = SampleMeta(task=self.task, degradations=tags, source=f"{self.source}/{how}", synthetic=True)
            yield f"{self.key}-{name}", {role: synthesis.to_uint8(array) for role, array in arrays.items()}, meta

    def __call__(self) -> Encoded:
        try:
            return [encode_sample(key, arrays, meta, self.level) for key, arrays, meta in self.samples()], None
        except (ImageError, ValueError) as error:
            return [], str(error)


def _run(job: Callable[[], Encoded]) -> Encoded:
    return job()


def parse_size(text: str | int) -> int:
    """``"500M"`` -> 524288000; accepts K, M, G, T suffixes (powers of 1024) or plain bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 1000000, 500M, 2G)")
    scale = 1024 ** " KMGT".index(match.group(2).upper() or " ")
    return int(float(match.group(1)) * scale)


@dataclasses.dataclass
class WriteOptions:
    """How shards are written: samples / bytes per shard, PNG deflate level, encoding processes."""

    maxcount: int = 1000
    maxsize: int = 1 << 30
    level: int = 0
    workers: int | None = None
    progress: bool = True


def _write_jobs(
    out_dir: str | Path, prefix: str, jobs: Sequence[Callable[[], Encoded]], options: WriteOptions
) -> dict[str, Any]:
    """Run the jobs (in worker processes) and write their samples as ``prefix`` shards, all or nothing."""
    errors: list[str] = []
    workers = max(1, min(options.workers or os.cpu_count() or 1, len(jobs)))
    writer = ShardSetWriter(out_dir, prefix, maxcount=options.maxcount, maxsize=options.maxsize)
    try:
        results: Iterable[Encoded]
        pool = None
        if workers > 1:
            pool = multiprocessing.get_context("fork").Pool(workers)
            results = pool.imap(_run, jobs, chunksize=2)
        else:
            results = map(_run, jobs)
        for samples, error in progress_bar(
            results, total=len(jobs), desc=f"building {prefix}", enabled=options.progress
        ):
            if error is not None:
                errors.append(error)
            elif not errors:
                for members in samples:
                    writer.write(members)
        if pool is not None:
            pool.close()
            pool.join()
    except BaseException:
        writer.close(write_index=False)
        raise
    if errors:
        writer.close(write_index=False)
        shown = "\n  ".join(errors[:30]) + (f"\n  ... and {len(errors) - 30} more" if len(errors) > 30 else "")
        raise ImageError(f"{len(errors)} of {len(jobs)} inputs could not be used; nothing was written:\n  {shown}")
    writer.close()
    return read_index(out_dir)


def _keys(prefix: str, pairs: Sequence[Pair]) -> list[str]:
    """Sample keys ``prefix-<pair id>``; two ids that map to one key are an error."""
    used: dict[str, str] = {}
    for pair_id, _ in pairs:
        key = f"{prefix}-{images.safe_key(pair_id)}"
        if key in used:
            raise ImageError(f"pairs {used[key]!r} and {pair_id!r} map to the same sample key {key!r}; rename one")
        used[key] = pair_id
    return list(used)


def _check_resize(resize: str | None, roles: Iterable[str]) -> None:
    roles = list(roles)
    if resize is not None and resize not in (*roles, "crop"):
        raise ValueError(f"--resize {resize}: choose one of {', '.join([*roles, 'crop'])}")


def build_pairs(
    out_dir: str | Path,
    pairs: Sequence[Pair],
    meta: SampleMeta,
    prefix: str,
    resize: str | None = None,
    options: WriteOptions | None = None,
    bit_depth: int | None = None,
) -> dict[str, Any]:
    """Write ``pairs`` (id, {role: file}) as ``prefix`` shards; each sample's source is ``meta.source/<id>``.

    ``bit_depth`` of the 16-bit images: detected when None (module docstring).
    """
    options = options or WriteOptions()
    _check_resize(resize, pairs[0][1] if pairs else ())
    meta = dataclasses.replace(meta, bit_depth=bit_depth or detect_bit_depth(pairs, options.workers))
    jobs = [
        _PairJob(
            key,
            paths,
            dataclasses.replace(meta, source=f"{meta.source}/{pair_id}" if meta.source else pair_id),
            resize,
            options.level,
        )
        for key, (pair_id, paths) in zip(_keys(prefix, pairs), pairs)
    ]
    return _write_jobs(out_dir, prefix, jobs, options)


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
    bit_depth: int | None = None,
) -> dict[str, Any]:
    """Pair ``a``/``b``/``gt`` folders by stem and write them as shards; returns the updated index.

    ``bit_depth`` (10, 12, 14, 16) of the 16-bit images; detected from the files when None.
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
    _check_resize(resize, folders)
    options = WriteOptions(maxcount, maxsize, level, workers, progress)
    return build_pairs(out_dir, images.pair_by_stem(folders), meta, prefix or task, resize, options, bit_depth)


def build_layout(
    out_dir: str | Path,
    layout: str | Layout,
    src: str | Path,
    resize: str | None = None,
    limit: int | None = None,
    prefix: str | None = None,
    prompt: str | None = None,
    holdout: int = 0,
    options: WriteOptions | None = None,
    bit_depth: int | None = None,
) -> dict[str, Any]:
    """Shards of a download in a published layout; one prefix per group (``PREFIX[-GROUP]``).

    ``prefix`` defaults to the layout's name; ``limit`` keeps the first pairs of each group, of
    which ``holdout`` leaves out the last ones (see :func:`write_holdout`). ``bit_depth`` as in
    :func:`build_pairs`, detected per group when None.
    """
    layout = get_layout(layout) if isinstance(layout, str) else layout
    _check_resize(resize, layout.roles)
    index: dict[str, Any] = {}
    for group in _held_out(discover(layout, src, limit), holdout)[0]:
        meta = SampleMeta(
            task=layout.task,
            degradations=list(layout.degradations),
            prompt=prompt,
            source=f"{layout.title}/{group.name}" if group.name else layout.title,
        )
        group_prefix = f"{prefix or layout.name}-{group.name}" if group.name else prefix or layout.name
        index = build_pairs(out_dir, group.pairs, meta, group_prefix, resize, options, bit_depth)
    return index


def _held_out(groups: list[Group], holdout: int) -> tuple[list[Group], list[Group]]:
    """(kept, held out): the last ``holdout`` pairs of every group are held out."""
    if holdout < 0:
        raise ValueError(f"--holdout must be 0 or more, got {holdout}")
    for group in groups:
        if holdout and holdout >= len(group.pairs):
            where = f"split {group.name}" if group.name else "the download"
            raise ValueError(f"--holdout {holdout} leaves no pair to train on in {where} ({len(group.pairs)} pairs)")
    kept = [Group(group.name, group.pairs[: len(group.pairs) - holdout]) for group in groups]
    held = [Group(group.name, group.pairs[len(group.pairs) - holdout :]) for group in groups]
    return kept, held


def _synthesis_layout(layout: str | Layout, task: str, variants: int) -> Layout:
    """``layout`` if synthesis of ``task`` can use its photographs, else an error saying why."""
    layout = get_layout(layout) if isinstance(layout, str) else layout
    if layout.task != "ivif":
        ivif = ", ".join(name for name, known in LAYOUTS.items() if known.task == "ivif")
        raise ValueError(
            f"synthesis uses the visible photographs of an infrared-visible layout ({ivif}); "
            f"{layout.name} is {layout.task}"
        )
    if task not in synthesis.SYNTHETIC_TASKS:
        raise ValueError(f"cannot synthesise {task!r}; choose from {', '.join(synthesis.SYNTHETIC_TASKS)}")
    if variants < 1:
        raise ValueError(f"--variants must be at least 1, got {variants}")
    return layout


def _synthesis_jobs(
    layout: Layout, groups: list[Group], task: str, seed: int, variants: int, prefix: str | None, level: int
) -> list[_SynthesisJob]:
    """One job per visible image (``b``) of the groups of an infrared-visible download."""
    task_prefix = f"{prefix or layout.name}-{task}"
    jobs = []
    for group in groups:
        group_prefix = f"{task_prefix}-{group.name}" if group.name else task_prefix
        source = f"{layout.title}/{group.name}" if group.name else layout.title
        for key, (pair_id, paths) in zip(_keys(group_prefix, group.pairs), group.pairs):
            jobs.append(_SynthesisJob(key, paths["b"], task, f"{source}/{pair_id}", seed, variants, level))
    return jobs


def build_synthetic(
    out_dir: str | Path,
    layout: str | Layout,
    src: str | Path,
    task: str,
    seed: int = 0,
    variants: int = 1,
    limit: int | None = None,
    prefix: str | None = None,
    holdout: int = 0,
    options: WriteOptions | None = None,
) -> dict[str, Any]:
    """Synthetic ``task`` samples from the visible images (``b``) of an infrared-visible download.

    Shard prefix ``PREFIX-TASK`` (default prefix: the layout's name), sample keys
    ``PREFIX-TASK-<pair id>-<variant>``; see :func:`datamodules.synthesis.synthetic_samples`.
    ``limit`` and ``holdout`` choose the photographs as in :func:`build_layout`.
    """
    layout = _synthesis_layout(layout, task, variants)
    options = options or WriteOptions()
    groups = _held_out(discover(layout, src, limit), holdout)[0]
    jobs = _synthesis_jobs(layout, groups, task, seed, variants, prefix, options.level)
    return _write_jobs(out_dir, f"{prefix or layout.name}-{task}", jobs, options)


def write_holdout(
    out_dir: str | Path,
    layout: str | Layout,
    src: str | Path,
    holdout: int,
    tasks: Sequence[str] = synthesis.SYNTHETIC_TASKS,
    seed: int = 0,
    variants: int = 1,
    limit: int | None = None,
) -> dict[str, Any]:
    """The synthetic samples of the held-out photographs as pair folders ``OUT/<TASK>/<key>/``.

    The held-out photographs are the last ``holdout`` pairs of each group, which :func:`build_layout`
    and :func:`build_synthetic` leave out with the same ``holdout``: validation and test on real
    photographs that no training shard holds (``data.val_pairs``). Each sample is the one the
    shards would hold for that photograph. Returns totals in the index's form.
    """
    layout = get_layout(layout) if isinstance(layout, str) else layout
    for task in tasks:
        _synthesis_layout(layout, task, variants)
    held = _held_out(discover(layout, src, limit), holdout)[1]
    tasks_done: collections.Counter = collections.Counter()
    degradations: collections.Counter = collections.Counter()
    for task in tasks:
        shutil.rmtree(Path(out_dir) / task.upper(), ignore_errors=True)  # no stale pairs from an earlier build
        for job in _synthesis_jobs(layout, held, task, seed, variants, None, level=0):
            for key, arrays, meta in job.samples():
                write_pair_folder(Path(out_dir) / task.upper() / key, arrays, meta)
                tasks_done[task] += 1
                degradations.update(meta.degradations)
    count = sum(tasks_done.values())
    return {
        "shards": 0,
        "samples": count,
        "bytes": 0,
        "synthetic": count,
        "tasks": dict(tasks_done),
        "degradations": dict(sorted(degradations.items())),
    }


def build_all(
    src: str | Path,
    out: str | Path,
    synthesize: Sequence[str] = synthesis.SYNTHETIC_TASKS,
    seed: int = 0,
    variants: int = 1,
    limit: int | None = None,
    holdout: int = 0,
    options: WriteOptions | None = None,
) -> dict[str, dict[str, Any]]:
    """Every download in ``src`` whose folder is named after a layout (``roadscene/``, ``harvard/``,
    ``MSRS/``, ...) into ``out/<layout>/``, and for each infrared-visible one the synthetic sets
    ``out/<layout>-<task>/``; with ``holdout``, the last pairs of each infrared-visible split stay out
    of all of them and their synthetic samples go to ``out/<layout>-holdout/`` (:func:`write_holdout`).
    One shard folder per source, so a config weights each on its own. Returns the totals per output
    folder; subfolders that name no layout are reported, not built.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise ImageError(f"{src}: not a folder")
    subfolders = sorted(child for child in src.iterdir() if child.is_dir())
    found = [(child, LAYOUTS[child.name.lower()]) for child in subfolders if child.name.lower() in LAYOUTS]
    if not found:
        raise ImageError(
            f"{src}: no subfolder is named after a known layout ({', '.join(LAYOUTS)}); "
            f"found {', '.join(child.name for child in subfolders) or 'no subfolders'}"
        )
    skipped = [child.name for child in subfolders if child.name.lower() not in LAYOUTS]
    if skipped:
        print(f"not a known layout, skipped: {', '.join(skipped)}", file=sys.stderr)
    totals: dict[str, dict[str, Any]] = {}
    for folder, layout in found:
        photographs = layout.task == "ivif"
        target = out / layout.name
        totals[str(target)] = build_layout(
            target, layout, folder, limit=limit, holdout=holdout if photographs else 0, options=options
        )["totals"]
        if not photographs:
            continue
        for task in synthesize:
            target = out / f"{layout.name}-{task}"
            index = build_synthetic(
                target, layout, folder, task, seed, variants, limit, holdout=holdout, options=options
            )
            totals[str(target)] = index["totals"]
        if holdout:
            target = out / f"{layout.name}-holdout"
            totals[str(target)] = write_holdout(target, layout, folder, holdout, synthesize, seed, variants, limit)
    return totals
