"""Reading shards: a fast sequential tar reader and the sample contract check.

A truncated shard or a corrupt member is skipped and counted in :class:`~datamodules.shards.stream.StreamStats`,
never fatal, so one bad file cannot stop (or hang) a multi-node job.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from datamodules.schema import IMAGE_MEMBERS, SampleMeta
from datamodules.shards.stream import StreamStats


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
