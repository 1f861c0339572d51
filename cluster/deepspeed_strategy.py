"""Lightning's DeepSpeed strategy, told the per-GPU batch size of a loader that yields whole batches.

DeepSpeed wants ``train_micro_batch_size_per_gpu`` in its config (for its throughput figures; the
batches themselves come from Lightning). Lightning fills it in from the training loader's
``batch_sampler``, but the streaming loader of :mod:`datamodules.mixture` builds batches inside
its workers and has no batch sampler, which crashes that look-up. :class:`StreamingDeepSpeedStrategy`
takes the number from the data module's ``batch_size`` instead, so the DeepSpeed JSON configs in
``cluster/deepspeed/`` can leave the batch size to the data module and the Trainer, as Lightning
requires. The DeepSpeed batch script uses it.
"""

from __future__ import annotations

from pytorch_lightning.strategies import DeepSpeedStrategy

MICRO_BATCH_KEY = "train_micro_batch_size_per_gpu"


class StreamingDeepSpeedStrategy(DeepSpeedStrategy):
    """``DeepSpeedStrategy`` that reads the per-GPU batch size from ``trainer.datamodule.batch_size``."""

    def _format_batch_size_and_grad_accum_config(self) -> None:
        # The one method every path to the batch-size look-up goes through: Lightning formats the config in
        # setup(), or earlier, in model_sharded_context, when the module overrides configure_model.
        batch_size = getattr(self.lightning_module.trainer.datamodule, "batch_size", None)
        # An explicit value in the DeepSpeed config wins; without a data module attribute, Lightning's own look-up runs.
        if isinstance(self.config, dict) and MICRO_BATCH_KEY not in self.config and isinstance(batch_size, int):
            self.config[MICRO_BATCH_KEY] = batch_size
        super()._format_batch_size_and_grad_accum_config()
