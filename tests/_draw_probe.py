"""Test-only callback: what LURE's per-batch generators hold after each training batch, per rank.

Appends ``{"rank", "global_step", "seed", "prompt_state", "pseudo_state"}`` lines to
``<output_dir>/draws<global rank>.jsonl``: the seed both generators got for the batch, and digests of
their states after the batch's draws (which differ when the draws were made from different seeds).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback


class DrawProbe(Callback):
    """Records digests of LUREModule's draw generators after every training batch.

    Args:
        output_dir: folder for the per-rank files (created).
    """

    def __init__(self, output_dir: str) -> None:
        super().__init__()
        self.output_dir = Path(output_dir)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        prompt_state = repr(pl_module._prompt_rng.getstate()).encode()
        pseudo_state = pl_module._pseudo_generator.get_state().numpy().tobytes()
        record = {
            "rank": trainer.global_rank,
            "global_step": trainer.global_step,
            "seed": pl_module._pseudo_generator.initial_seed(),
            "prompt_state": hashlib.sha256(prompt_state).hexdigest()[:16],
            "pseudo_state": hashlib.sha256(pseudo_state).hexdigest()[:16],
        }
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / f"draws{trainer.global_rank}.jsonl", "a") as stream:
            stream.write(json.dumps(record) + "\n")


def read_draws(output_dir: Path) -> dict[int, dict[int, dict[str, Any]]]:
    """Per rank: global step after the batch -> its record."""
    draws: dict[int, dict[int, dict[str, Any]]] = {}
    for path in sorted(Path(output_dir).glob("draws*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            draws.setdefault(record["rank"], {})[record["global_step"]] = record
    return draws
