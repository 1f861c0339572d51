"""The GIFNet LightningModule: trains :class:`~lightning_modules.networks.gifnet.GIFNet` on mixed-task batches.

The network, its published sizes and where it departs from the public implementation are described in
:mod:`lightning_modules.networks.gifnet`; the losses per task in :class:`GIFNetModule`.

Which branch fuses a task, and why it is the branch that task trains: GIFNet has two task branches
(IVIF, MFIF), and for each sample one of them is primary (its output is the fused image) while the
other helps through the cross-fusion gate. The published model fuses every task through the MFIF
branch at inference. A branch only learns to fuse a task when that task's loss is computed on its
output, so here each sample is trained through the very branch that fuses its task at inference
(``inference_branch``): with the default ``mfif`` every task trains the MFIF branch as primary, the
path that validation, test and predict evaluate, and the IVIF branch learns as its helper (the loss
reaches it through the gate and the shared queries, as in the published training). Training a
task through one branch and evaluating it through the other would evaluate a path that task never
trained; ``per_task`` keeps GIFNet's split (infrared-visible-like tasks through the IVIF branch,
see ``ivif_branch_tasks``), in training and inference alike. ``mfif`` stays the default because
it is the published model's inference path, which the imported official weights reproduce.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import torch
from torch import Tensor

from datamodules.schema import TASKS, second_source, task_id
from lightning_modules.fusion import FusionModule, host_metadata
from lightning_modules.losses import (
    MS_SSIM_WEIGHTS,
    BackboneEnergy,
    GradientEnergy,
    energy_weights,
    exposure_weights,
    focus_weights,
    gradient_loss,
    intensity_loss,
    ms_ssim_loss,
    per_sample_mean,
    ssim_loss,
)
from lightning_modules.networks.gifnet import BRANCHES, IVIF_BRANCH, MFIF_BRANCH, GIFNet
from lightning_modules.networks.layers import true_indices

NETWORK_ARGUMENTS: tuple[str, ...] = tuple(
    name for name in inspect.signature(GIFNet).parameters if name != "source_channels"
)
"""The :class:`GIFNet` sizes that :class:`GIFNetModule` takes as its own arguments (training is on luminance)."""

MULTI_EXPOSURE, MULTI_FOCUS = task_id("meif"), task_id("mfif")

INFERENCE_BRANCHES: tuple[str, ...] = ("mfif", "ivif", "per_task")
"""Values of ``inference_branch``: which branch fuses (and so trains) each task."""


class GIFNetModule(FusionModule):
    """Trains :class:`GIFNet` on mixed-task batches, one optimizer step per batch.

    Which branch a sample trains is the branch that fuses its task at inference (``inference_branch``;
    why, in the module docstring); the other branch is its helper (see
    :class:`~lightning_modules.networks.gifnet.CrossGatedBranches`). Losses, each on its own samples
    (a batch mixes tasks):

    - Samples with a target (``gt``: multi-focus, supervised multi-exposure, restoration):
      fidelity of the fused image to it, ``l1 + ssim + gradient`` (logged ``<task>/fidelity_*``).
    - Samples without one (infrared-visible, medical, NIR, unsupervised multi-exposure, real
      multi-focus pairs): ``intensity``, the weighted squared error to both sources, whose optimum is
      their weighted blend (:func:`~lightning_modules.losses.intensity_loss`), and ``gradient`` (L1 of
      the Sobel magnitude to the per-pixel maximum of the sources'). The weights: the sources' feature
      energy per sample (offline image-gradient energy, or a CNN backbone from a local weights file);
      per-pixel well-exposedness for multi-exposure pairs, since which source is right changes across
      the image; for multi-focus pairs the source in focus at each pixel
      (:func:`~lightning_modules.losses.focus_weights`), for both terms, so the optimum is the
      all-in-focus composite.
    - Every sample with a second source or a target: the reconstruction decoder rebuilds the second
      source (for restoration samples, whose second source is the degraded input itself, the clean
      target): ``recon/l1 + recon/ms_ssim`` (1 - MS-SSIM).

    The total is the weighted sum of every term over all samples, divided by the batch size, so each
    sample counts equally whatever its task. Logged terms are means over the samples they apply to.
    Every parameter enters the total at weight zero too (see :meth:`FusionModule.with_every_parameter`):
    a branch block that no sample of a batch runs still takes part in plain DDP's gradient reduction.

    Args:
        encoder_growth: Output channels of each dense encoder layer.
        encoder_layers: Dense encoder layers (shared features: 2 + layers x growth channels).
        reconstruction_channels: Hidden widths of the reconstruction decoder.
        heads: Attention heads in the task branches.
        window_size: Side of the square attention window.
        branch_depth: Attention blocks per task branch (odd ones shifted by half a window).
        mlp_ratio: MLP hidden width relative to the feature channels.
        value_kernel: Kernel of the depthwise conv on the attention values.
        position_hidden: Hidden width of the relative position bias MLP.
        gate_init: Initial value of the cross-fusion gating scalars.
        branch_downsample: Run the task branches at 1/branch_downsample resolution (1 as
            published; 2 or 4 for speed).
        decoder_pointwise_channels: Widths of the global decoder's 1x1 convs.
        decoder_channels: Hidden widths of the global decoder's 3x3 convs.
        inference_chunk_pixels: Pixels per horizontal strip at inference (bounds memory on large
            images and keeps them fast; results do not depend on it).
        norm: Attention-block normalisation: ``pixel`` (LayerNorm per pixel; tiles fuse like the
            whole image) or ``image`` (the published revised LayerNorm over each image, which the
            published weights need: ``python -m recipes.gifnet import-official``; predict then
            warns when it fuses in tiles, since tiles change the result).
        ivif_branch_tasks: With ``inference_branch: per_task``, the tasks that train and fuse
            through the IVIF branch; the rest go through the MFIF branch.
        inference_branch: The branch that fuses each task, at validation, test and predict, and
            that each task therefore trains: ``mfif`` for every task (the published model's
            inference path), ``ivif`` for every task, or ``per_task`` (as ``ivif_branch_tasks`` says).
            It changes the function computed, so it is saved in checkpoints; a command-line value
            given with ``--ckpt_path`` overrides the saved one, with a warning.
        intensity_weight: Weight of the unsupervised intensity term.
        gradient_weight: Weight of the unsupervised gradient term.
        fidelity_l1_weight: Weight of the L1 distance to the target.
        fidelity_ssim_weight: Weight of 1 - SSIM to the target.
        fidelity_gradient_weight: Weight of the L1 distance of Sobel magnitudes to the target's.
        reconstruction_l1_weight: Weight of the reconstruction's L1 distance.
        reconstruction_ms_ssim_weight: Weight of the reconstruction's 1 - MS-SSIM.
        ms_ssim_scales: Scales of MS-SSIM (at most 5; the standard exponents of the finest ones,
            renormalised); the training crop side must exceed ``5 * 2 ** (scales - 1)`` pixels.
        exposure_sigma: Width of the well-exposedness curve for unsupervised multi-exposure samples.
        energy_scales: Pyramid levels of the offline image-gradient energy.
        energy_backbone_weights: Local state_dict file of an ImageNet CNN whose feature energy weights
            the sources instead (``None``: the offline image-gradient energy). A missing file stops
            ``fit`` at start with instructions; the CNN is never part of the checkpoint, and
            validate, test and predict do not need the file.
        energy_backbone: Architecture of that CNN: ``densenet121`` (as GIFNet) or ``resnet18``.
        **kwargs: Optimisation, validation and predict settings of :class:`FusionModule`.
    """

    # The strip size only acts at inference and never changes a result: a command-line value must win
    # over the checkpoint's (see FusionModule.predict_time_arguments).
    predict_time_arguments = (*FusionModule.predict_time_arguments, "inference_chunk_pixels")

    def __init__(
        self,
        encoder_growth: int = 32,
        encoder_layers: int = 3,
        reconstruction_channels: tuple[int, ...] = (64, 32, 16),
        heads: int = 2,
        window_size: int = 8,
        branch_depth: int = 2,
        mlp_ratio: float = 2.0,
        value_kernel: int = 5,
        position_hidden: int = 256,
        gate_init: float = 0.5,
        branch_downsample: int = 1,
        decoder_pointwise_channels: tuple[int, ...] = (98, 128),
        decoder_channels: tuple[int, ...] = (64, 32, 16),
        inference_chunk_pixels: int = 40960,
        norm: Literal["pixel", "image"] = "pixel",
        ivif_branch_tasks: tuple[str, ...] = ("ivif", "meif", "med", "nir"),
        inference_branch: Literal["mfif", "ivif", "per_task"] = "mfif",
        intensity_weight: float = 1.0,
        gradient_weight: float = 1.0,
        fidelity_l1_weight: float = 1.0,
        fidelity_ssim_weight: float = 0.5,
        fidelity_gradient_weight: float = 1.0,
        reconstruction_l1_weight: float = 1.0,
        reconstruction_ms_ssim_weight: float = 1.0,
        ms_ssim_scales: int = 5,
        exposure_sigma: float = 0.2,
        energy_scales: int = 3,
        energy_backbone_weights: str | None = None,
        energy_backbone: Literal["densenet121", "resnet18"] = "densenet121",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_training_hyperparameters()
        # inference_chunk_pixels is a predict-time argument, so it is not among the saved hparams
        network_arguments = {**self.hparams, "inference_chunk_pixels": inference_chunk_pixels}
        self.network = GIFNet(**{name: network_arguments[name] for name in NETWORK_ARGUMENTS})
        for task_name in ivif_branch_tasks:
            task_id(task_name)  # an unknown name fails here, listing the known ones
        if inference_branch not in INFERENCE_BRANCHES:
            raise ValueError(
                f"inference_branch must be one of {', '.join(INFERENCE_BRANCHES)}, got {inference_branch!r}"
            )
        self.inference_branch = inference_branch
        task_branch = [
            IVIF_BRANCH
            if inference_branch == "ivif" or (inference_branch == "per_task" and name in ivif_branch_tasks)
            else MFIF_BRANCH
            for name in TASKS
        ]
        # the branch of each task id, in training and at inference alike; on the host too, for grouping
        self.register_buffer("task_branch", torch.tensor(task_branch), persistent=False)
        self.task_branches = tuple(task_branch)
        # one branch for every task (``mfif``, ``ivif``): a batch needs no grouping by task at all
        self.only_branch = task_branch[0] if len(set(task_branch)) == 1 else None
        if not 1 <= ms_ssim_scales <= len(MS_SSIM_WEIGHTS):
            raise ValueError(f"ms_ssim_scales must be 1..{len(MS_SSIM_WEIGHTS)}, got {ms_ssim_scales}")
        exponents = MS_SSIM_WEIGHTS[:ms_ssim_scales]
        self.ms_ssim_weights = tuple(weight / sum(exponents) for weight in exponents)
        self.energy = (
            GradientEnergy(energy_scales)
            if energy_backbone_weights is None
            else BackboneEnergy(energy_backbone_weights, energy_backbone)
        )
        self.loss_weights = {
            "intensity": intensity_weight,
            "gradient": gradient_weight,
            "fidelity_l1": fidelity_l1_weight,
            "fidelity_ssim": fidelity_ssim_weight,
            "fidelity_gradient": fidelity_gradient_weight,
            "l1": reconstruction_l1_weight,
            "ms_ssim": reconstruction_ms_ssim_weight,
        }
        self.exposure_sigma = exposure_sigma

    @property
    def whole_image_statistics(self) -> bool:
        return self.network.norm == "image"

    @property
    def size_multiple(self) -> int:
        return self.network.size_multiple

    def setup(self, stage: str) -> None:
        if stage == "fit" and isinstance(self.energy, BackboneEnergy):
            self.energy.load_backbone()  # a missing weights file stops the run now, not at the first batch

    def fuse(self, a: Tensor, b: Tensor, task: Tensor) -> Tensor:
        return self.network(a, b, self.task_branch[task] if self.only_branch is None else self.only_branch)

    def training_losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        a, b = batch["a"], second_source(batch)
        features = self.network.encode(a, b)
        if self.only_branch is None:
            branches = [self.task_branches[index] for index in host_metadata(batch)["task"]]
            sizes = [branches.count(index) for index in range(len(BRANCHES))]
            fused = self.network.fuse_features(features, self.task_branch[batch["task"]], sizes)
        else:
            fused = self.network.fuse_features(features, self.only_branch)
        reconstruction = self.network.reconstruct(features)
        # losses in float32 under mixed precision: SSIM variances (E[x^2] - E[x]^2) cancel in bfloat16
        with torch.autocast(a.device.type, enabled=False):
            losses = self._weighted_terms(batch, b, fused.float(), reconstruction.float())
        losses["loss"] = self.with_every_parameter(losses["loss"])
        return losses

    def _weighted_terms(
        self, batch: dict[str, Any], b: Tensor, fused: Tensor, reconstruction: Tensor
    ) -> dict[str, Tensor]:
        """The loss terms of every sample, their weighted total and the per-task means to log.

        Which samples each term applies to is decided from the host's copy of the batch metadata
        (:func:`~lightning_modules.fusion.host_metadata`), so no device value is read back.
        """
        a, task, has_b, has_gt = batch["a"], batch["task"], batch["has_b"], batch["has_gt"]
        host = host_metadata(batch)
        samples = list(zip(host["task"], host["has_b"], host["has_gt"], strict=True))
        # name, per-sample values, their task ids on the device and on the host (None: logged over all samples)
        terms: list[tuple[str, Tensor, Tensor, list[int] | None]] = []
        supervised_tasks = [index for index, _, with_gt in samples if with_gt]
        if supervised_tasks:
            supervised = true_indices(has_gt, len(supervised_tasks))
            fused_s, gt_s, task_s = fused[supervised], batch["gt"][supervised], task[supervised]
            terms += [
                ("fidelity_l1", per_sample_mean((fused_s - gt_s).abs()), task_s, supervised_tasks),
                ("fidelity_ssim", ssim_loss(fused_s, gt_s), task_s, supervised_tasks),
                ("fidelity_gradient", gradient_loss(fused_s, [gt_s]), task_s, supervised_tasks),
            ]
        unsupervised_tasks = [index for index, _, with_gt in samples if not with_gt]
        if unsupervised_tasks:
            unsupervised = true_indices(~has_gt, len(unsupervised_tasks))
            fused_u, a_u, b_u, task_u = fused[unsupervised], a[unsupervised], b[unsupervised], task[unsupervised]
            weights = self._source_weights(a_u, b_u, task_u, unsupervised_tasks)
            terms += [
                ("intensity", intensity_loss(fused_u, [a_u, b_u], weights), task_u, unsupervised_tasks),
                (
                    "gradient",
                    self._gradient_terms(fused_u, a_u, b_u, task_u, unsupervised_tasks),
                    task_u,
                    unsupervised_tasks,
                ),
            ]
        # the second source, or for a restoration sample (its b is its a) the clean target
        target = torch.where(has_b[:, None, None, None], batch["b"], batch["gt"])
        rebuilt_count = sum(with_b or with_gt for _, with_b, with_gt in samples)
        if rebuilt_count:
            rebuilt = true_indices(has_b | has_gt, rebuilt_count)
            reconstruction_r, target_r = reconstruction[rebuilt], target[rebuilt]
            terms += [
                ("l1", per_sample_mean((reconstruction_r - target_r).abs()), task[rebuilt], None),
                ("ms_ssim", ms_ssim_loss(reconstruction_r, target_r, self.ms_ssim_weights), task[rebuilt], None),
            ]

        total = fused.new_zeros(())
        logged: dict[str, Tensor] = {}
        for name, values, value_tasks, host_tasks in terms:
            total = total + self.loss_weights[name] * values.sum()
            if host_tasks is None:
                logged[f"recon/{name}"] = values.mean()
                continue
            for index in sorted(set(host_tasks)):
                members = true_indices(value_tasks == index, host_tasks.count(index))
                logged[f"{TASKS[index]}/{name}"] = values[members].mean()
        logged["loss"] = total / a.shape[0]
        return logged

    def _source_weights(self, a: Tensor, b: Tensor, task: Tensor, host_tasks: list[int]) -> Tensor:
        """Intensity weights of both sources, unsupervised samples: (B, 2, 1, 1), or (B, 2, H, W) with per-pixel ones.

        Per sample from the sources' energy; per pixel for multi-exposure (well-exposedness) and
        multi-focus pairs (the source in focus). ``host_tasks``: the samples' task ids on the host.
        """
        weights = energy_weights(self.energy(a), self.energy(b))[:, :, None, None]
        if MULTI_EXPOSURE in host_tasks:
            multi_exposure = (task == MULTI_EXPOSURE)[:, None, None, None]
            weights = torch.where(multi_exposure, exposure_weights([a, b], self.exposure_sigma), weights)
        if MULTI_FOCUS in host_tasks:
            weights = torch.where((task == MULTI_FOCUS)[:, None, None, None], focus_weights([a, b]), weights)
        return weights

    def _gradient_terms(self, fused: Tensor, a: Tensor, b: Tensor, task: Tensor, host_tasks: list[int]) -> Tensor:
        """Unsupervised gradient term: to the sources' strongest edge; for multi-focus pairs, to the edges in focus."""
        values = gradient_loss(fused, [a, b])
        if MULTI_FOCUS not in host_tasks:
            return values
        multi_focus = true_indices(task == MULTI_FOCUS, host_tasks.count(MULTI_FOCUS))
        a_f, b_f = a[multi_focus], b[multi_focus]
        in_focus = gradient_loss(fused[multi_focus], [a_f, b_f], focus_weights([a_f, b_f]))
        return values.index_copy(0, multi_focus, in_focus)
