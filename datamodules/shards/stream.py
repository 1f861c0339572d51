"""Where a stream's shards are and what it read: URL expansion, per-shard counts, :class:`StreamStats`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import braceexpand

from datamodules.shards.writer import INDEX_NAME, read_index


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
            except FileNotFoundError:  # no index; one that exists but cannot be read is an error
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

    def add(self, other: StreamStats) -> None:
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
    def from_dict(cls, record: Mapping[str, Any]) -> StreamStats:
        return cls(record["samples"], record["skipped_samples"], record["broken_shards"], list(record["messages"]))

    def summary(self) -> str:
        text = (
            f"{self.samples} samples read, {self.skipped_samples} corrupt samples skipped, "
            f"{self.broken_shards} broken shards"
        )
        if self.messages:
            text += "; first problems:\n  " + "\n  ".join(self.messages)
        return text
