"""Shared pytest set-up: caches inside the project, W&B offline, and the torchvision CPU compat shim first."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("XDG_CACHE_HOME", str(PROJECT_ROOT / ".cache"))
os.environ.setdefault("MPLCONFIGDIR", str(PROJECT_ROOT / ".cache" / "matplotlib"))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(PROJECT_ROOT / ".cache" / "torch_extensions"))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import lightning_modules  # noqa: E402,F401  (makes torchvision, and so Lightning, importable on CPU torch)

FUSION_BENCH = PROJECT_ROOT.parent / "shared" / "fusion-bench"
