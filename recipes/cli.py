"""The LightningCLI every recipe runs: run directories, W&B, checkpoints, predict output.

What a recipe gets from :class:`FusionCLI`, on top of LightningCLI's one-to-one YAML mapping:

- ``--run_name``: one run directory ``<runs_dir>/<run_name>`` per run name, stable across
  restarts, so a requeued SLURM job or ``--ckpt_path last`` finds its checkpoints there
  (``checkpoints/last.ckpt`` and the best ones) and Lightning's SLURM auto-requeue finds its
  ``hpc_ckpt_*.ckpt``.
- A W&B logger, offline by default (``WANDB_MODE=online`` turns syncing on), writing under the
  run directory, with a run id derived from the run name so every restart appends to one W&B run.
- ``--output_dir`` for ``predict``: fused images are written there as PNG, same stem and bit depth.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path
from typing import Any

from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import WandbLogger

from lightning_modules.inference.writer import FusedImageWriter

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def wandb_run_id(run_name: str) -> str:
    """A W&B run id that depends on the run name only, so a restarted run resumes the same W&B run."""
    return hashlib.sha1(run_name.encode()).hexdigest()[:16]


class LastCheckpoint(ModelCheckpoint):
    """Rewrites ``last.ckpt`` at every save point, whatever the monitored metric did."""

    def __init__(self, dirpath: str) -> None:
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0, enable_version_counter=False)

    @property
    def state_key(self) -> str:
        # distinct from the configured ModelCheckpoint's key even when both monitor nothing
        return type(self).__name__


class FusionCLI(LightningCLI):
    """LightningCLI with the platform's run-directory, logging, checkpoint and predict conventions."""

    def __init__(self, model_class: type, datamodule_class: type, default_config: str, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})  # a resumed run rewrites its config
        kwargs.setdefault("auto_configure_optimizers", False)  # the module owns its optimiser and schedule
        super().__init__(
            model_class,
            datamodule_class,
            # every subcommand starts from the recipe's default config; --config files override it
            parser_kwargs={
                subcommand: {"default_config_files": [str(CONFIG_DIR / default_config)]}
                for subcommand in ("fit", "validate", "test", "predict")
            },
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--run_name", type=str, default="demo", help="Run directory name under runs_dir; reuse it to resume."
        )
        parser.add_argument(
            "--runs_dir",
            type=str,
            default=os.environ.get("UNIFUSE_RUNS_DIR", "runs"),
            help="Parent directory of run directories (default: $UNIFUSE_RUNS_DIR or ./runs).",
        )
        parser.add_argument("--wandb_project", type=str, default="unifuse", help="W&B project name.")
        parser.add_argument(
            "--output_dir",
            type=str | None,
            default=None,
            help="predict: folder for the fused PNGs (default: <run directory>/predictions).",
        )
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        # `checkpoint` keeps the best by its monitor; last.ckpt comes from a callback of its own (see
        # instantiate_trainer), because a monitored ModelCheckpoint rewrites "last" only when the
        # monitored value improves, which would leave --ckpt_path last resuming from a stale step.
        parser.set_defaults(
            {"checkpoint.save_last": False, "checkpoint.save_top_k": 1, "checkpoint.enable_version_counter": False}
        )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # run=False (programmatic use) has no subcommand level in the config
        config = self.config[self.subcommand] if self.subcommand else self.config
        run_dir = Path(config.runs_dir) / config.run_name
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint = (self.config_init[self.subcommand] if self.subcommand else self.config_init).checkpoint
        if checkpoint.dirpath is None:
            checkpoint.dirpath = str(run_dir / "checkpoints")
        # one run directory per run name: a resumed run overwrites its last.ckpt, never last-v1.ckpt
        callbacks: list[Any] = [LastCheckpoint(checkpoint.dirpath)]
        trainer_config = config.trainer
        if trainer_config.logger in (None, True):
            kwargs["logger"] = WandbLogger(
                name=config.run_name,
                project=config.wandb_project,
                save_dir=str(run_dir),
                id=wandb_run_id(config.run_name),
                offline=os.environ.get("WANDB_MODE", "offline") != "online",
                resume="allow",
            )
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        if self.subcommand == "predict":
            callbacks.append(FusedImageWriter(config.output_dir or str(run_dir / "predictions")))
        if trainer_config.default_root_dir is None:
            kwargs["default_root_dir"] = str(run_dir)
        trainer_settings = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        extra_callbacks = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        return self._instantiate_trainer(trainer_settings, extra_callbacks + callbacks)


def convert_checkpoint_command(argv: list[str], prog: str) -> None:
    """``convert-checkpoint DIR OUT``: a sharded DeepSpeed checkpoint as one file ``predict`` loads."""
    from cluster.deepspeed_checkpoint import convert_deepspeed_checkpoint

    parser = argparse.ArgumentParser(prog=prog, description=convert_checkpoint_command.__doc__)
    parser.add_argument(
        "checkpoint_dir", type=Path, help="DeepSpeed checkpoint directory (e.g. runs/NAME/checkpoints/last.ckpt/)."
    )
    parser.add_argument("output_file", type=Path, help="Single-file Lightning checkpoint to write.")
    options = parser.parse_args(argv)
    written = convert_deepspeed_checkpoint(options.checkpoint_dir, options.output_file)
    print(f"wrote {written}")
