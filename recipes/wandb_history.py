"""A resumed run logs every step once: what the W&B run already holds, and a logger that skips it.

A run killed between two checkpoints (a node failure, a process killed; no signal to save on) has
logged the steps after its last checkpoint; the resumed run trains those steps again and would log
them a second time into the same W&B run (same run id). :class:`StepOnceWandbLogger` drops, after a
resume, each metric at every step up to the highest step at which the run's history already holds
that metric, so each (metric, step) appears once: for the steps trained twice, the values are the
ones logged before the kill, and what the kill cut off (the last step's loss, say, when its learning
rate row was already written) is logged by the resumed run. (W&B's rewind, ``resume_from``, would
keep the re-trained values instead, but it needs the W&B server; runs here are offline by default.)

What the run holds is read from its own files: every ``<save_dir>/wandb/*run-*-<id>/run-<id>.wandb``
(offline and online runs write one per start). Such a file is a LevelDB-style log: a 7-byte header
(``:W&B``, magic, version), then 32 KiB blocks of records, each a 7-byte header (CRC32,
little-endian length, type: full / first / middle / last piece) around a serialized
``wandb_internal_pb2.Record``. A process killed while writing leaves a cut-off last record, which is
ignored.
"""

from __future__ import annotations

import json
import logging
import struct
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError
from lightning_fabric.utilities.logger import _add_prefix
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only
from wandb.proto import wandb_internal_pb2

log = logging.getLogger(__name__)

STEP_KEY = "trainer/global_step"
"""The key under which Lightning's WandbLogger logs the trainer step with every row."""
ROW_KEYS = frozenset({STEP_KEY, "epoch"})
"""Keys Lightning adds to every row (one step has several rows: losses, learning rate, validation)."""

_FILE_HEADER = 7
_BLOCK = 32768
_RECORD_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _payloads(data: bytes) -> Iterator[bytes]:
    if data[:4] != b":W&B":
        raise ValueError("not a W&B run file (missing the :W&B header)")
    position, pending = _FILE_HEADER, b""
    while position + _RECORD_HEADER <= len(data):
        left_in_block = _BLOCK - position % _BLOCK
        if left_in_block < _RECORD_HEADER:  # trailer padding at the end of a block
            position += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + _RECORD_HEADER])
        end = position + _RECORD_HEADER + length
        if end > len(data):  # cut off by a killed writer
            break
        payload = data[position + _RECORD_HEADER : end]
        position = end
        if kind == _FULL:
            yield payload
        elif kind == _FIRST:
            pending = payload
        elif kind == _MIDDLE:
            pending += payload
        elif kind == _LAST:
            yield pending + payload
            pending = b""
        else:  # zero padding after the last record
            break


def history(run_file: Path) -> list[dict[str, Any]]:
    """Every history row (``wandb.log`` call) in one W&B run file, as {key: value}, in the order logged."""
    rows = []
    for payload in _payloads(Path(run_file).read_bytes()):
        record = wandb_internal_pb2.Record()
        try:
            record.ParseFromString(payload)
        except DecodeError:  # a record a killed writer left half written
            break
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
    return rows


def run_files(save_dir: Path, run_id: str) -> list[Path]:
    """The files of every start of W&B run ``run_id`` under ``save_dir/wandb``, oldest first."""
    return sorted(Path(save_dir).glob(f"wandb/*run-*-{run_id}/run-{run_id}.wandb"))


def _metrics(row: Mapping[str, Any]) -> list[str]:
    """A row's metric keys: not W&B's own (``_step``, ``_runtime``, ...) nor :data:`ROW_KEYS`."""
    return [key for key in row if key not in ROW_KEYS and not key.startswith("_")]


def highest_logged_steps(save_dir: Path, run_id: str) -> dict[str, int]:
    """Per metric, the highest trainer step at which the run's history holds it."""
    highest: dict[str, int] = {}
    for path in run_files(save_dir, run_id):
        for row in history(path):
            if STEP_KEY in row:
                for key in _metrics(row):
                    highest[key] = max(highest.get(key, row[STEP_KEY]), row[STEP_KEY])
    return highest


def repeated_steps(rows: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """The (metric, step) pairs that more than one history row holds, sorted.

    Counted over the metrics (keys other than W&B's own ``_step``/``_runtime``/``_timestamp`` and
    :data:`ROW_KEYS`) of the rows that carry a step; in a history that logs every step once it is empty.
    """
    logged = Counter((key, row[STEP_KEY]) for row in rows if STEP_KEY in row for key in _metrics(row))
    return sorted(pair for pair, count in logged.items() if count > 1)


class StepOnceWandbLogger(WandbLogger):
    """Lightning's WandbLogger that, on a resume, skips what the W&B run already holds.

    Args:
        skip_logged_steps: read the run's earlier history (its files under ``save_dir``) at the first
            log call, then drop each metric at the steps up to the highest one the history holds it
            at (a row left with no metric is not logged); the CLI sets it when ``fit`` resumes from a
            checkpoint. Off: everything is logged, as with WandbLogger.
        **kwargs: WandbLogger's arguments (``id`` and ``save_dir`` name the run whose files are read).
    """

    def __init__(self, *, skip_logged_steps: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.skip_logged_steps = skip_logged_steps
        self._logged_through: dict[str, int] | None = None

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.skip_logged_steps and self._logged_through is None:
            # before this start logs anything, so only earlier starts' rows count
            self._logged_through = highest_logged_steps(Path(self.save_dir), self._id)
            if self._logged_through:
                log.info(
                    "W&B run %s already holds steps up to %d: not logging them again",
                    self._id,
                    max(self._logged_through.values()),
                )
        if step is not None and self._logged_through:
            named = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)  # as the history names them
            metrics = {
                key: value
                for (key, value), name in zip(metrics.items(), named)
                if name in ROW_KEYS or step > self._logged_through.get(name, -1)
            }
            if not _metrics(metrics):
                return
        super().log_metrics(metrics, step)
