"""UP-Fusion recipe: one Restormer-style network for every modality, SCPM, GAM and TCPM.

    python -m recipes.upfusion fit --config recipes/configs/upfusion-cpu.yaml --run_name cpu   # CPU budget
    python -m recipes.upfusion fit                              # published size: needs CLIP weights, see below
    python -m recipes.upfusion fit --model.text_encoder.weights_file PATH/open_clip_model.safetensors \
        --model.image_encoder.weights_file PATH/open_clip_model.safetensors
    python -m recipes.upfusion fit --run_name demo --ckpt_path last          # resume
    python -m recipes.upfusion validate --ckpt_path runs/demo/checkpoints/last.ckpt \
        --data.val_pairs '[../shared/fusion-bench/pairs]'
    python -m recipes.upfusion predict --ckpt_path last --data.predict_pairs '[DIR]' --output_dir OUT \
        --model.predict_prompt "infrared and visible image fusion; the visible image is very dark"
    python -m recipes.upfusion convert-checkpoint DEEPSPEED_DIR OUT.ckpt
    python -m recipes.upfusion fit --print_config          # every knob, documented in --help

Supports:

- The UP-Fusion model (``lightning_modules.upfusion``): a Restormer-style U-Net on luminance
  (transposed channel attention, gated feed-forward), shallow encoders per source with shared
  downsampling, SCPM (semantic channel pruning scored by squeeze-and-excitation and a frozen
  open_clip visual tower), GAM (per-modality affine modulation), TCPM (the prompt reorders and
  selects the two sources' channels at the latent and skip levels), all selections
  differentiable; the public code's losses (intensity to the per-pixel maximum, strongest
  gradient, energy-weighted SSIM), fidelity to a target where a sample has one.
  ``upfusion.yaml`` is the published size with OpenAI's ViT-B-32 towers, ``upfusion-cpu.yaml`` a
  thin model for the CPU training budget (random tower weights), ``tests/configs/upfusion-tiny.yaml``
  is for tests and smoke runs.
- Prompts per task and degradation from ``recipes/configs/prompts.yaml``, encoded once by the
  frozen text tower and stored in the checkpoint (predict needs no CLIP text weights for them);
  ``--model.predict_prompt`` for one prompt at inference. The visual tower runs on every image, so
  inference needs the weights ``model.image_encoder`` names. Nothing is downloaded: without
  weights the run stops at once and says how to provide them (or set ``random_init``).
- Everything the other recipes have, from the same base: mixed-task streaming from WebDataset
  shards with the demo set built on first use; full-resolution validation and test with the
  standard fusion metrics per task; W&B (offline by default); last and best checkpoints; resume;
  SLURM auto-requeue; predict at any size, grey or colour, in tiles; DeepSpeed ZeRO checkpoints
  converted to one file.
"""

from __future__ import annotations

from lightning_modules.upfusion import UPFusionModule
from recipes.cli import run_recipe


def main(args: list[str] | None = None) -> None:
    run_recipe("upfusion", UPFusionModule, default_config="upfusion.yaml", args=args)


if __name__ == "__main__":
    main()
