"""LURE: degradation-aware fusion in a unified latent space, guided by text (the LightningModule).

The network is in :mod:`lightning_modules.networks.lure`; prompts come from :mod:`lightning_modules.text`.
The paper's code is not public; this is our design from its stated facts:

**Stage 1, the unified latent space.** Restoration pairs (degraded ``a``, clean ``gt``) of either
modality. The encoder E maps an image and its prompt to a latent; the decoder D maps a latent to an
image. For every pair

- unified loss: the mean squared error between E(degraded, prompt) and sg(E(clean, clean prompt));
  ``sg`` (stop-gradient) keeps the clean branch from being dragged toward the degraded one;
- restoration: D(E(degraded)) against the clean image, and reconstruction: D(E(clean)) against the
  clean image. Reconstruction is what trains the encoder on clean inputs (the unified loss cannot),
  so E keeps telling clean from degraded; without it E drifts on clean images, the decoder is asked
  to map two moving latents to one image, and training diverges (we saw it on dark images). Both
  are ``L1 + ssim_weight (1 - SSIM) + gradient_weight |grad|-L1`` (``lightning_modules.losses``);
- pseudo-degradation: clean images of the batch (restoration targets, fusion targets, undegraded
  fusion sources; all sources if a batch has none) are re-degraded on the fly with a random
  synthetic kind and severity (:mod:`datamodules.synthesis`), prompted from the
  prompt table accordingly, and take the same unified and restoration losses (weight
  ``pseudo_weight``). Its degradations are known exactly and cover every modality in the mixture,
  which steadies the alignment when real pairs are few or of one kind.

The encoder adds a fixed identity path (the pixel-unshuffled input into the first 4 latent
channels) that the decoder reads back, and the learned branches' last layers start at zero: the
network starts as the identity, so restoration begins at the quality of its input and only has to
learn the correction, which matters for mild degradations (JPEG, slight blur) on a short budget.

**Stage 2, fusion rules in that space.** The unified space is frozen: the encoder E (its
text-guided attention included) gets no gradient from any loss, and it sits in an optimiser
parameter group of its own whose learning rate is zero in stage 2, because a zero gradient alone
would still move it through AdamW's momentum and weight decay (see :meth:`configure_optimizers`).
Freezing keeps the alignment stage 1 learnt: fusion rules trained on latents that keep moving would
chase them, and restoration would drift with the fusion losses. Pairs (``has_b``): both sources are
encoded with the sample's prompt, the fusion rules (soft per-pixel selection plus a text-guided
residual) merge the two latents, D decodes. Losses: against ``gt`` where a pair has one (as
restoration); otherwise unsupervised, against the decoder's restorations of the two sources (so
degradations in the sources are not fusion targets): L1 to the per-pixel maximum (well-exposedness
weights for multi-exposure pairs) plus the gradient term to the strongest source gradient, weight
``fusion_weight``. Restoration samples in the mixture keep the restoration and reconstruction
losses, which now train the decoder alone (the unified loss is still computed and logged: it says
how far the frozen space keeps degraded latents from clean ones).

The stage follows the step (stage 1 for the first ``stage1_steps`` optimizer steps) unless
``stage`` fixes it, e.g. to fine-tune stage 2 from a stage-1 checkpoint.

**Prompts.** A sample's own prompt (shard metadata) is used with probability
``sample_prompt_rate`` in training, else one composed from the prompt table (random paraphrases);
evaluation uses the sample's own prompt when it has one, else the table's first paraphrases.
``predict_prompt`` replaces every prompt at predict time. The prompt embeddings are cached and
stored in the checkpoint, so predict needs no CLIP weights for prompts seen in training or in the
table's evaluation prompts.

**Randomness.** The training draws of this module (prompt choices and paraphrases, which clean
images become pseudo samples, their degradation kinds, severities and noise) come from generators
seeded at every training batch from the run's seed, the global rank, the global step and the
micro-batch within the step (gradient accumulation). So every rank draws differently (torch's
global generator is seeded alike on all ranks), and a resumed run draws exactly what the
uninterrupted run would have: the state is the step, which the checkpoint holds already.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from datamodules.schema import DEGRADATIONS, TASK_IDS, TASKS
from datamodules.synthesis import random_degradations
from lightning_modules.fusion import FusionModule
from lightning_modules.losses import (
    exposure_weights,
    gradient_loss,
    intensity_loss,
    per_sample_mean,
    ssim_loss,
)
from lightning_modules.networks.lure import LURENet, select_text
from lightning_modules.prompts import PromptTable
from lightning_modules.text import PromptCacheCheckpoints, PromptEncoder, TextEncoderConfig, save_tower_configs

RESTORE = TASK_IDS["restore"]
MEIF = TASK_IDS["meif"]
NO_DEGRADATION = [0.0] * len(DEGRADATIONS)


def unified_latent_error(latent: Tensor, target: Tensor) -> Tensor:
    """Per-sample mean squared error of ``latent`` to the (stop-gradient) ``target`` latent: (B,)."""
    return per_sample_mean((latent - target).pow(2))


class LUREModule(PromptCacheCheckpoints, FusionModule):
    """LURE: unified latent space from restoration pairs, fusion rules inside it, text-guided attention.

    Args:
        channels: Latent channels (the encoder's coarser levels use twice as many).
        attention_heads: Heads of every text-guided attention block.
        text_encoder: The frozen open_clip text tower and where its weights come from.
        prompt_table: The prompt table YAML (default ``recipes/configs/prompts.yaml``).
        sample_prompt_rate: Probability in training of using a sample's own prompt instead of one
            composed from the table (0: always the table; evaluation prefers the sample's own if > 0).
        predict_prompt: At predict time, this prompt for every image (``--model.predict_prompt``).
        stage: Fix the training stage (1: unified space, 2: fusion rules); ``None`` switches from
            1 to 2 after ``stage1_steps``.
        stage1_steps: Optimizer steps of stage 1 when ``stage`` is ``None``.
        unified_weight: Weight of the unified (latent alignment) loss.
        pseudo_weight: Weight of the pseudo-degradation task's losses.
        pseudo_fraction: Pseudo-degraded images per training batch, as a fraction of the batch size.
        fusion_weight: Weight of the stage-2 fusion loss.
        ssim_weight: Weight of (1 - SSIM) in the image losses.
        gradient_weight: Weight of the gradient L1 term in the image losses.
        **kwargs: The :class:`FusionModule` arguments (optimiser, validation metrics, predict tiling).
    """

    # --model.predict_prompt must win over the checkpoint (see FusionModule.predict_time_arguments)
    predict_time_arguments = (*FusionModule.predict_time_arguments, "predict_prompt")

    def __init__(
        self,
        channels: int = 32,
        attention_heads: int = 2,
        text_encoder: TextEncoderConfig | None = None,
        prompt_table: str | None = None,
        sample_prompt_rate: float = 0.5,
        predict_prompt: str | None = None,
        stage: Literal[1, 2] | None = None,
        stage1_steps: int = 2000,
        unified_weight: float = 1.0,
        pseudo_weight: float = 0.5,
        pseudo_fraction: float = 0.5,
        fusion_weight: float = 1.0,
        ssim_weight: float = 0.5,
        gradient_weight: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if stage not in (None, 1, 2):
            raise ValueError(f"stage must be 1, 2 or None (switch after stage1_steps), got {stage!r}")
        if not 0.0 <= sample_prompt_rate <= 1.0:
            raise ValueError(f"sample_prompt_rate must be in [0, 1], got {sample_prompt_rate}")
        self.save_training_hyperparameters(ignore=("text_encoder",))
        (text_tower,) = save_tower_configs(self.hparams, text_encoder=text_encoder)
        self.text_encoder = PromptEncoder(text_tower)
        self.prompt_table = PromptTable.from_yaml(prompt_table)
        self.net = LURENet(channels, self.text_encoder.token_dim, self.text_encoder.pooled_dim, attention_heads)
        self.sample_prompt_rate = sample_prompt_rate
        self.predict_prompt = predict_prompt
        self.stage = stage
        self.stage1_steps = stage1_steps
        self.unified_weight = unified_weight
        self.pseudo_weight = pseudo_weight
        self.pseudo_fraction = pseudo_fraction
        self.fusion_weight = fusion_weight
        self.ssim_weight = ssim_weight
        self.gradient_weight = gradient_weight
        self.clean_prompt = self.prompt_table.prompt("restore", NO_DEGRADATION)
        self._draw_seed = torch.initial_seed()  # after seed_everything: the run's seed, the same on every rank
        self._prompt_rng = random.Random(self._draw_seed)
        self._pseudo_generator = torch.Generator().manual_seed(self._draw_seed)
        self._active_prompts: list[str] | None = None

    # --------------------------------------------------------------------------------- prompts
    def check_pretrained_weights(self, stage: str) -> None:
        if stage == "fit":  # evaluation prompts come from the checkpoint's cache
            self.text_encoder.load_tower()

    def setup(self, stage: str) -> None:
        if stage == "fit":
            # Fail before the first step when no text weights are at hand, and put every evaluation
            # prompt into the cache, so the checkpoint can predict with them without CLIP weights.
            self.text_encoder.load_tower()
            self.text_encoder.encode(self.prompt_table.evaluation_prompts() + [self.clean_prompt])

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        # see "Randomness" in the module docstring
        # the micro-batch within the optimizer step, not batch_idx, which counts the epoch's batches
        # (and so depends on where epochs begin, not only on the step)
        micro_batch = batch_idx % self.trainer.accumulate_grad_batches
        words = [self._draw_seed, self.global_rank, self.global_step, micro_batch]
        seed = int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0])
        self._prompt_rng.seed(seed)
        self._pseudo_generator.manual_seed(seed)

    def sample_prompts(self, batch: dict[str, Any], training: bool) -> list[str]:
        """One prompt per sample: its own or one composed from the table (see the module docstring)."""
        prompts = []
        for own, task, severities in zip(batch["prompt"], batch["task"].tolist(), batch["degradation"].tolist()):
            if training:
                use_own = bool(own) and self._prompt_rng.random() < self.sample_prompt_rate
                prompts.append(own if use_own else self.prompt_table.prompt(TASKS[task], severities, self._prompt_rng))
            else:
                use_own = bool(own) and self.sample_prompt_rate > 0
                prompts.append(own if use_own else self.prompt_table.prompt(TASKS[task], severities))
        return prompts

    @contextlib.contextmanager
    def prompted(self, prompts: list[str]) -> Iterator[None]:
        """Within this block :meth:`fuse` and :meth:`fuse_full_resolution` use ``prompts`` (one per sample).

        Outside any block, ``fuse`` uses task-only prompts and ``fuse_full_resolution`` each sample's
        evaluation prompt.
        """
        previous, self._active_prompts = self._active_prompts, list(prompts)
        try:
            yield
        finally:
            self._active_prompts = previous

    # ------------------------------------------------------------------------------- inference
    @property
    def size_multiple(self) -> int:
        return LURENet.size_multiple

    def fuse(self, a: Tensor, b: Tensor, task: Tensor) -> Tensor:
        prompts = self._active_prompts
        if prompts is None:
            prompts = [self.prompt_table.prompt(TASKS[t], NO_DEGRADATION) for t in task.tolist()]
        return self.net(a, b, task != RESTORE, self.text_encoder.encode(prompts, a.device))

    def fuse_full_resolution(self, batch: dict[str, Any]) -> Tensor:
        """As the base, with each sample's evaluation prompt unless a :meth:`prompted` block sets them."""
        if self._active_prompts is not None:
            return super().fuse_full_resolution(batch)
        with self.prompted(self.sample_prompts(batch, training=False)):
            return super().fuse_full_resolution(batch)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        if not self.predict_prompt:
            return super().predict_step(batch, batch_idx)
        with self.prompted([self.predict_prompt] * batch["a"].shape[0]):
            return super().predict_step(batch, batch_idx)

    # -------------------------------------------------------------------------------- training
    def stage_at(self, step: int) -> int:
        """The training stage of optimizer step ``step``."""
        if self.stage is not None:
            return self.stage
        return 1 if step < self.stage1_steps else 2

    @property
    def current_stage(self) -> int:
        return self.stage_at(self.global_step)

    def configure_optimizers(self) -> dict[str, Any]:
        """The base optimiser and schedule, with the encoder (the unified space) in a group of its own.

        That group follows the base schedule in stage 1 and has a learning rate of zero in stage 2,
        which freezes the space under AdamW (no step, no momentum, no weight decay) and works the same
        under DDP and DeepSpeed, where every parameter still receives its (zero) gradient.
        """
        configured = super().configure_optimizers()
        optimizer = configured["optimizer"]
        schedule = configured["lr_scheduler"]["scheduler"].lr_lambdas[0]
        encoder = list(self.net.encoder.parameters())
        in_encoder = {id(parameter) for parameter in encoder}
        (group,) = optimizer.param_groups
        group["params"] = [parameter for parameter in group["params"] if id(parameter) not in in_encoder]
        optimizer.add_param_group({"params": encoder, "lr": group["initial_lr"]})

        def unified_space_schedule(step: int) -> float:
            return 0.0 if self.stage_at(step) == 2 else schedule(step)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [schedule, unified_space_schedule])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def image_loss(self, image: Tensor, target: Tensor) -> Tensor:
        """Per-sample L1 + SSIM + gradient fidelity of ``image`` to ``target``: (B,)."""
        l1 = per_sample_mean((image - target).abs())
        return l1 + self.ssim_weight * ssim_loss(image, target) + self.gradient_weight * gradient_loss(image, [target])

    def training_losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        stage = self.current_stage
        prompts = self.sample_prompts(batch, training=True)
        losses = self.restoration_losses(batch, prompts)
        if stage == 2:
            losses.update(self.fusion_losses(batch, prompts))
        # Every parameter joins the graph (with weight zero where this stage does not train it), so
        # DDP's gradient reduction finds all of them and a batch with nothing to learn still backpropagates.
        losses["loss"] = self.with_every_parameter(
            self.unified_weight * (losses["unified"] + self.pseudo_weight * losses["pseudo_unified"])
            + losses["restore"]
            + losses["reconstruct"]
            + self.pseudo_weight * losses["pseudo_restore"]
            + self.fusion_weight * losses.get("fusion", torch.zeros((), device=self.device))
        )
        losses["stage"] = torch.tensor(float(stage))
        return losses

    def pseudo_clean_pool(self, batch: dict[str, Any]) -> Tensor:
        """Clean images of the batch to re-degrade: targets and undegraded fusion sources (else all sources)."""
        has_b, clean_sources = batch["has_b"], batch["degradation"].sum(dim=1) == 0
        pool = [batch["gt"][batch["has_gt"]], batch["a"][clean_sources & has_b], batch["b"][clean_sources & has_b]]
        clean = torch.cat(pool)
        if clean.shape[0] == 0:
            clean = torch.cat([batch["a"], batch["b"][has_b]])
        return clean

    def restoration_losses(self, batch: dict[str, Any], prompts: list[str]) -> dict[str, Tensor]:
        """Unified, restoration and reconstruction losses on real pairs plus the pseudo-degradation task."""
        is_pair = (batch["task"] == RESTORE) & batch["has_gt"]
        real = is_pair.nonzero().squeeze(1)
        pool = self.pseudo_clean_pool(batch)
        count = min(pool.shape[0], math.ceil(self.pseudo_fraction * batch["a"].shape[0]))
        pseudo_clean = pool[torch.randperm(pool.shape[0], generator=self._pseudo_generator)[:count].to(pool.device)]
        pseudo_degraded, pseudo_severities = random_degradations(pseudo_clean, self._pseudo_generator)
        pseudo_prompts = [self.prompt_table.prompt("restore", s, self._prompt_rng) for s in pseudo_severities.tolist()]

        degraded = torch.cat([batch["a"][real], pseudo_degraded])
        clean = torch.cat([batch["gt"][real], pseudo_clean])
        degraded_prompts = [prompts[i] for i in real.tolist()] + pseudo_prompts
        zero = torch.zeros((), device=self.device)
        if degraded.shape[0] == 0:  # no restoration pair in the batch and no pseudo task asked for
            return dict.fromkeys(("unified", "restore", "pseudo_unified", "pseudo_restore", "reconstruct"), zero)
        # One encoder pass over both views; the clean prompt says nothing is wrong. Stage 2 freezes the encoder.
        text = self.text_encoder.encode(degraded_prompts + [self.clean_prompt] * clean.shape[0], self.device)
        with torch.no_grad() if self.current_stage == 2 else contextlib.nullcontext():
            latent_degraded, latent_clean = self.net.encode(torch.cat([degraded, clean]), text).chunk(2)
        decoded_degraded, decoded_clean = self.net.decode(torch.cat([latent_degraded, latent_clean])).chunk(2)
        unified = unified_latent_error(latent_degraded, latent_clean.detach())
        restored = self.image_loss(decoded_degraded, clean)
        # reconstruction trains E (stage 1) and D on clean images, so E keeps telling clean from degraded
        reconstructed = self.image_loss(decoded_clean, clean)
        real_count = real.shape[0]

        def mean(values: Tensor) -> Tensor:
            return values.mean() if values.numel() else zero

        return {
            "unified": mean(unified[:real_count]),
            "restore": mean(restored[:real_count]),
            "pseudo_unified": mean(unified[real_count:]),
            "pseudo_restore": mean(restored[real_count:]),
            "reconstruct": mean(reconstructed),
        }

    def fusion_losses(self, batch: dict[str, Any], prompts: list[str]) -> dict[str, Tensor]:
        """Stage 2: fusion rules on the pairs of the batch, in the (fixed) unified space."""
        pairs = ((batch["task"] != RESTORE) & batch["has_b"]).nonzero().squeeze(1)
        if pairs.numel() == 0:
            return {"fusion": torch.zeros((), device=self.device)}
        text = self.text_encoder.encode([prompts[i] for i in pairs.tolist()], self.device)
        a, b = batch["a"][pairs], batch["b"][pairs]
        with torch.no_grad():
            both = torch.arange(len(pairs), device=self.device).repeat(2)
            latents = self.net.encode(torch.cat([a, b]), select_text(text, both))
            restored_a, restored_b = self.net.decode(latents).clamp(0.0, 1.0).chunk(2)
        latent_a, latent_b = latents.chunk(2)
        fused = self.net.decode(self.net.fuse_latents(latent_a, latent_b, text))
        has_gt = batch["has_gt"][pairs]
        supervised = self.image_loss(fused, batch["gt"][pairs])
        sources = [restored_a, restored_b]
        # multi-exposure pairs without a target: well-exposedness weights, not the brighter source
        is_exposure = batch["task"][pairs] == MEIF
        intensity = torch.where(
            is_exposure, intensity_loss(fused, sources, exposure_weights(sources)), intensity_loss(fused, sources)
        )
        unsupervised = intensity + self.gradient_weight * gradient_loss(fused, sources)
        return {"fusion": torch.where(has_gt, supervised, unsupervised).mean()}
