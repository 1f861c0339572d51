"""GIFNet recipe: three-branch low-level task interaction for unified image fusion.

    python -m recipes.gifnet fit                          # the built-in demo set, default config
    python -m recipes.gifnet fit --config recipes/configs/gifnet-fast.yaml --run_name fast
    python -m recipes.gifnet fit --run_name fast --ckpt_path last          # resume
    python -m recipes.gifnet validate --ckpt_path runs/demo/checkpoints/last.ckpt \
        --data.val_pairs '[../shared/fusion-bench/pairs]'
    python -m recipes.gifnet predict --ckpt_path last --data.predict_pairs '[DIR]' --output_dir OUT
    python -m recipes.gifnet convert-checkpoint DEEPSPEED_DIR OUT.ckpt
    python -m recipes.gifnet import-official Final.model official.ckpt       # the published weights
    python -m recipes.gifnet predict --ckpt_path official.ckpt --model.predict_tile_size null \
        --data.predict_pairs '[DIR]' --output_dir OUT
    python -m recipes.gifnet fit --model.init_weights official.ckpt --model.norm image ...  # fine-tune
    python -m recipes.gifnet fit --print_config          # every knob, documented in --help

Supports:

- The GIFNet network (``lightning_modules.gifnet``): shared dense encoder, a reconstruction
  branch, infrared-visible and multi-focus attention branches coupled by cross-fusion gating;
  ``gifnet.yaml`` has the published sizes, ``gifnet-fast.yaml`` runs the task branches at reduced
  resolution, ``tests/configs/gifnet-tiny.yaml`` is for tests and smoke runs.
- Mixed-task streaming from WebDataset shards (``datamodules.mixture``), one optimizer step per
  mixed batch with each task's loss on its own samples; the demo set is built on first use.
- Validation and test at full resolution on paired folders (the demo split, or
  ``../shared/fusion-bench/pairs``) with the standard fusion metrics per task.
- W&B (offline by default), last and best checkpoints, resume with ``--ckpt_path last``, SLURM
  auto-requeue, seed, gradient clipping and accumulation, bf16-mixed on GPU — all Trainer flags.
- Predict at any size, grey or colour, 8- or 16-bit, in tiles for large images.
- DeepSpeed ZeRO checkpoints converted to one file that ``predict`` loads.
- The published GIFNet (the authors' ``Final.model``) imported as a checkpoint
  (:mod:`lightning_modules.networks.gifnet_official` maps every tensor; ``norm: image``, MFIF
  branch for every task, as published) that ``predict`` and ``validate`` take as ``--ckpt_path``
  and ``fit`` starts from with ``--model.init_weights``. Its norm is over whole images, so
  predict it without tiles (``--model.predict_tile_size null``; strips keep the memory bounded).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytorch_lightning as pl
import torch

from lightning_modules.gifnet import GIFNetModule
from lightning_modules.networks.gifnet_official import (
    OFFICIAL_NETWORK_ARGUMENTS,
    OfficialCheckpointError,
    convert_official_state_dict,
    load_official_state_dict,
)
from recipes.cli import run_recipe


def import_official_command(argv: list[str]) -> None:
    """``import-official PATH OUT``: the published GIFNet weights as a checkpoint of this recipe."""
    parser = argparse.ArgumentParser(
        prog="python -m recipes.gifnet import-official",
        description="Write the authors' GIFNet checkpoint (Final.model) as a Lightning checkpoint that predict, "
        "validate (--ckpt_path) and fit (--model.init_weights, with --model.norm image) accept.",
    )
    parser.add_argument("official", type=Path, help="The published state dict (Final.model).")
    parser.add_argument("output_file", type=Path, help="Lightning checkpoint to write.")
    options = parser.parse_args(argv)
    # the published model fuses every task through its multi-focus branch
    module = GIFNetModule(**OFFICIAL_NETWORK_ARGUMENTS, inference_branch="mfif")
    try:
        official = load_official_state_dict(options.official)
        module.network.load_state_dict(convert_official_state_dict(official, module.network, str(options.official)))
    except (OfficialCheckpointError, FileNotFoundError) as error:
        raise SystemExit(f"import-official: {error}") from None
    options.output_file.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": pl.__version__,
        "epoch": 0,
        "global_step": 0,
    }
    torch.save(checkpoint, options.output_file)
    print(f"wrote {options.output_file}: {len(official)} tensors of {options.official} mapped onto GIFNet (norm=image)")


def main(args: list[str] | None = None) -> None:
    run_recipe(
        "gifnet",
        GIFNetModule,
        default_config="gifnet.yaml",
        args=args,
        commands={"import-official": import_official_command},
    )


if __name__ == "__main__":
    main()
