"""Every YAML in recipes/configs (what users run) and tests/configs (what tests run) parses against its code."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from recipes.cli import CONFIG_DIR

RECIPES = ("gifnet", "lure", "upfusion", "cmifusion")
DATA_TABLES = {"prompts.yaml"}  # not Trainer configs; validated by the loaders' own tests


def recipe_of(config: Path) -> str:
    for name in RECIPES:
        if config.stem == name or config.stem.startswith(f"{name}-"):
            return name
    raise AssertionError(f"{config.name} matches no recipe in {RECIPES}; name configs <recipe>[-variant].yaml")


TEST_CONFIG_DIR = Path(__file__).resolve().parent / "configs"
TRAINER_CONFIGS = sorted(
    path for folder in (CONFIG_DIR, TEST_CONFIG_DIR) for path in folder.glob("*.yaml") if path.name not in DATA_TABLES
)


def test_configs_are_shipped() -> None:
    assert {"gifnet", "gifnet-fast", "lure", "lure-cpu"} <= {path.stem for path in CONFIG_DIR.glob("*.yaml")}
    assert {"gifnet-tiny", "lure-tiny"} <= {path.stem for path in TEST_CONFIG_DIR.glob("*.yaml")}


@pytest.mark.parametrize("config", TRAINER_CONFIGS, ids=lambda path: path.name)
def test_config_parses_against_the_recipe(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = importlib.import_module(f"recipes.{recipe_of(config)}")
    with pytest.raises(SystemExit) as exit_info:
        recipe.main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    shipped = yaml.safe_load(config.read_text())
    for section, values in shipped.items():
        if isinstance(values, dict):
            for key in values:
                assert key in (
                    printed[section].get("init_args", printed[section]) if isinstance(printed[section], dict) else {}
                ), f"{config.name}: {section}.{key} did not reach the parsed config"


def test_a_typo_in_a_config_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "typo.yaml"
    config.write_text("model:\n  learning_rat: 0.1\n")
    recipe = importlib.import_module("recipes.gifnet")
    with pytest.raises(SystemExit) as exit_info:
        recipe.main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code != 0
    assert "learning_rat" in capsys.readouterr().err
