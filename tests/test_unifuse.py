"""The ``unifuse`` console command: every recipe and tool by name, with the same arguments as ``python -m``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import PROJECT_ROOT

UNIFUSE = Path(sys.executable).with_name("unifuse")


def unifuse(*args: str, runs_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert UNIFUSE.is_file(), f"{UNIFUSE} is missing: `make setup` installs the project's console command"
    environment = {**os.environ, "WANDB_MODE": "offline"}
    if runs_dir is not None:
        environment["UNIFUSE_RUNS_DIR"] = str(runs_dir)
    return subprocess.run(
        [str(UNIFUSE), *args], cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True, timeout=600
    )


def test_help_lists_every_family_and_tool() -> None:
    result = unifuse("--help")
    assert result.returncode == 0
    for command in ("gifnet", "lure", "upfusion", "cmifusion", "evaluate", "shards", "demo"):
        assert f"  {command} " in result.stdout


def test_an_unknown_command_is_named_with_the_choices() -> None:
    result = unifuse("gifnett", "fit")
    assert result.returncode == 2
    assert "'gifnett'" in result.stderr and "gifnet" in result.stderr.split("choose one of:")[1]


def test_a_tool_runs_with_the_python_m_arguments() -> None:
    result = unifuse("shards", "layouts")
    assert result.returncode == 0 and "roadscene" in result.stdout and "harvard" in result.stdout


def test_a_fit_over_existing_checkpoints_says_the_ways_on_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "demo" / "checkpoints").mkdir(parents=True)
    (tmp_path / "demo" / "checkpoints" / "last.ckpt").write_bytes(b"an earlier run")
    result = unifuse("gifnet", "fit", "--trainer.max_steps", "1", runs_dir=tmp_path)
    assert result.returncode != 0
    assert "--ckpt_path last" in result.stderr and "--overwrite true" in result.stderr
    assert "Traceback" not in result.stderr
