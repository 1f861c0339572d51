"""Inspecting and verifying shard sets: per-task totals from the index, and a full decode of every member."""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from datamodules import images
from datamodules.images import ImageError
from datamodules.shards.progress import progress_bar
from datamodules.shards.stream import StreamStats, expand_urls, shard_counts
from datamodules.shards.tar import iter_shard, parse_sample
from datamodules.shards.writer import read_index


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
        severities = ", ".join(
            f"{tag.split(':')[1]}: {n}" for tag, n in totals["degradations"].items() if tag.split(":")[0] == kind
        )
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
    for url in progress_bar(urls, total=len(urls), desc="verifying", enabled=progress):
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
