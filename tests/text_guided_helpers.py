"""Shared by the tests of the text-guided families (LURE, UP-Fusion, CMI-Fusion): tiny CLIP towers, recipe runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import open_clip
import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TINY_TEXT = {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
"""open_clip ``text_cfg`` of a text tower small enough to build in milliseconds."""


def run_recipe_process(recipe: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m recipes.<recipe> ARGS`` as a user runs it (one thread, W&B offline), output captured."""
    env = {**os.environ, **ONE_THREAD, "WANDB_MODE": "offline", "PYTHONPATH": str(PROJECT_ROOT)}
    command = [sys.executable, "-m", f"recipes.{recipe}", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def tiny_clip_text_args(folder: Path) -> tuple[list[str], Path]:
    """Options that load a tiny CLIP text tower from a weights file saved in ``folder``, and that file.

    Training reads the tower from the file; deleting the file afterwards shows what predict needs.
    """
    (folder / "tiny-clip.json").write_text(
        json.dumps(
            {
                "embed_dim": 16,
                "text_cfg": TINY_TEXT,
                "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 32, "patch_size": 16},
            }
        )
    )
    open_clip.add_model_config(folder / "tiny-clip.json")
    weights = folder / "tiny-clip.pt"
    torch.save(open_clip.create_model("tiny-clip").state_dict(), weights)
    args = [
        "--model.text_encoder.model_name",
        "tiny-clip",
        "--model.text_encoder.random_init",
        "false",
        "--model.text_encoder.weights_file",
        str(weights),
        "--model.text_encoder.model_config",
        json.dumps({"embed_dim": 16, "text_cfg": TINY_TEXT}),
    ]
    return args, weights


def mixed_sources(data: dict[str, Path]) -> str:
    """``--data.sources`` of restoration pairs (with targets) and infrared-visible pairs (without)."""
    return json.dumps([{"urls": str(data["restore"]), "task": "restore"}, {"urls": str(data["ivif"]), "task": "ivif"}])
