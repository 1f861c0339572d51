"""Test-only callback that records what each rank of a distributed run did, for the cluster tests.

A batch job cannot hand Python objects back to the test, so every rank appends JSON lines to
``<output_dir>/rank<global rank>.jsonl``; one file per rank survives requeues (appended to) and
the test reads them after the job ended, or while it runs to know when training is under way.

Events (each line has ``event``, ``rank``, ``world_size``, ``restart``: SLURM_RESTART_COUNT):

- ``start``: training starts; ``global_step`` (0, or the step a resumed run restored) and, on
  rank 0, ``wandb_run_id`` (the logger's run id).
- ``batch``: after each training batch; ``global_step`` and ``keys``: the sample keys it held.
- ``end``: training ended; ``global_step`` and ``weights_sha256``: see :func:`weights_digest`
  (of the full weights: ZeRO-3's partitioned parameters are gathered first).

Select it on the command line: ``--trainer.callbacks+=tests._cluster_probe.TrainingProbe
--trainer.callbacks.output_dir=DIR``. ``step_delay_s`` slows every step down so a test can
signal a job while it trains.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback


def weights_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of a state dict's tensors, in name order.

    Equal digests on two ranks mean bit-identical weights; the same function over a checkpoint's
    ``state_dict`` ties the written checkpoint to the weights the ranks ended with.
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu")
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        # Raw bytes, any dtype (bf16 has no numpy twin); reshape first as 0-d tensors cannot be viewed.
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's state dict with whole tensors, gathering ZeRO-3 partitions (a collective: every rank calls it)."""
    partitioned = [parameter for parameter in module.parameters() if hasattr(parameter, "ds_id")]
    if not partitioned:
        return module.state_dict()
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned):
        return {name: tensor.clone() for name, tensor in module.state_dict().items()}


class TrainingProbe(Callback):
    """Appends per-rank ``start`` / ``batch`` / ``end`` events to ``output_dir/rank<N>.jsonl``.

    Args:
        output_dir: folder for the event files (created).
        step_delay_s: seconds to sleep after every training batch.
    """

    def __init__(self, output_dir: str, step_delay_s: float = 0.0) -> None:
        super().__init__()
        self.output_dir = Path(output_dir)
        self.step_delay_s = step_delay_s

    def _record(self, trainer: pl.Trainer, event: str, **fields: Any) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "event": event,
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "restart": int(os.environ.get("SLURM_RESTART_COUNT", 0)),
            **fields,
        }
        # One short line per write in append mode, flushed at once: the test polls these files.
        with open(self.output_dir / f"rank{trainer.global_rank}.jsonl", "a") as stream:
            stream.write(json.dumps(record) + "\n")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        fields: dict[str, Any] = {"global_step": trainer.global_step}
        if trainer.is_global_zero and trainer.logger is not None:
            fields["wandb_run_id"] = trainer.logger.version
        self._record(trainer, "start", **fields)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Batches of the sample contract (datamodules.schema) carry their keys; others record none.
        keys = list(batch["key"]) if isinstance(batch, Mapping) and "key" in batch else None
        self._record(trainer, "batch", global_step=trainer.global_step, keys=keys)
        if self.step_delay_s:
            time.sleep(self.step_delay_s)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(
            trainer, "end", global_step=trainer.global_step, weights_sha256=weights_digest(full_state_dict(pl_module))
        )


def read_events(output_dir: Path) -> dict[int, list[dict[str, Any]]]:
    """The events of every rank file in ``output_dir``, by global rank, in the order written."""
    events: dict[int, list[dict[str, Any]]] = {}
    for path in sorted(Path(output_dir).glob("rank*.jsonl")):
        lines = path.read_text().splitlines()
        events[int(path.stem.removeprefix("rank"))] = [json.loads(line) for line in lines if line.strip()]
    return events
