"""FusionCLI configuration: the recipe's default config applies only without --config, and a checkpoint's
hyperparameters give way to model options set on the command line, with a warning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_gifnet_module import TINY

from datamodules.mixture import FusionDataModule
from lightning_modules.gifnet import GIFNetModule
from recipes.cli import FusionCLI, command_line_model_options, names_config_files


class ParsedOnly(FusionCLI):
    """Parses and builds model, data and trainer like the recipe, without running the subcommand."""

    def _run_subcommand(self, subcommand: str) -> None:
        pass


def gifnet_cli(*args: str, runs_dir: Path) -> ParsedOnly:
    common = ["--runs_dir", str(runs_dir), "--trainer.logger", "false"]
    return ParsedOnly(GIFNetModule, FusionDataModule, default_config="gifnet.yaml", args=[*args, *common])


def test_the_default_config_applies_only_without_a_config(tmp_path: Path) -> None:
    demo = gifnet_cli("fit", runs_dir=tmp_path)
    assert (demo.trainer.max_steps, demo.datamodule.batches_per_epoch) == (120, 60)  # recipes/configs/gifnet.yaml

    user = tmp_path / "mine.yaml"
    user.write_text("model:\n  encoder_growth: 8\ndata:\n  batch_size: 2\n")
    mine = gifnet_cli("fit", "--config", str(user), runs_dir=tmp_path)
    config = mine.config.fit
    assert (config.model.encoder_growth, config.data.batch_size) == (8, 2)
    # nothing of the demo's: the constructors' defaults
    assert config.trainer.max_steps == -1 and config.data.batches_per_epoch is None
    assert config.checkpoint.monitor is None and config.data.val_pairs_per_task is None


def test_config_and_model_options_are_found_on_a_command_line() -> None:
    assert names_config_files(["fit", "--config", "a.yaml"]) and names_config_files(["fit", "-c", "a.yaml"])
    assert names_config_files(["fit", "--config=a.yaml"]) and not names_config_files(["fit", "--run_name", "x"])
    argv = ["predict", "--model.inference_branch", "ivif", "--model.text_encoder.random_init=true", "--data.x", "1"]
    assert command_line_model_options(argv) == ["inference_branch", "text_encoder"]


def save_checkpoint(path: Path, **hyperparameters: Any) -> Path:
    module = GIFNetModule(**{**TINY, **hyperparameters})
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def test_the_checkpoint_decides_the_inference_branch_unless_the_command_line_does(tmp_path: Path) -> None:
    checkpoint = save_checkpoint(tmp_path / "per_task.ckpt", inference_branch="per_task")
    saved = gifnet_cli("predict", "--ckpt_path", str(checkpoint), runs_dir=tmp_path)
    # recipes/configs/gifnet.yaml says mfif; the checkpoint's value wins over a config
    assert saved.model.inference_branch == "per_task" and saved.model.hparams["encoder_growth"] == 4

    with pytest.warns(UserWarning, match="inference_branch 'mfif' overrides the value 'per_task'"):
        overridden = gifnet_cli(
            "predict", "--ckpt_path", str(checkpoint), "--model.inference_branch", "mfif", runs_dir=tmp_path
        )
    assert overridden.model.inference_branch == "mfif"
    assert overridden.model.hparams["encoder_growth"] == 4  # the rest still comes from the checkpoint
