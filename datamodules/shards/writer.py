"""Writing shards: encode a sample's members, roll tar files by count and size, keep ``index.json``.

``index.json`` records each shard's sample count and task/degradation totals; several builds into one
folder (different prefixes) share it, and readers use it for exact per-epoch counts.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import re
import shutil
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datamodules import images
from datamodules.images import ImageError
from datamodules.schema import IMAGE_MEMBERS, SampleMeta, parse_degradation

INDEX_NAME = "index.json"
INDEX_FORMAT = "unifuse-shards/1"
SHARD_PATTERN = "{prefix}-{number:06d}.tar"
_TAR_MTIME = 1_700_000_000  # fixed, so that the same input builds byte-identical shards


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

    Shards are written into a hidden staging folder inside ``OUT`` and swapped in by
    :meth:`close` (``write_index=True``): the new shards replace the old ones by rename, leftover
    old shards of the prefix go, then the index is rewritten. A build that fails (or
    ``close(write_index=False)``) discards the staging folder, so the previous shards of the
    prefix and their index entries survive untouched.
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
        # same file system as OUT, so the swap is a rename; hidden, so no shard pattern matches it
        self.staging = Path(tempfile.mkdtemp(prefix=f".{prefix}-staging-", dir=self.out_dir))

    def __enter__(self) -> ShardSetWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.close(write_index=kind is None)

    def _open_next(self) -> None:
        self._close_tar()
        entry = _ShardEntry(SHARD_PATTERN.format(prefix=self.prefix, number=len(self.entries)))
        self.entries.append(entry)
        self._tar = tarfile.open(self.staging / entry.name, "w", format=tarfile.GNU_FORMAT)

    def _close_tar(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self.entries[-1].bytes = (self.staging / self.entries[-1].name).stat().st_size
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
        """Swap the new shards in and update the index, or (``write_index=False``) discard them."""
        self._close_tar()
        if not self.staging.is_dir():  # closed already
            return
        if write_index:
            names = {entry.name for entry in self.entries}
            for name in sorted(names):
                (self.staging / name).replace(self.out_dir / name)
            for old in self.out_dir.glob(f"{self.prefix}-[0-9][0-9][0-9][0-9][0-9][0-9].tar"):
                if old.name not in names:
                    old.unlink()
            update_index(self.out_dir, self.prefix, [entry.to_json() for entry in self.entries])
        shutil.rmtree(self.staging)

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
        raise FileNotFoundError(
            f"{path}: no shard index; build the shards with `python -m datamodules.shards build`"
        ) from None
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path}: not a valid index ({error}); rebuild the shards (`python -m datamodules.shards build`) or "
            f"restore the file"
        ) from None
    if index.get("format") != INDEX_FORMAT:
        raise ValueError(f"{path}: unknown index format {index.get('format')!r} (expected {INDEX_FORMAT})")
    return index
