"""The LightningCLI every recipe runs: run directories, W&B, checkpoints, predict output.

What a recipe gets from :class:`FusionCLI`, on top of LightningCLI's one-to-one YAML mapping:

- ``--run_name``: one run directory ``<runs_dir>/<run_name>`` per run name, stable across
  restarts, so a requeued SLURM job or ``--ckpt_path last`` finds its checkpoints there
  (``checkpoints/last.ckpt``, the best ones, the requeue's ``hpc_ckpt_*.ckpt``). Which checkpoint a
  command starts from, and why a fresh ``fit`` into a run with checkpoints refuses (unless
  ``--overwrite true``), is :mod:`recipes.run_identity`; ``validate`` / ``test`` / ``predict``
  need ``--ckpt_path`` (or ``--untrained true``).
- For ``fit``, a W&B logger, offline by default (``WANDB_MODE=online`` turns syncing on), writing
  under the run directory, with a run id derived from the project and the run name so every
  restart appends to one W&B run; a resumed fit does not log again the steps that run already holds
  (:mod:`recipes.wandb_history`). ``validate`` / ``test`` / ``predict`` log nowhere by default;
  with ``--trainer.logger true`` each gets a W&B run of its own (named ``<run_name>-<subcommand>``).
- ``--output_dir`` for ``predict``: fused images are written there as PNG, same stem and bit depth;
  predictions are not also kept in memory (``return_predictions`` is off unless set).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_warn

from datamodules.mixture import FusionDataModule
from lightning_modules.inference.writer import FusedImageWriter
from recipes.run_identity import RunDirectoryError, evaluation_checkpoint, fit_checkpoint, wandb_run_id
from recipes.wandb_history import StepOnceWandbLogger

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class LastCheckpoint(ModelCheckpoint):
    """Rewrites ``last.ckpt`` at every save point, whatever the monitored metric did.

    It is the one "top" checkpoint of a callback that monitors nothing, named ``last``: Lightning's
    ``save_last`` writes "last" only where the callback's top-k saved too, so with ``save_top_k=0``
    it wrote ``last.ckpt`` at the end of training only, and a run killed before that had none. It also
    saves when training ends, so the final step is never lost.
    """

    def __init__(self, dirpath: str) -> None:
        super().__init__(dirpath=dirpath, filename="last", monitor=None, save_top_k=1, enable_version_counter=False)

    @property
    def state_key(self) -> str:
        # distinct from the configured ModelCheckpoint's key even when both monitor nothing
        return type(self).__name__

    def on_train_end(self, trainer: Trainer, pl_module: Any) -> None:
        # A fit can end between save points: max_time, a CPU budget, max_steps off the validation grid, or a
        # config that saves after validation only (check_val_every_n_epoch null) with validation off. Its final
        # steps would be lost; every rank calls this, as saving needs.
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_none_monitor_checkpoint(trainer, self._monitor_candidates(trainer))


class FusionCLI(LightningCLI):
    """LightningCLI with the platform's run-directory, logging, checkpoint and predict conventions.

    Configs: with no ``--config``, a subcommand runs the recipe's default config (the demo); with one
    or more ``--config`` files the default config is not read at all, so a user's config never
    inherits the demo's ``max_steps``, ``batches_per_epoch`` or checkpoint monitor: what it does not
    set takes the constructors' defaults (``--print_config`` shows the result). Later ``--config``
    files and command-line options override earlier ones, as in LightningCLI.

    With ``--ckpt_path``, the checkpoint's hyperparameters replace the config's model options (so a
    checkpoint rebuilds the model it was saved from), except those given on the command line
    (``--model.NAME VALUE``): those win, with a warning when they differ from the saved value.
    """

    def __init__(self, model_class: type, datamodule_class: type, default_config: str, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})  # a resumed run rewrites its config
        kwargs.setdefault("auto_configure_optimizers", False)  # the module owns its optimiser and schedule
        self._command_line_model: dict[str, Any] = {}
        argv = kwargs.get("args")
        argv = sys.argv[1:] if argv is None else argv
        default_files = [] if names_config_files(argv) else [str(CONFIG_DIR / default_config)]
        super().__init__(
            model_class,
            datamodule_class,
            parser_kwargs={
                subcommand: {"default_config_files": default_files}
                for subcommand in ("fit", "validate", "test", "predict")
            },
            **kwargs,
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        argv = sys.argv[1:] if args is None else args
        if subcommand and isinstance(argv, list):
            # before a checkpoint's hyperparameters replace them (_parse_ckpt_path)
            model = self.config[subcommand].model
            self._command_line_model = {name: model.get(name) for name in command_line_model_options(argv)}

    def _parse_ckpt_path(self) -> None:
        super()._parse_ckpt_path()
        subcommand = self.config.get("subcommand")
        if not subcommand or not self._command_line_model:
            return
        model = self.config[subcommand].model
        for name, value in self._command_line_model.items():
            if model.get(name) != value:
                rank_zero_warn(
                    f"--model.{name} {value!r} overrides the value {model.get(name)!r} saved in the checkpoint "
                    f"{self.config[subcommand].ckpt_path}"
                )
                model[name] = value

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
            "--overwrite",
            type=bool,
            default=False,
            help="fit: start afresh in a run directory that holds checkpoints, deleting them first "
            "(without it such a fit refuses: resume with --ckpt_path last, or choose a new --run_name).",
        )
        parser.add_argument(
            "--untrained",
            type=bool,
            default=False,
            help="validate/test/predict: run the randomly initialised network without --ckpt_path, on purpose.",
        )
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

    def before_instantiate_classes(self) -> None:
        if not self.subcommand:
            return
        config = self.config[self.subcommand]
        if self.subcommand == "predict" and config.return_predictions is None:
            # the writer has saved every fusion; keeping them all too would grow memory with each pair
            config.return_predictions = False
        run_dir = Path(config.runs_dir) / config.run_name
        checkpoint_dir = Path(config.checkpoint.dirpath or run_dir / "checkpoints")
        if self.subcommand == "fit":
            config.ckpt_path = fit_checkpoint(config.ckpt_path, run_dir, checkpoint_dir, config.overwrite)
            return
        resolved = evaluation_checkpoint(self.subcommand, config.ckpt_path, run_dir, checkpoint_dir, config.untrained)
        if resolved != config.ckpt_path:
            config.ckpt_path = resolved
            self._parse_ckpt_path()  # the model's saved hyperparameters, as for a checkpoint path given

    # Weights a stage needs are checked before anything else happens (see FusionModule.check_pretrained_weights).
    def before_fit(self) -> None:
        self.model.check_pretrained_weights("fit")

    def before_validate(self) -> None:
        self.model.check_pretrained_weights("validate")

    def before_test(self) -> None:
        self.model.check_pretrained_weights("test")

    def before_predict(self) -> None:
        self.model.check_pretrained_weights("predict")

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
        offline = os.environ.get("WANDB_MODE", "offline") != "online"
        training = self.subcommand in (None, "fit")
        if training and trainer_config.logger in (None, True):
            kwargs["logger"] = StepOnceWandbLogger(
                name=config.run_name,
                project=config.wandb_project,
                save_dir=str(run_dir),
                id=wandb_run_id(config.wandb_project, config.run_name, run_dir),
                offline=offline,
                resume="allow",
                # a resume trains again the steps after its checkpoint: log each step once
                skip_logged_steps=config.ckpt_path is not None,
            )
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        elif not training and trainer_config.logger is None:
            kwargs["logger"] = False  # never append evaluation to the training run's history
        elif not training and trainer_config.logger is True:
            # a W&B run of its own (a fresh id each time), grouped with the training run
            name = f"{config.run_name}-{self.subcommand}"
            kwargs["logger"] = WandbLogger(
                name=name, project=config.wandb_project, save_dir=str(run_dir), offline=offline, group=config.run_name
            )
        if self.subcommand == "predict":
            callbacks.append(FusedImageWriter(config.output_dir or str(run_dir / "predictions")))
        if trainer_config.default_root_dir is None:
            kwargs["default_root_dir"] = str(run_dir)
        trainer_settings = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        extra_callbacks = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        return self._instantiate_trainer(trainer_settings, extra_callbacks + callbacks)


def run_recipe(
    name: str,
    model_class: type,
    default_config: str,
    args: list[str] | None = None,
    commands: dict[str, Callable[[list[str]], None]] | None = None,
) -> None:
    """The ``main`` of ``python -m recipes.<name>``: its extra commands by name, else the FusionCLI subcommands.

    Every recipe has ``convert-checkpoint``; ``commands`` adds the recipe's own (GIFNet's ``import-official``).
    """
    argv = sys.argv[1:] if args is None else args
    extra = {
        "convert-checkpoint": lambda rest: convert_checkpoint_command(
            rest, f"python -m recipes.{name} convert-checkpoint"
        ),
        **(commands or {}),
    }
    if argv[:1] and argv[0] in extra:
        extra[argv[0]](argv[1:])
        return
    try:
        FusionCLI(model_class, FusionDataModule, default_config=default_config, args=args)
    except RunDirectoryError as error:  # a user's choice to make, not a crash: the message says the ways on
        raise SystemExit(f"error: {error}") from None


def names_config_files(argv: Any) -> bool:
    """Whether a command line (a list of arguments) passes ``--config`` / ``-c`` files."""
    if not isinstance(argv, list):
        return False
    return any(token in ("--config", "-c") or str(token).startswith("--config=") for token in argv)


def command_line_model_options(argv: list[str]) -> list[str]:
    """The model arguments a command line sets: ``--model.NAME VALUE`` or ``--model.NAME=VALUE`` (top-level NAME)."""
    names = [str(token).removeprefix("--model.").split("=", 1)[0].split(".")[0] for token in argv]
    return list(dict.fromkeys(name for name, token in zip(names, argv) if str(token).startswith("--model.")))


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
