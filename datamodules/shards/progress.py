"""The progress bar of the long shard commands (build, verify), on stderr so that stdout stays parseable."""

from __future__ import annotations

import sys
from collections.abc import Iterable


def progress_bar(iterable: Iterable, total: int | None, desc: str, enabled: bool = True):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="sample", dynamic_ncols=True, file=sys.stderr)
