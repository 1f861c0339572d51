"""A callback that records what a fit trained on, for tests that compare two runs batch by batch.

Add it to a ``python -m recipes.<family> fit`` through an extra ``--config`` file::

    trainer:
      callbacks:
        - class_path: batch_recorder.RecordTrainingBatches
          init_args: {path: batches.jsonl}

(with ``tests`` on ``PYTHONPATH``). Each training batch appends one JSON line: the global step, the
epoch, the batch index, the sample keys and a digest of the batch's pixels.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning import Callback, LightningModule, Trainer


def pixel_digest(batch: dict[str, Any]) -> str:
    """A digest of every image tensor of a batch (a, b, gt), exact to the bit."""
    digest = hashlib.sha1()
    for role in ("a", "b", "gt"):
        if isinstance(batch.get(role), torch.Tensor):
            digest.update(batch[role].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class RecordTrainingBatches(Callback):
    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        record = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "batch_idx": batch_idx,
            "keys": list(batch["key"]),
            "pixels": pixel_digest(batch),
        }
        with self.path.open("a") as stream:
            stream.write(json.dumps(record) + "\n")


def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
