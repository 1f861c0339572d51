"""Build, inspect and verify WebDataset shards of fusion and restoration samples.

    python -m datamodules.shards build OUT --a DIR --b DIR [--gt DIR] --task ivif [options]
    python -m datamodules.shards build OUT --a DEGRADED --gt CLEAN --task restore --degradation noise:2
    python -m datamodules.shards inspect OUT            # per-task / per-degradation totals
    python -m datamodules.shards verify OUT             # decode every member, list what is broken

``build`` pairs the images of the folders by file stem (infrared/visible, near/far focus,
under/over exposure, MRI/other, NIR/visible, degraded/clean), re-encodes every image losslessly as
a window-decodable PNG (:func:`datamodules.images.encode_png`; grey, RGB, 8- and 16-bit kept
exactly), tags each sample with the task and degradation flags, and writes ``PREFIX-000000.tar``,
... of at most ``--maxcount`` samples / ``--maxsize`` bytes. ``OUT/index.json`` records each shard's
sample count and task/degradation totals; several builds into one folder (different ``--prefix``)
share it. Bad input stops the build with one error that names every offending file: stems present
on one side only, pairs of different sizes (unless ``--resize`` says how to align them), files that
do not decode.

The reading side (:func:`iter_shard`, :func:`parse_sample`, :class:`StreamStats`) is what the
streaming mixture uses: a truncated shard or a corrupt member is skipped and counted, never fatal.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import io
import json
import multiprocessing
import os
import re
import sys
import tarfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import braceexpand
import numpy as np

from datamodules import images
from datamodules.images import ImageError
from datamodules.schema import IMAGE_MEMBERS, SampleMeta, parse_degradation

INDEX_NAME = "index.json"
INDEX_FORMAT = "unifuse-shards/1"
SHARD_PATTERN = "{prefix}-{number:06d}.tar"
_TAR_MTIME = 1_700_000_000  # fixed, so that the same input builds byte-identical shards


# --------------------------------------------------------------------------------------------
# Writing


def normalise_tag(tag: str) -> str:
    """``"noise"`` -> ``"noise:1"``; validates the kind and severity."""
    kind, severity = parse_degradation(tag)
    return f"{kind}:{severity}"


def encode_sample(
    key: str, arrays: Mapping[str, np.ndarray | None], meta: SampleMeta, level: int = 0
) -> dict[str, bytes]:
    """Tar members of one sample: ``KEY.a.png`` [``KEY.b.png``] [``KEY.gt.png``] ``KEY.json``."""
    if arrays.get("a") is None:
        raise ValueError(f"sample {key}: needs an 'a' image")
    shapes = {role: array.shape[:2] for role, array in arrays.items() if array is not None}
    if len(set(shapes.values())) > 1:
        raise ImageError(f"sample {key}: images differ in size: {shapes}")
    members = {}
    for role in IMAGE_MEMBERS:
        array = arrays.get(role)
        if array is not None:
            members[f"{key}.{role}.png"] = images.encode_png(array, level=level)
    record = meta.to_json()
    record["degradations"] = [normalise_tag(tag) for tag in meta.degradations]
    members[f"{key}.json"] = json.dumps(record, sort_keys=True).encode()
    return members


@dataclasses.dataclass
class _ShardEntry:
    name: str
    samples: int = 0
    bytes: int = 0
    tasks: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    degradations: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    synthetic: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "samples": self.samples,
            "bytes": self.bytes,
            "tasks": dict(sorted(self.tasks.items())),
            "degradations": dict(sorted(self.degradations.items())),
            "synthetic": self.synthetic,
        }


class ShardSetWriter:
    """Writes samples into ``OUT/PREFIX-NNNNNN.tar`` shards and keeps ``OUT/index.json`` up to date.

    Use as a context manager; :meth:`write` takes the members from :func:`encode_sample`.
    Rebuilding a prefix replaces its shards and index entries; other prefixes are kept.
    """

    def __init__(self, out_dir: str | Path, prefix: str, maxcount: int = 1000, maxsize: int = 1 << 30):
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", prefix):
            raise ValueError(f"shard prefix {prefix!r}: use letters, digits, '_', '-', '.'")
        if maxcount < 1 or maxsize < 1:
            raise ValueError("--maxcount and --maxsize must be positive")
        self.out_dir = Path(out_dir)
        self.prefix = prefix
        self.maxcount = maxcount
        self.maxsize = maxsize
        self.entries: list[_ShardEntry] = []
        self._tar: tarfile.TarFile | None = None
        self._keys: set[str] = set()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for old in self.out_dir.glob(f"{prefix}-[0-9][0-9][0-9][0-9][0-9][0-9].tar"):
            old.unlink()

    def __enter__(self) -> "ShardSetWriter":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.close(write_index=kind is None)

    def _open_next(self) -> None:
        self._close_tar()
        entry = _ShardEntry(SHARD_PATTERN.format(prefix=self.prefix, number=len(self.entries)))
        self.entries.append(entry)
        self._tar = tarfile.open(self.out_dir / entry.name, "w", format=tarfile.GNU_FORMAT)

    def _close_tar(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self.entries[-1].bytes = (self.out_dir / self.entries[-1].name).stat().st_size
            self._tar = None

    def write(self, members: Mapping[str, bytes]) -> None:
        key = next(iter(members)).split(".", 1)[0]
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r} in shard set {self.prefix}")
        self._keys.add(key)
        size = sum(512 + -(-len(data) // 512) * 512 for data in members.values())
        entry = self.entries[-1] if self.entries else None
        if entry is None or entry.samples >= self.maxcount or (entry.samples and entry.bytes + size > self.maxsize):
            self._open_next()
            entry = self.entries[-1]
        assert self._tar is not None
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = _TAR_MTIME
            info.mode = 0o644
            info.uname = info.gname = "unifuse"
            self._tar.addfile(info, io.BytesIO(data))
        record = json.loads(members[f"{key}.json"])
        entry.samples += 1
        entry.bytes += size
        entry.tasks[record["task"]] += 1
        entry.degradations.update(record.get("degradations", []))
        entry.synthetic += int(bool(record.get("synthetic")))

    def close(self, write_index: bool = True) -> None:
        self._close_tar()
        if write_index:
            update_index(self.out_dir, self.prefix, [entry.to_json() for entry in self.entries])

    @property
    def samples(self) -> int:
        return sum(entry.samples for entry in self.entries)


def _totals(shards: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    tasks: collections.Counter = collections.Counter()
    degradations: collections.Counter = collections.Counter()
    for shard in shards:
        tasks.update(shard.get("tasks", {}))
        degradations.update(shard.get("degradations", {}))
    return {
        "shards": len(shards),
        "samples": sum(shard["samples"] for shard in shards),
        "bytes": sum(shard.get("bytes", 0) for shard in shards),
        "synthetic": sum(shard.get("synthetic", 0) for shard in shards),
        "tasks": dict(sorted(tasks.items())),
        "degradations": dict(sorted(degradations.items())),
    }


def update_index(out_dir: Path, prefix: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Replace ``prefix``'s shards in ``out_dir/index.json`` with ``entries`` and recompute the totals."""
    path = Path(out_dir) / INDEX_NAME
    shards = read_index(out_dir)["shards"] if path.exists() else []
    shards = [shard for shard in shards if not re.fullmatch(re.escape(prefix) + r"-\d{6}\.tar", shard["name"])]
    shards = sorted(shards + entries, key=lambda shard: shard["name"])
    index = {"format": INDEX_FORMAT, "shards": shards, "totals": _totals(shards)}
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(index, indent=1) + "\n")
    temporary.replace(path)
    return index


def read_index(folder: str | Path) -> dict[str, Any]:
    path = Path(folder)
    if path.is_dir():
        path = path / INDEX_NAME
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no shard index; build the shards with `python -m datamodules.shards build`") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not a valid index ({error})") from None
    if index.get("format") != INDEX_FORMAT:
        raise ValueError(f"{path}: unknown index format {index.get('format')!r} (expected {INDEX_FORMAT})")
    return index


# --------------------------------------------------------------------------------------------
# Building from folders


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
        meta = dataclasses.replace(job.meta, source=f"{job.meta.source}/{job.paths['a'].stem}" if job.meta.source else job.paths["a"].stem)
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
        for _, members, error in _progress(results, total=len(jobs), desc=f"building {prefix}", enabled=progress):
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


def _progress(iterable: Iterable, total: int | None, desc: str, enabled: bool = True):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="sample", dynamic_ncols=True, file=sys.stderr)


# --------------------------------------------------------------------------------------------
# Reading


def expand_urls(spec: str | Path | Sequence[str | Path]) -> list[str]:
    """Shard URLs from a brace pattern, a list of them, a shard folder or its ``index.json``.

    ``"data/ivif-{000000..000009}.tar"``, ``["a.tar", "b.tar"]``, ``"data/shards"`` (every shard in
    the folder's index), ``"data/shards/index.json"``; ``pipe:`` and other URLs are passed through.
    """
    if isinstance(spec, (list, tuple)):
        return [url for item in spec for url in expand_urls(item)]
    text = str(spec)
    path = Path(text)
    if "://" not in text and not text.startswith("pipe:") and "{" not in text:
        if path.is_dir() or path.name == INDEX_NAME:
            folder = path if path.is_dir() else path.parent
            return [str(folder / shard["name"]) for shard in read_index(folder)["shards"]]
    urls = list(braceexpand.braceexpand(text))
    if not urls:
        raise ValueError(f"no shard URLs in {text!r}")
    return urls


def shard_counts(urls: Sequence[str]) -> dict[str, int] | None:
    """Sample count of each local shard from the index files beside them; None if any is unknown."""
    counts: dict[str, int] = {}
    indexes: dict[Path, dict[str, int]] = {}
    for url in urls:
        path = Path(url)
        if "://" in url or url.startswith("pipe:"):
            return None
        folder = path.parent
        if folder not in indexes:
            try:
                indexes[folder] = {shard["name"]: shard["samples"] for shard in read_index(folder)["shards"]}
            except (FileNotFoundError, ValueError):
                return None
        if path.name not in indexes[folder]:
            return None
        counts[url] = indexes[folder][path.name]
    return counts


@dataclasses.dataclass
class StreamStats:
    """What a stream read and what it skipped. Counters add up across workers and ranks."""

    samples: int = 0
    skipped_samples: int = 0
    broken_shards: int = 0
    messages: list[str] = dataclasses.field(default_factory=list)
    max_messages: int = 20

    def skip(self, message: str) -> None:
        self.skipped_samples += 1
        self.note(message)

    def broken(self, message: str) -> None:
        self.broken_shards += 1
        self.note(message)

    def note(self, message: str) -> None:
        if len(self.messages) < self.max_messages:
            self.messages.append(message)

    def add(self, other: "StreamStats") -> None:
        self.samples += other.samples
        self.skipped_samples += other.skipped_samples
        self.broken_shards += other.broken_shards
        for message in other.messages:
            self.note(message)

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "skipped_samples": self.skipped_samples,
            "broken_shards": self.broken_shards,
            "messages": list(self.messages),
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "StreamStats":
        return cls(record["samples"], record["skipped_samples"], record["broken_shards"], list(record["messages"]))

    def summary(self) -> str:
        text = f"{self.samples} samples read, {self.skipped_samples} corrupt samples skipped, {self.broken_shards} broken shards"
        if self.messages:
            text += "; first problems:\n  " + "\n  ".join(self.messages)
        return text


def _open_url(url: str):
    if "://" in url or url.startswith("pipe:"):
        from webdataset import gopen

        return gopen.gopen(url, "rb")
    return open(url, "rb", buffering=1 << 20)


def _split_member(name: str) -> tuple[str, str]:
    """WebDataset naming: the key runs to the first dot of the file name, the suffix is the rest."""
    folder, _, base = name.rpartition("/")
    stem, _, suffix = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), suffix


class ShardError(Exception):
    """A shard that is not a readable tar archive (truncated, corrupt header)."""


def _read_exactly(stream, size: int, what: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise ShardError(f"truncated: {what} ends after {len(data)} of {size} bytes")
    return data


def iter_tar(stream) -> Iterator[tuple[str, bytes]]:
    """(name, data) of the regular files of a tar stream, read sequentially with large reads.

    Handles ustar, GNU long names and pax path records. Much faster than :mod:`tarfile`'s stream
    mode, and it reads pipes as well as files. Raises :class:`ShardError` on truncation or a
    corrupt header.
    """
    long_name: str | None = None
    while True:
        header = stream.read(512)
        if not header:
            raise ShardError("truncated: the archive ends without its end-of-archive marker")
        if header == bytes(512):
            return
        if len(header) < 512:
            raise ShardError(f"truncated: a header ends after {len(header)} bytes")
        checksum_field = header[148:156]
        try:
            stored = int(checksum_field.replace(b"\0", b" ").strip() or b"0", 8)
            size = int(header[124:136].replace(b"\0", b" ").strip() or b"0", 8)
        except ValueError:
            raise ShardError("corrupt header (bad number fields)") from None
        computed = sum(header[:148]) + 8 * 32 + sum(header[156:])
        if stored != computed:
            raise ShardError("corrupt header (checksum mismatch)")
        kind = header[156:157]
        name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        if header[257:262] == b"ustar" and header[345:346] != b"\0":
            name = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace") + "/" + name
        data = _read_exactly(stream, size, name or "a member")
        padding = -size % 512
        if padding:
            _read_exactly(stream, padding, f"{name} padding")
        if kind == b"L":  # GNU long name for the next member
            long_name = data.split(b"\0", 1)[0].decode("utf-8", "replace")
            continue
        if kind in (b"x", b"g"):  # pax extended header
            for record in data.decode("utf-8", "replace").split("\n"):
                _, _, field = record.partition(" ")
                if field.startswith("path=") and kind == b"x":
                    long_name = field[5:]
            continue
        if long_name is not None:
            name, long_name = long_name, None
        if kind in (b"0", b"\0", b"7"):
            yield name, data


def iter_shard(url: str, stats: StreamStats) -> Iterator[dict[str, Any]]:
    """Raw samples of one shard: ``{"__key__", "__url__", "<suffix>": bytes, ...}``.

    A shard that cannot be opened or read to its end (truncated, not a tar) counts as broken;
    the sample it was reading when it broke counts as skipped. Nothing is raised.
    """
    try:
        stream = _open_url(url)
    except OSError as error:
        stats.broken(f"{url}: cannot open ({error})")
        return
    current: dict[str, Any] | None = None
    try:
        with stream:
            for name, data in iter_tar(stream):
                key, suffix = _split_member(name)
                if not suffix or key.rsplit("/", 1)[-1].startswith("__"):
                    continue
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": url}
                suffix = suffix.lower()
                if suffix in current:
                    stats.skip(f"{url}#{key}: duplicate member {suffix}")
                    current = None
                    continue
                current[suffix] = data
    except (ShardError, OSError) as error:
        stats.broken(f"{url}: unreadable after {current['__key__'] if current else 'its start'} ({error})")
        if current is not None:
            stats.skip(f"{url}#{current['__key__']}: cut off by the broken shard")
        return
    if current is not None:
        yield current


def parse_sample(raw: Mapping[str, Any]) -> tuple[SampleMeta, dict[str, bytes]]:
    """Check a raw sample against the contract; returns its metadata and image members.

    Raises :class:`ValueError` naming the sample for a missing or unreadable member.
    """
    where = f"{raw.get('__url__', '?')}#{raw.get('__key__', '?')}"
    if "json" not in raw:
        raise ValueError(f"{where}: no json member")
    try:
        meta = SampleMeta.from_json(json.loads(raw["json"]))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{where}: bad json member ({error})") from None
    members = {role: raw[f"{role}.png"] for role in IMAGE_MEMBERS if f"{role}.png" in raw}
    if "a" not in members:
        raise ValueError(f"{where}: no a.png member")
    if meta.task != "restore" and "b" not in members:
        raise ValueError(f"{where}: task {meta.task} needs a b.png member")
    if meta.task == "restore" and "gt" not in members:
        raise ValueError(f"{where}: a restore sample needs a gt.png member")
    return meta, members


# --------------------------------------------------------------------------------------------
# inspect / verify


def format_totals(totals: Mapping[str, Any]) -> str:
    lines = [
        f"shards: {totals['shards']}   samples: {totals['samples']}   size: {totals['bytes'] / 2**20:.1f} MiB"
        + (f"   synthetic: {totals['synthetic']}" if totals.get("synthetic") else "")
    ]
    lines.append("per task:")
    for task, count in totals["tasks"].items():
        lines.append(f"  {task:<10} {count:>8}")
    by_kind: collections.Counter = collections.Counter()
    for tag, count in totals["degradations"].items():
        by_kind[tag.split(":")[0]] += count
    lines.append("per degradation (kind: total = by severity):" if by_kind else "per degradation: none")
    for kind, count in sorted(by_kind.items()):
        severities = ", ".join(f"{tag.split(':')[1]}: {n}" for tag, n in totals["degradations"].items() if tag.split(":")[0] == kind)
        lines.append(f"  {kind:<10} {count:>8}  ({severities})")
    return "\n".join(lines)


def inspect(path: str | Path) -> dict[str, Any]:
    """Totals of a shard set from its index."""
    return read_index(path)["totals"]


def verify(spec: str | Path | Sequence[str], progress: bool = True) -> tuple[int, list[str]]:
    """Decode every member of every shard; returns (good samples, problems)."""
    urls = expand_urls(spec)
    counts = shard_counts(urls)
    problems: list[str] = []
    good = 0
    for url in _progress(urls, total=len(urls), desc="verifying", enabled=progress):
        stats = StreamStats(max_messages=10**9)
        seen = 0
        for raw in iter_shard(url, stats):
            seen += 1
            try:
                meta, members = parse_sample(raw)
                shapes = {}
                for role, data in members.items():
                    shapes[role] = images.decode_image(data, what=f"{url}#{raw['__key__']}.{role}.png").shape[:2]
                if len(set(shapes.values())) > 1:
                    raise ValueError(f"{url}#{raw['__key__']}: members differ in size {shapes}")
                good += 1
            except (ValueError, ImageError) as error:
                problems.append(str(error))
        problems.extend(stats.messages)
        if counts is not None and not stats.broken_shards and counts[url] != seen:
            problems.append(f"{url}: index says {counts[url]} samples, the shard holds {seen}")
    return good, problems


# --------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datamodules.shards", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="pair folders by file stem and write shards")
    build.add_argument("out", help="output folder (shards and index.json)")
    build.add_argument("--a", required=True, help="first source: infrared, near focus, under-exposed, MRI, NIR, or degraded")
    build.add_argument("--b", help="second source: visible, far focus, over-exposed, CT/PET/SPECT, visible")
    build.add_argument("--gt", help="optional target folder (all-in-focus, well-exposed, clean)")
    build.add_argument("--task", required=True, choices=["ivif", "mfif", "meif", "med", "nir", "restore"])
    build.add_argument("--degradation", action="append", default=[], metavar="KIND[:SEVERITY]", help="tag every sample (repeatable), e.g. noise:2")
    build.add_argument("--prompt", help="text prompt stored with every sample")
    build.add_argument("--source", default="", help="dataset name recorded in each sample (e.g. MSRS)")
    build.add_argument("--synthetic", action="store_true", help="mark the samples as synthetic")
    build.add_argument("--prefix", help="shard file prefix (default: the task)")
    build.add_argument("--maxcount", type=int, default=1000, help="samples per shard at most (default 1000)")
    build.add_argument("--maxsize", type=parse_size, default=parse_size("1G"), help="bytes per shard at most, e.g. 500M (default 1G)")
    build.add_argument("--resize", help="align pairs of different sizes: a or b (resize the others to it), or crop (centre overlap)")
    build.add_argument(
        "--level", type=int, default=0, choices=range(10), metavar="0-9",
        help="PNG deflate level: 0 (default) stores pixels uncompressed, fastest to decode; 1-9 compress "
        "(about half the size on photographs, about twice the decoding work)",
    )
    build.add_argument("--workers", type=int, default=None, help="encoding processes (default: all cores)")
    build.add_argument("--quiet", action="store_true", help="no progress bar")

    inspect_parser = commands.add_parser("inspect", help="print the per-task / per-degradation totals of a shard set")
    inspect_parser.add_argument("path", help="shard folder or its index.json")
    inspect_parser.add_argument("--json", action="store_true", help="print the totals as JSON")

    verify_parser = commands.add_parser("verify", help="decode every member; list what is broken (exit 1 if anything is)")
    verify_parser.add_argument("urls", nargs="+", help="shard folder, index.json, shard files or brace patterns")
    verify_parser.add_argument("--quiet", action="store_true", help="no progress bar")

    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            index = build_from_folders(
                args.out, a=args.a, b=args.b, gt=args.gt, task=args.task, degradations=args.degradation,
                prompt=args.prompt, source=args.source, synthetic=args.synthetic, prefix=args.prefix,
                maxcount=args.maxcount, maxsize=args.maxsize, resize=args.resize, level=args.level,
                workers=args.workers, progress=not args.quiet,
            )
            print(f"wrote {args.out}/{INDEX_NAME}")
            print(format_totals(index["totals"]))
        elif args.command == "inspect":
            totals = inspect(args.path)
            print(json.dumps(totals, indent=1) if args.json else format_totals(totals))
        else:
            good, problems = verify(args.urls if len(args.urls) > 1 else args.urls[0], progress=not args.quiet)
            print(f"{good} samples decode cleanly; {len(problems)} problem(s)")
            for problem in problems:
                print(f"  BROKEN {problem}")
            return 1 if problems else 0
    except (ImageError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
