"""Inference speed and memory of any model family's config on CPU: one 640x480 pair, as predict fuses it.

    python bench/family_speed.py --recipe upfusion --config upfusion        # published size, 2 threads, median of 3
    python bench/family_speed.py --recipe upfusion --config upfusion-cpu --repeats 5

The ``model`` section of ``recipes/configs/<config>.yaml`` builds the family's LightningModule
(``lightning_modules.<recipe>``); its ``fuse`` runs on one random 640x480 luminance pair, whole
(no tiling), exactly as predict calls it, including any frozen CLIP towers the family runs per
image (their prompt embeddings are cached after the warm-up, as in a predict run). CLIP towers
get random weights here (``random_init``): the figures do not depend on the weight values, and
no weights need to be at hand.

Printed: parameters, the median wall time of ``--repeats`` runs after one warm-up (with each run's
wall and process-CPU seconds: CPU much below threads x wall means other processes took the cores),
and the peak resident memory (VmHWM) of a fresh process that builds the model and fuses one pair.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402
from gifnet_speed import INFERENCE_SIZE, autocast, inference_pair, median_seconds, resident_peak_gb  # noqa: E402

import lightning_modules  # noqa: E402,F401  (torchvision compat first)
from datamodules.schema import TASK_IDS  # noqa: E402
from lightning_modules.fusion import FusionModule  # noqa: E402
from recipes.cli import CONFIG_DIR  # noqa: E402

TOWERS = ("text_encoder", "image_encoder")


def build_module(recipe: str, config: str) -> FusionModule:
    """The family's module from the config's ``model`` section, CLIP towers with random weights, in eval mode."""
    path = CONFIG_DIR / f"{config}.yaml"
    if not path.is_file():
        raise SystemExit(f"no config {path}; choose from {sorted(p.stem for p in CONFIG_DIR.glob(f'{recipe}*.yaml'))}")
    model = (yaml.safe_load(path.read_text()) or {}).get("model", {}) or {}
    arguments = dict(model.get("init_args", model))
    for tower in TOWERS:
        if tower in arguments:
            arguments[tower] = {**arguments[tower], "weights_file": None, "random_init": True}
    module = importlib.import_module(f"lightning_modules.{recipe}")
    [module_class] = [
        value
        for value in vars(module).values()
        if inspect.isclass(value) and issubclass(value, FusionModule) and value.__module__ == module.__name__
    ]
    torch.manual_seed(0)
    return module_class(**arguments).eval()


def fuse_once(module: FusionModule, precision: str) -> torch.Tensor:
    a, b = inference_pair()
    with torch.inference_mode(), autocast(precision):
        return module.fuse(a, b, torch.tensor([TASK_IDS["ivif"]]))


def peak_memory_child(recipe: str, config: str, precision: str) -> None:
    """Run in a fresh process: build, fuse one pair, print resident-memory figures as JSON."""
    module = build_module(recipe, config)
    before = resident_peak_gb()
    fuse_once(module, precision)
    print(json.dumps({"peak_gb": resident_peak_gb(), "before_gb": before}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True, help="model family: lightning_modules.<recipe> holds its module")
    parser.add_argument("--config", required=True, help="config name in recipes/configs (without .yaml)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: CPU autocast")
    parser.add_argument("--peak-memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.peak_memory_child:
        peak_memory_child(args.recipe, args.config, args.precision)
        return

    print(
        f"torch {torch.__version__}, {args.threads} threads, {args.precision}, median of {args.repeats}; "
        f"load average before: {os.getloadavg()[0]:.1f} (other processes on the cores inflate wall times)"
    )
    module = build_module(args.recipe, args.config)
    trainable = sum(parameter.numel() for parameter in module.parameters() if parameter.requires_grad)
    print(f"[{args.recipe} / {args.config}] {trainable / 1e6:.3f} M trainable parameters")
    median, runs = median_seconds(lambda: fuse_once(module, args.precision), args.repeats)
    height, width = INFERENCE_SIZE
    print(
        f"fuse one {width}x{height} pair: median {median:.2f} s  runs (wall/cpu s): "
        + ", ".join(f"{wall:.2f}/{cpu:.2f}" for wall, cpu in runs)
    )
    command = [
        sys.executable,
        __file__,
        "--recipe",
        args.recipe,
        "--config",
        args.config,
        "--threads",
        str(args.threads),
        "--precision",
        args.precision,
        "--peak-memory-child",
    ]
    memory = json.loads(
        subprocess.run(command, capture_output=True, text=True, check=True, cwd=PROJECT_ROOT).stdout.splitlines()[-1]
    )
    print(
        f"peak resident memory, fusing {width}x{height}: {memory['peak_gb']:.2f} GB "
        f"(of which {memory['before_gb']:.2f} GB before fusing: Python, torch, model)"
    )
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
