"""CMI-Fusion: dual-attention features and image-text interaction with CLIP prompts (the LightningModule).

The network is :class:`lightning_modules.networks.cmifusion.CMIFusionNet`. Every sample is fused
with three fixed prompts of its task from the prompt table (``modalities`` in
``recipes/configs/prompts.yaml``): one describing source ``a`` (e.g. the infrared image), one
describing source ``b`` (the visible image) and one describing the wanted fused image. ITI attends
to each prompt's token sequence from the frozen open_clip text tower; the embeddings are encoded
once, cached, and stored in the checkpoint, so predict needs no CLIP weights.

Losses, per sample by what it has (a batch mixes tasks; the total is the mean over the batch):

- with a target (``gt``: multi-focus, supervised multi-exposure, restoration): fidelity to it,
  ``fidelity_l1 |f - gt| + fidelity_ssim (1 - SSIM) + fidelity_gradient |grad f - grad gt|``;
- without (infrared-visible, medical, NIR, unsupervised multi-exposure): ``intensity`` (L1 to both
  sources, weighted per sample by their gradient energy, or per pixel by well-exposedness for
  multi-exposure pairs), ``gradient`` (L1 of the Sobel magnitude to the per-pixel maximum of the
  sources') and ``ssim`` (1 - SSIM to each source, weighted by gradient energy).

A restoration sample is fused with itself (``b = a``) and trained toward its clean target.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from datamodules.schema import TASK_IDS, TASKS, second_source
from lightning_modules.fusion import FusionModule, host_metadata
from lightning_modules.losses import (
    GradientEnergy,
    energy_weights,
    exposure_weights,
    intensity_loss,
    masked_total,
    text_guided_terms,
)
from lightning_modules.networks.cmifusion import CMIFusionNet
from lightning_modules.prompts import PromptTable
from lightning_modules.text import (
    PromptCacheCheckpoints,
    PromptEmbeddings,
    PromptEncoder,
    TextEncoderConfig,
    save_tower_configs,
)

MEIF = TASK_IDS["meif"]


class CMIFusionModule(PromptCacheCheckpoints, FusionModule):
    """CMI-Fusion: DAFE per source, ITI with modality and fusion prompts, conv decoder.

    Args:
        channels: DAFE feature width (also ITI's modality-stage token width).
        fusion_dim: ITI's fusion-stage token width and the decoder's residual width.
        heads: Attention heads of every ITI block (must divide ``channels`` and ``fusion_dim``).
        mlp_ratio: MLP hidden width of every ITI block relative to its token width.
        fusion_depth: ITI blocks attending to the fusion prompt.
        decoder_residual_blocks: Residual blocks at the start of the decoder.
        decoder_channels: Widths of the decoder's narrowing 3x3 convolutions.
        attention_reduction: Bottleneck ratio of DAFE's channel attention.
        spatial_kernel: Kernel side of DAFE's spatial-attention gate.
        text_encoder: The frozen open_clip text tower and where its weights come from.
        prompt_table: The prompt table YAML (default ``recipes/configs/prompts.yaml``); its
            ``modalities`` section gives the three prompts of every task.
        intensity_weight: Weight of the unsupervised intensity term.
        gradient_weight: Weight of the unsupervised gradient term.
        ssim_weight: Weight of the unsupervised energy-weighted (1 - SSIM) to the sources.
        fidelity_l1_weight: Weight of the L1 distance to the target.
        fidelity_ssim_weight: Weight of 1 - SSIM to the target.
        fidelity_gradient_weight: Weight of the L1 distance of Sobel magnitudes to the target's.
        exposure_sigma: Width of the well-exposedness curve for unsupervised multi-exposure samples.
        energy_scales: Pyramid levels of the image-gradient energy that weights the sources.
        inference_chunk_pixels: Pixels per horizontal strip of the interaction and the decoder
            outside training (bounds memory on large images; results do not depend on it). Not
            saved in checkpoints.
        **kwargs: Optimisation, validation and predict settings of :class:`FusionModule`.
    """

    # the chunk size only acts at inference: a command-line value must win over the checkpoint's
    predict_time_arguments = (*FusionModule.predict_time_arguments, "inference_chunk_pixels")

    def __init__(
        self,
        channels: int = 64,
        fusion_dim: int = 512,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        fusion_depth: int = 2,
        decoder_residual_blocks: int = 2,
        decoder_channels: tuple[int, ...] = (256, 128, 64),
        attention_reduction: int = 8,
        spatial_kernel: int = 5,
        text_encoder: TextEncoderConfig | None = None,
        prompt_table: str | None = None,
        intensity_weight: float = 1.0,
        gradient_weight: float = 1.0,
        ssim_weight: float = 0.5,
        fidelity_l1_weight: float = 1.0,
        fidelity_ssim_weight: float = 0.5,
        fidelity_gradient_weight: float = 1.0,
        exposure_sigma: float = 0.2,
        energy_scales: int = 3,
        inference_chunk_pixels: int = 65536,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_training_hyperparameters(ignore=("text_encoder",))
        (text_tower,) = save_tower_configs(self.hparams, text_encoder=text_encoder)
        self.text_encoder = PromptEncoder(text_tower)
        self.prompt_table = PromptTable.from_yaml(prompt_table)
        self.net = CMIFusionNet(
            channels,
            fusion_dim,
            self.text_encoder.token_dim,
            heads,
            mlp_ratio,
            fusion_depth,
            decoder_residual_blocks,
            tuple(decoder_channels),
            attention_reduction,
            spatial_kernel,
        )
        self.inference_chunk_pixels = inference_chunk_pixels
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

    # --------------------------------------------------------------------------------- prompts
    def check_pretrained_weights(self, stage: str) -> None:
        if stage == "fit":  # evaluation prompts come from the checkpoint's cache
            self.text_encoder.load_tower()

    def setup(self, stage: str) -> None:
        if stage == "fit":
            # Fail before the first step when no text weights are at hand, and cache every task's
            # prompts, so the checkpoint fuses every task without CLIP weights.
            self.text_encoder.load_tower()
            self.text_encoder.encode([p for task in TASKS for p in self.prompt_table.modality_prompts(task)])

    def prompt_embeddings(self, task: Tensor) -> tuple[PromptEmbeddings, PromptEmbeddings, PromptEmbeddings]:
        """Embeddings of the source-a, source-b and fused-image prompts of each sample's task."""
        per_sample = [self.prompt_table.modality_prompts(TASKS[index]) for index in task.tolist()]
        return tuple(self.text_encoder.encode(list(prompts), task.device) for prompts in zip(*per_sample))

    # ------------------------------------------------------------------------------- inference
    @property
    def size_multiple(self) -> int:
        return CMIFusionNet.size_multiple

    @property
    def whole_image_statistics(self) -> bool:
        """DAFE's channel attention pools over the whole input, so a tile is fused with its own statistics."""
        return True

    def fuse(self, a: Tensor, b: Tensor, task: Tensor) -> Tensor:
        return self.net(a, b, *self.prompt_embeddings(task), chunk_pixels=self.inference_chunk_pixels)

    # -------------------------------------------------------------------------------- training
    def training_losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        a, b, task, has_gt = batch["a"], second_source(batch), batch["task"], batch["has_gt"]
        fused = self.fuse(a, b, task)
        # losses in float32 under mixed precision: SSIM variances (E[x^2] - E[x]^2) cancel in bfloat16
        with torch.autocast(a.device.type, enabled=False):
            return self.loss_terms(fused.float(), a, b, batch["gt"], task, has_gt, host_metadata(batch))

    def loss_terms(
        self, fused: Tensor, a: Tensor, b: Tensor, gt: Tensor, task: Tensor, has_gt: Tensor, host: dict[str, list]
    ) -> dict[str, Tensor]:
        """Every sample's loss terms, their weighted total (``loss``) and per-task means to log."""
        energy = energy_weights(self.energy(a), self.energy(b))
        is_exposure = (task == MEIF)[:, None, None, None]
        exposure = exposure_weights([a, b], self.exposure_sigma)
        intensity_weights = torch.where(is_exposure, exposure, energy[:, :, None, None])
        intensity = intensity_loss(fused, [a, b], intensity_weights)
        fusion, fidelity = text_guided_terms(fused, a, b, gt, intensity, energy)
        return masked_total(fusion, fidelity, self.loss_weights, has_gt, task, host)
