"""The shared LightningModule base of every fusion model family.

A subclass supplies the network through two methods:

- :meth:`FusionModule.fuse`: (B, 1, H, W) luminance of both sources, in [0, 1], and the task ids
  -> fused luminance. Restoration samples have no second source; the base passes ``b = a``.
- :meth:`FusionModule.training_losses`: a mixed training batch -> named loss terms, ``"loss"``
  being the total for the single optimizer step of that batch.

The base does the rest the same way for every family: optimiser and warm-up/cosine schedule,
logging of each loss term, full-resolution validation and test with the standard fusion metrics
per task (reduced across DDP ranks), a panel of validation fusions for W&B, and predict at any
size (padding to the network's multiple, overlapping tiles for images too large for memory,
colour put back in YCbCr).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger

from datamodules.schema import TASKS, second_source
from lightning_modules.inference.color import restore_color
from lightning_modules.inference.tiling import fuse_in_tiles, fuse_padded
from lightning_modules.metrics import HIGHER_IS_BETTER, SOURCE_METRICS, FusionMetricTracker

HOST_METADATA: tuple[str, ...] = ("task", "has_b", "has_gt", "degradation")
"""Per-sample batch tensors that :func:`host_metadata` keeps as Python lists under the batch key ``host``."""


def host_metadata(batch: dict[str, Any]) -> dict[str, list]:
    """The batch's task ids, ``has_b`` and ``has_gt`` flags and degradation severities as Python lists.

    A training step groups samples and names logged terms by them without reading device tensors (on a
    GPU each such read makes the host wait for every queued kernel). :meth:`FusionModule.on_before_batch_transfer`
    takes them while the batch is still on the host, where reading is free; a batch that did not pass
    through it (one built by hand) is read here, once.
    """
    if "host" not in batch:
        batch["host"] = {key: batch[key].tolist() for key in HOST_METADATA}
    return batch["host"]


def _as_plain(value: Any) -> Any:
    """Hyperparameters compare equal whether a sequence came from YAML (list) or a default (tuple)."""
    return list(value) if isinstance(value, tuple | list) else value


class FusionModule(pl.LightningModule):
    """Batch handling, optimisation, metrics, image logging and predict for fusion networks.

    Args:
        learning_rate: Peak learning rate of AdamW.
        weight_decay: AdamW weight decay.
        warmup_steps: Optimizer steps of linear warm-up before the cosine decay to zero.
        val_metrics: Fusion metrics computed per task in validation and test (names from
            ``lightning_modules.metrics.METRICS``); ``None`` means all of them.
        score_metric: A no-reference metric (higher is better) among ``val_metrics``: its mean over
            the tasks of the validation (test) set is logged as ``val/score`` (``test/score``), a key
            that every validation set produces, with or without targets, for the checkpoint monitor.
        val_panel_size: How many validation fusions (sources and result) are logged as images to
            W&B each validation epoch; 0 turns the panel off.
        predict_tile_size: Fuse images whose height or width exceeds this in overlapping tiles of
            this size, to bound memory; ``None`` fuses every image whole.
        predict_tile_overlap: Pixels shared between neighbouring tiles, blended to hide seams.
        compile: Run the training step's forward pass and losses (:meth:`training_losses`) and the
            fusing at validation, test and predict (:meth:`fuse`) through ``torch.compile``. The
            first steps (and each new image size at inference) take longer while they compile;
            results equal the eager ones within float rounding. Not saved in checkpoints.
        init_weights: A checkpoint whose weights ``fit`` starts from, e.g. the published GIFNet
            written by ``python -m recipes.gifnet import-official``: the optimiser, schedule and
            step count start fresh. Only a fit that does not resume (no ``--ckpt_path``) reads it;
            the model must be built with the architecture options the checkpoint was saved with.

    The predict tiling (and a subclass's :attr:`predict_time_arguments`) is not saved in checkpoints.
    """

    #: Constructor arguments that only steer inference (predict, and full-resolution validation and
    #: test) or how the computation runs (``compile``), never what is learnt. They stay out of the
    #: checkpoint's hyperparameters: with ``--ckpt_path``, LightningCLI overrides the parsed command
    #: line with the checkpoint's hyperparameters, so a saved value would silently win over e.g.
    #: ``predict --model.predict_tile_size 256``. Subclasses extend the tuple with their own
    #: inference knobs and save through :meth:`save_training_hyperparameters`.
    predict_time_arguments: ClassVar[tuple[str, ...]] = ("predict_tile_size", "predict_tile_overlap", "compile")

    def __init__(
        self,
        learning_rate: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        val_metrics: list[str] | None = None,
        score_metric: str = "Qabf",
        val_panel_size: int = 4,
        predict_tile_size: int | None = None,
        predict_tile_overlap: int = 32,
        compile: bool = False,
        init_weights: str | None = None,
    ) -> None:
        super().__init__()
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.val_panel_size = val_panel_size
        self.predict_tile_size = predict_tile_size
        self.predict_tile_overlap = predict_tile_overlap
        self.compile_steps = compile  # not ``self.compile``: that is nn.Module.compile
        self._compiled: dict[str, Callable[..., Any]] = {}
        self.init_weights = init_weights
        self._initial_weights_loaded = False
        if score_metric not in SOURCE_METRICS or not HIGHER_IS_BETTER[score_metric]:
            choices = ", ".join(name for name in SOURCE_METRICS if HIGHER_IS_BETTER[name])
            raise ValueError(f"score_metric must be a no-reference metric where higher is better ({choices})")
        if val_metrics is not None and score_metric not in val_metrics:
            raise ValueError(f"score_metric {score_metric} is not among val_metrics {val_metrics}: add it")
        self.score_metric = score_metric
        self.val_tracker = FusionMetricTracker(val_metrics)
        self.test_tracker = FusionMetricTracker(val_metrics)
        self._panel: list[tuple[str, torch.Tensor]] = []

    def save_training_hyperparameters(self, ignore: tuple[str, ...] = ()) -> None:
        """``save_hyperparameters()`` of the calling ``__init__``, less :attr:`predict_time_arguments`."""
        # the caller's frame, so Lightning collects the subclass's own arguments (kwargs included)
        caller = inspect.currentframe().f_back
        self.save_hyperparameters(ignore=[*ignore, *self.predict_time_arguments], frame=caller)

    # ----------------------------------------------------------------- what subclasses provide
    def check_pretrained_weights(self, stage: str) -> None:
        """Raise at once, with how to provide them, when weights that ``stage`` needs are not at hand.

        The recipes call it before anything else happens (before the demo set is built or a batch is
        read), so a missing CLIP file costs seconds, not a data pass. Nothing is needed by default.
        """

    @property
    def size_multiple(self) -> int:
        """Inputs to :meth:`fuse` are padded to a multiple of this (e.g. the attention window)."""
        return 1

    @property
    def whole_image_statistics(self) -> bool:
        """Whether the network normalises with statistics of its whole input, so tiles change the result."""
        return False

    def fuse(self, a: torch.Tensor, b: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement fuse(a, b, task)")

    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must implement training_losses(batch)")

    # ------------------------------------------------------------------------------ training
    def configure_model(self) -> None:
        # after setup, before a resumed checkpoint is restored and before the strategy wraps the model;
        # load_from_checkpoint calls it too, with no trainer: no fit, nothing to load then
        if self._trainer is None:
            return
        fresh_fit = self.trainer.state.fn == "fit" and self.trainer.ckpt_path is None
        if self.init_weights is not None and fresh_fit and not self._initial_weights_loaded:
            self.load_initial_weights(self.init_weights)
            self._initial_weights_loaded = True

    def load_initial_weights(self, path: str | Path) -> None:
        """Every tensor of the checkpoint at ``path`` (same names and shapes), or an error naming the options to set."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"--model.init_weights {path}: no such checkpoint (the published GIFNet is written by "
                "`python -m recipes.gifnet import-official Final.model OUT.ckpt`)"
            )
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        try:
            self.load_state_dict(checkpoint["state_dict"])
        except RuntimeError as error:
            saved = checkpoint.get("hyper_parameters", {})
            differing = [
                f"--model.{name} {saved[name]}"
                for name in saved
                if name in self.hparams and _as_plain(saved[name]) != _as_plain(self.hparams[name])
            ]
            hint = f"; build the model as it was saved: {' '.join(differing)}" if differing else ""
            raise ValueError(f"--model.init_weights {path} does not fit this model{hint}\n{error}") from None

    def compiled(self, name: str) -> Callable[..., Any]:
        """The bound method ``name``, through ``torch.compile`` when ``compile`` is on (wrapped once, on first use)."""
        method = getattr(self, name)
        if not self.compile_steps:
            return method
        if name not in self._compiled:
            self._compiled[name] = torch.compile(method)
        return self._compiled[name]

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and all(key in batch for key in HOST_METADATA):
            host_metadata(batch)  # read on the host now, so the step never asks the device (see host_metadata)
        return batch

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.compiled("training_losses")(batch)
        batch_size = batch["a"].shape[0]
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), batch_size=batch_size, prog_bar=name == "loss")
        # every task's share, absent ones as 0, from the host's copy of the task ids
        tasks = host_metadata(batch)["task"]
        for task_index, task_name in enumerate(TASKS):
            self.log(f"train/share/{task_name}", tasks.count(task_index) / batch_size, batch_size=batch_size)
        return losses["loss"]

    def on_train_epoch_end(self) -> None:
        # corrupt members and broken shards are skipped by the stream; make them visible per run
        stats = getattr(self.trainer.datamodule, "stream_stats", None)
        if stats is not None:
            for name in ("samples", "skipped_samples", "broken_shards"):
                self.log(f"data/{name}", float(getattr(stats, name)), sync_dist=True, reduce_fx="sum")

    def with_every_parameter(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss`` with every trainable parameter in its graph at weight zero.

        A parameter that a batch does not use (a task branch that no sample of this rank's batch
        runs) would get no gradient, and plain DDP (without ``find_unused_parameters``) fails on the
        next step. With the zero-weighted sum each parameter takes part in every step's reduction;
        the loss and every gradient are unchanged (an unused parameter's gradient is 0 instead of none).

        Under DeepSpeed ZeRO-3 the loss is returned as it is: each rank holds only a slice of every
        parameter (marked by DeepSpeed's ``ds_id``) outside the forward pass, so a sum over them has
        no valid gradient, and DeepSpeed reduces gradients by its own hooks, which need no anchor.
        """
        trainable = [parameter for parameter in self.parameters() if parameter.requires_grad]
        if any(hasattr(parameter, "ds_id") for parameter in trainable):
            return loss
        return loss + 0.0 * sum(parameter.sum() for parameter in trainable)

    def build_optimizer(self) -> torch.optim.Optimizer:
        """AdamW over every parameter; on CUDA its fused kernel, which updates them all in one launch."""
        return torch.optim.AdamW(
            self.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay, fused=self.device.type == "cuda"
        )

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.build_optimizer()  # the module is on its device by now
        total_steps = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = min(self.warmup_steps, total_steps - 1)

        def warmup_then_cosine(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(total_steps - warmup, 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_cosine)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --------------------------------------------------------------------- full-resolution fusing
    def fuse_full_resolution(self, batch: dict[str, Any]) -> torch.Tensor:
        """Fused luminance of a pair batch at its own size (padding or tiling as configured)."""
        a, task = batch["a"], batch["task"]
        b = second_source(batch)
        fuse = self.compiled("fuse")
        if self.predict_tile_size is None:
            return fuse_padded(fuse, a, b, task, self.size_multiple)
        return fuse_in_tiles(
            fuse,
            a,
            b,
            task,
            self.size_multiple,
            self.predict_tile_size,
            self.predict_tile_overlap,
            self.whole_image_statistics,
        )

    # ------------------------------------------------------------------------- validation / test
    def _evaluate(self, batch: dict[str, Any], tracker: FusionMetricTracker) -> torch.Tensor:
        fused = self.fuse_full_resolution(batch).clamp(0.0, 1.0)
        b = second_source(batch)
        tracker.update(fused, batch["a"], b, batch["task"], gt=batch["gt"], has_gt=batch["has_gt"])
        return fused

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        fused = self._evaluate(batch, self.val_tracker)
        if len(self._panel) < self.val_panel_size and self.trainer.is_global_zero:
            for index, key in enumerate(batch["key"][: self.val_panel_size - len(self._panel)]):
                row = torch.cat([batch["a"][index], batch["b"][index], fused[index]], dim=-1)
                self._panel.append((key, row.detach().cpu()))

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self._metric_logs("val", self.val_tracker.compute()), sync_dist=False)
        self.val_tracker.reset()
        self._log_panel()

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, self.test_tracker)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self._metric_logs("test", self.test_tracker.compute()), sync_dist=False)
        self.test_tracker.reset()

    def _metric_logs(self, stage: str, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``<stage>/<task>/<metric>`` per value, and ``<stage>/score``: the score metric's mean over tasks."""
        logs = {f"{stage}/{name}": value for name, value in values.items()}
        per_task = [value for name, value in values.items() if name.split("/")[-1] == self.score_metric]
        if per_task:
            logs[f"{stage}/score"] = torch.stack(per_task).mean()
        return logs

    def _log_panel(self) -> None:
        panel, self._panel = self._panel, []
        if not panel or self.trainer.sanity_checking:
            return
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(
                    key="val/fusions",
                    images=[row.squeeze(0).numpy() for _, row in panel],
                    caption=[f"{key}: a | b | fused" for key, _ in panel],
                    step=self.global_step,
                )

    # ------------------------------------------------------------------------------- predict
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Fused RGB (or grey) images at the sources' size, with keys and bit depths for writing."""
        fused_y = self.fuse_full_resolution(batch).clamp(0.0, 1.0)
        a_color = batch["a_color"]
        b_color = batch.get("b_color", a_color)
        a_is_color = batch["a_channels"] == 3
        b_is_color = (batch["b_channels"] == 3) & batch["has_b"]
        any_color = a_is_color | b_is_color
        rgb = restore_color(fused_y, a_color, b_color, a_is_color, b_is_color)
        return {
            "key": batch["key"],
            "images": [rgb[i] if any_color[i] else fused_y[i] for i in range(fused_y.shape[0])],
            "bit_depth": batch["bit_depth"].tolist(),
        }
