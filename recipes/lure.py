"""LURE recipe: degradation-aware, text-guided fusion in a unified latent space.

    python -m recipes.lure fit --config recipes/configs/lure-cpu.yaml --run_name cpu   # demo set, CPU budget
    python -m recipes.lure fit                                  # default config: needs CLIP weights, see below
    python -m recipes.lure fit --model.text_encoder.weights_file PATH/open_clip_model.safetensors
    python -m recipes.lure fit --run_name demo --ckpt_path last              # resume
    python -m recipes.lure fit --model.stage 2 --model.stage1_steps 0 ...    # stage 2 only
    python -m recipes.lure validate --ckpt_path runs/demo/checkpoints/last.ckpt \
        --data.val_pairs '[../shared/fusion-bench/pairs]'
    python -m recipes.lure predict --ckpt_path last --data.predict_pairs '[DIR]' --output_dir OUT \
        --model.predict_prompt "infrared and visible image fusion; the visible image is very dark"
    python -m recipes.lure convert-checkpoint DEEPSPEED_DIR OUT.ckpt
    python -m recipes.lure fit --print_config          # every knob, documented in --help

Supports:

- The LURE model (``lightning_modules.lure``): an encoder into a unified latent space shaped by
  restoration pairs (unified loss with stop-gradient on the clean branch, restoration decoder,
  pseudo-degradation task) in stage 1, fusion rules learned inside that space in stage 2, and
  text-guided attention to the prompt's token embeddings; the stage switches after
  ``model.stage1_steps`` or is fixed by ``model.stage``. ``lure.yaml`` is the full model with
  OpenAI's ViT-B-32 text tower, ``lure-cpu.yaml`` the CPU demo budget (random text weights),
  ``tests/configs/lure-tiny.yaml`` is for tests and smoke runs.
- Prompts (``lightning_modules.text``): a frozen open_clip text tower, each distinct prompt encoded
  once and cached in the checkpoint (predict needs no CLIP weights for cached prompts); the prompt
  table ``recipes/configs/prompts.yaml`` keyed by task, degradation and severity; an explicit
  prompt at predict time (``--model.predict_prompt``). Nothing is downloaded: without weights the
  run stops at once and says how to provide them (or set ``model.text_encoder.random_init``).
- Everything the GIFNet recipe has, from the same base: mixed-task streaming from WebDataset
  shards (restoration and fusion shards together) with the demo set built on first use;
  full-resolution validation and test with the standard fusion metrics per task; W&B (offline by
  default); last and best checkpoints; resume; SLURM auto-requeue; predict at any size, grey or
  colour, in tiles; DeepSpeed ZeRO checkpoints converted to one file.
"""

from __future__ import annotations

from lightning_modules.lure import LUREModule
from recipes.cli import run_recipe


def main(args: list[str] | None = None) -> None:
    run_recipe("lure", LUREModule, default_config="lure.yaml", args=args)


if __name__ == "__main__":
    main()
