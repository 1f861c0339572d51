"""CMI-Fusion recipe: dual-attention features and image-text interaction with CLIP prompts.

    python -m recipes.cmifusion fit --config recipes/configs/cmifusion-cpu.yaml --run_name cpu   # CPU budget
    python -m recipes.cmifusion fit                              # published size: needs CLIP weights, see below
    python -m recipes.cmifusion fit --model.text_encoder.weights_file PATH/open_clip_model.safetensors
    python -m recipes.cmifusion fit --run_name demo --ckpt_path last          # resume
    python -m recipes.cmifusion validate --ckpt_path runs/demo/checkpoints/last.ckpt \
        --data.val_pairs '[../shared/fusion-bench/pairs]'
    python -m recipes.cmifusion predict --ckpt_path last --data.predict_pairs '[DIR]' --output_dir OUT
    python -m recipes.cmifusion convert-checkpoint DEEPSPEED_DIR OUT.ckpt
    python -m recipes.cmifusion fit --print_config          # every knob, documented in --help

Supports:

- The CMI-Fusion model (``lightning_modules.cmifusion``): dual attention feature extraction
  (DAFE, spatial and channel attention) per source, image-text interaction (ITI: each source's
  pixels attend to the token sequence of its modality prompt, their sum to the fusion prompt's),
  a convolutional decoder; per-task losses (fidelity to a target where a sample has one, else
  energy-weighted intensity, strongest-gradient and SSIM terms to the sources).
  ``cmifusion.yaml`` is the published size with OpenAI's ViT-B-32 text tower,
  ``cmifusion-cpu.yaml`` a thin model for the CPU training budget (random text weights),
  ``tests/configs/cmifusion-tiny.yaml`` is for tests and smoke runs.
- Prompts (``lightning_modules.text``, ``lightning_modules.prompts``): three fixed prompts per
  task from the ``modalities`` section of ``recipes/configs/prompts.yaml`` (source a, source b,
  the fused image), encoded once by a frozen open_clip text tower and stored in the checkpoint, so
  predict needs no CLIP weights. Nothing is downloaded: without weights the run stops at once and
  says how to provide them (or set ``model.text_encoder.random_init``).
- Everything the other recipes have, from the same base: mixed-task streaming from WebDataset
  shards with the demo set built on first use; full-resolution validation and test with the
  standard fusion metrics per task; W&B (offline by default); last and best checkpoints; resume;
  SLURM auto-requeue; predict at any size, grey or colour, in tiles; DeepSpeed ZeRO checkpoints
  converted to one file.
"""

from __future__ import annotations

from lightning_modules.cmifusion import CMIFusionModule
from recipes.cli import run_recipe


def main(args: list[str] | None = None) -> None:
    run_recipe("cmifusion", CMIFusionModule, default_config="cmifusion.yaml", args=args)


if __name__ == "__main__":
    main()
