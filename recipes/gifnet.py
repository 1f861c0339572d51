"""GIFNet recipe: three-branch low-level task interaction for unified image fusion.

    python -m recipes.gifnet fit                          # the built-in demo set, default config
    python -m recipes.gifnet fit --config recipes/configs/gifnet-fast.yaml --run_name fast
    python -m recipes.gifnet fit --run_name fast --ckpt_path last          # resume
    python -m recipes.gifnet validate --ckpt_path runs/demo/checkpoints/last.ckpt \
        --data.val_pairs '[../shared/fusion-bench/pairs]'
    python -m recipes.gifnet predict --ckpt_path last --data.predict_pairs '[DIR]' --output_dir OUT
    python -m recipes.gifnet convert-checkpoint DEEPSPEED_DIR OUT.ckpt
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
"""

from __future__ import annotations

import sys

from datamodules.mixture import FusionDataModule
from lightning_modules.gifnet import GIFNetModule
from recipes.cli import FusionCLI, convert_checkpoint_command


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["convert-checkpoint"]:
        convert_checkpoint_command(argv[1:], prog="python -m recipes.gifnet convert-checkpoint")
        return
    FusionCLI(GIFNetModule, FusionDataModule, default_config="gifnet.yaml", args=args)


if __name__ == "__main__":
    main()
