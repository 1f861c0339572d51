"""UP-Fusion: one network for every modality, pruned by a pretrained image model, perturbed by text.

The network is :class:`lightning_modules.networks.upfusion.UPFusionNet` (its docstring describes
SCPM, GAM, TCPM and the differentiable channel selection). Two frozen open_clip towers feed it,
both kept out of the module tree and never optimised:

- the visual tower (:class:`~lightning_modules.image_features.ImageFeatureEncoder`) embeds both
  sources for SCPM's semantic channel scores (the public code uses an ImageNet ConvNeXt there);
- the text tower (:class:`~lightning_modules.text.PromptEncoder`) embeds each sample's prompt for
  TCPM. Prompts come from the prompt table by task and degradation (the public code uses one
  fixed prompt): training draws random paraphrases, validation, test and predict take the first
  (``predict_prompt`` replaces them all). The prompt embeddings are cached and stored in the
  checkpoint, so inference needs no CLIP text weights for prompts seen in training or for the
  table's evaluation prompts. The visual tower has no such cache (every image is new), so
  inference needs the weights the checkpoint's ``image_encoder`` names (or its random-init seed).

Losses, per sample by what it has (the total is the mean over the batch), as the public code's
for pairs without a target:

- without a target: ``intensity`` (L1 to the per-pixel maximum of the sources; for multi-exposure
  pairs to the sources weighted per pixel by well-exposedness, since the maximum would pick the
  over-exposed image), ``gradient`` (L1 of the Sobel magnitude to the per-pixel maximum of the
  sources') and ``ssim`` (1 - SSIM to each source, weighted per sample by their gradient energy);
- with a target (multi-focus, supervised multi-exposure, restoration): ``fidelity_l1``,
  ``fidelity_ssim`` and ``fidelity_gradient`` to it.

A restoration sample is fused with itself (``b = a``).
"""

from __future__ import annotations

import random
from typing import Any

import torch
from torch import Tensor

from datamodules.schema import DEGRADATIONS, TASK_IDS, TASKS, second_source
from lightning_modules.fusion import FusionModule, host_metadata
from lightning_modules.image_features import ImageFeatureEncoder
from lightning_modules.losses import (
    GradientEnergy,
    energy_weights,
    exposure_weights,
    intensity_loss,
    masked_total,
    text_guided_terms,
)
from lightning_modules.networks.upfusion import UPFusionNet
from lightning_modules.prompts import PromptTable
from lightning_modules.text import CLIPTowerConfig, PromptCacheCheckpoints, PromptEncoder, save_tower_configs

MEIF = TASK_IDS["meif"]
NO_DEGRADATION = [0.0] * len(DEGRADATIONS)


class UPFusionModule(PromptCacheCheckpoints, FusionModule):
    """UP-Fusion: Restormer-style U-Net with SCPM (pretrained image features), GAM and TCPM (prompts).

    Args:
        width: Channels at full resolution (doubled at each lower level).
        blocks: Transformer blocks per level, full resolution first.
        heads: Attention heads per level.
        expansion: Feed-forward expansion of the transformer blocks.
        refinement_blocks: Transformer blocks after the decoder.
        prune_keep_ratio: Fraction of the joint embedding's channels SCPM keeps.
        perturb_keep_ratio: Fraction of the concatenated channels each TCPM keeps.
        text_encoder: The frozen open_clip text tower for the prompts, and where its weights come from.
        image_encoder: The frozen open_clip visual tower for SCPM, and where its weights come from.
        prompt_table: The prompt table YAML (default ``recipes/configs/prompts.yaml``).
        predict_prompt: At inference, this prompt for every image (``--model.predict_prompt``).
        intensity_weight: Weight of the intensity term (pairs without a target).
        gradient_weight: Weight of the gradient term (pairs without a target).
        ssim_weight: Weight of the energy-weighted SSIM term (pairs without a target).
        fidelity_l1_weight: Weight of the L1 distance to the target.
        fidelity_ssim_weight: Weight of 1 - SSIM to the target.
        fidelity_gradient_weight: Weight of the L1 distance of Sobel magnitudes to the target's.
        exposure_sigma: Width of the well-exposedness curve for multi-exposure pairs without a target.
        energy_scales: Pyramid levels of the gradient energy that weights the SSIM term.
        **kwargs: Optimisation, validation and predict settings of :class:`FusionModule`.
    """

    # --model.predict_prompt must win over the checkpoint (see FusionModule.predict_time_arguments)
    predict_time_arguments = (*FusionModule.predict_time_arguments, "predict_prompt")

    def __init__(
        self,
        width: int = 48,
        blocks: tuple[int, int, int, int] = (4, 6, 6, 8),
        heads: tuple[int, int, int, int] = (1, 2, 4, 8),
        expansion: float = 2.66,
        refinement_blocks: int = 4,
        prune_keep_ratio: float = 0.7,
        perturb_keep_ratio: float = 0.5,
        text_encoder: CLIPTowerConfig | None = None,
        image_encoder: CLIPTowerConfig | None = None,
        prompt_table: str | None = None,
        predict_prompt: str | None = None,
        intensity_weight: float = 1.0,
        gradient_weight: float = 1.0,
        ssim_weight: float = 1.0,
        fidelity_l1_weight: float = 1.0,
        fidelity_ssim_weight: float = 0.5,
        fidelity_gradient_weight: float = 1.0,
        exposure_sigma: float = 0.2,
        energy_scales: int = 3,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_training_hyperparameters(ignore=("text_encoder", "image_encoder"))
        text_tower, image_tower = save_tower_configs(
            self.hparams, text_encoder=text_encoder, image_encoder=image_encoder
        )
        self.text_encoder = PromptEncoder(text_tower)
        self.image_encoder = ImageFeatureEncoder(image_tower)
        self.prompt_table = PromptTable.from_yaml(prompt_table)
        self.net = UPFusionNet(
            self.text_encoder.pooled_dim,
            self.image_encoder.feature_dim,
            width,
            tuple(blocks),
            tuple(heads),
            expansion,
            refinement_blocks,
            prune_keep_ratio,
            perturb_keep_ratio,
        )
        self.predict_prompt = predict_prompt
        self.energy = GradientEnergy(energy_scales)
        self.exposure_sigma = exposure_sigma
        self.loss_weights = {
            "intensity": intensity_weight,
            "gradient": gradient_weight,
            "ssim": ssim_weight,
            "fidelity_l1": fidelity_l1_weight,
            "fidelity_ssim": fidelity_ssim_weight,
            "fidelity_gradient": fidelity_gradient_weight,
        }
        self._prompt_rng = random.Random(torch.initial_seed())
        self._active_prompts: list[str] | None = None

    # --------------------------------------------------------------------------------- prompts
    def check_pretrained_weights(self, stage: str) -> None:
        # every image passes the visual tower, so each stage needs its weights; prompts outside fit
        # come from the checkpoint's cache
        self.image_encoder.load_tower()
        if stage == "fit":
            self.text_encoder.load_tower()

    def setup(self, stage: str) -> None:
        if stage == "fit":
            # Fail before the first step when either tower has no weights at hand, and cache every
            # evaluation prompt, so the checkpoint fuses with them without CLIP text weights.
            self.image_encoder.load_tower()
            self.text_encoder.load_tower()
            self.text_encoder.encode(self.prompt_table.evaluation_prompts())

    def sample_prompts(self, batch: dict[str, Any], training: bool) -> list[str]:
        """One prompt per sample from its task and degradations: random paraphrases in training, else the first."""
        rng = self._prompt_rng if training else None
        tasks, severities = batch["task"].tolist(), batch["degradation"].tolist()
        return [self.prompt_table.prompt(TASKS[task], tags, rng) for task, tags in zip(tasks, severities)]

    # ------------------------------------------------------------------------------- inference
    @property
    def size_multiple(self) -> int:
        return UPFusionNet.size_multiple

    def fuse_prompted(self, a: Tensor, b: Tensor, prompts: list[str]) -> Tensor:
        """Fused luminance of (B, 1, H, W) sources with one prompt per sample."""
        text = self.text_encoder.encode(prompts, a.device).pooled
        features_a, features_b = self.image_encoder(torch.cat([a, b])).chunk(2)
        return self.net(a, b, text, torch.cat([features_a, features_b], dim=1))

    def fuse(self, a: Tensor, b: Tensor, task: Tensor) -> Tensor:
        """As :meth:`fuse_prompted`, with the prompts :meth:`fuse_full_resolution` chose, else task-only ones."""
        prompts = self._active_prompts or [self.prompt_table.prompt(TASKS[t], NO_DEGRADATION) for t in task.tolist()]
        return self.fuse_prompted(a, b, prompts)

    def fuse_full_resolution(self, batch: dict[str, Any]) -> Tensor:
        """As the base, with each sample's evaluation prompt, or ``predict_prompt`` for all when set."""
        count = batch["a"].shape[0]
        self._active_prompts = (
            [self.predict_prompt] * count if self.predict_prompt else self.sample_prompts(batch, False)
        )
        try:
            return super().fuse_full_resolution(batch)
        finally:
            self._active_prompts = None

    # -------------------------------------------------------------------------------- training
    def training_losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        a, task, has_gt = batch["a"], batch["task"], batch["has_gt"]
        b = second_source(batch)
        fused = self.fuse_prompted(a, b, self.sample_prompts(batch, training=True))
        # losses in float32 under mixed precision: SSIM variances (E[x^2] - E[x]^2) cancel in bfloat16
        with torch.autocast(a.device.type, enabled=False):
            return self.loss_terms(fused.float(), a, b, batch["gt"], task, has_gt, host_metadata(batch))

    def loss_terms(
        self, fused: Tensor, a: Tensor, b: Tensor, gt: Tensor, task: Tensor, has_gt: Tensor, host: dict[str, list]
    ) -> dict[str, Tensor]:
        """Each sample's terms (see the module docstring), their weighted total ``loss`` and per-task means."""
        sources = [a, b]
        maximum = intensity_loss(fused, sources)
        well_exposed = intensity_loss(fused, sources, exposure_weights(sources, self.exposure_sigma))
        intensity = torch.where(task == MEIF, well_exposed, maximum)
        energy = energy_weights(self.energy(a), self.energy(b))
        fusion, fidelity = text_guided_terms(fused, a, b, gt, intensity, energy)
        return masked_total(fusion, fidelity, self.loss_weights, has_gt, task, host)
