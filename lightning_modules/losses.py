"""Loss terms for fusion training, each reduced per sample to a (B,) tensor.

Batches mix tasks, and each task's loss applies to its own samples only, so every term here
returns one value per sample; the model averages them over the samples they apply to. Images
are (B, 1, H, W) in [0, 1].

- :func:`intensity_loss`: the fused image against its sources: L1 to their per-pixel maximum, or a
  weighted squared error whose optimum is the weighted blend of the sources (weights per sample or
  per pixel). :func:`gradient_loss`: L1 of the fused image's Sobel gradient magnitude to the
  sources' (their maximum, or weighted).
- :func:`ssim_loss` (SSIM with an 11-px Gaussian window, as kornia's) and :func:`ms_ssim_loss`: a correct
  multi-scale SSIM (Wang, Simoncelli and Bovik 2003), which kornia does not have (its ``MS_SSIMLoss`` is the
  single-resolution, several-sigma variant with an L1 term).
- Source weights: :class:`GradientEnergy` (offline default: gradient energy of the images
  themselves over a pyramid), :class:`BackboneEnergy` (gradient energy of the features of an
  ImageNet CNN loaded from a local weights file), :func:`energy_weights`,
  :func:`exposure_weights` (per-pixel well-exposedness for multi-exposure fusion) and
  :func:`focus_weights` (per pixel, the sharper source of a multi-focus pair).
- :func:`text_guided_terms` and :func:`masked_total`: UP-Fusion's and CMI-Fusion's loss from the
  terms above, every term for every sample, each sample keeping the terms of its kind of pair.

The filters (Sobel, Gaussian, Laplacian, box) are written here rather than taken from kornia, whose
versions build each kernel from Python numbers on every call (a blocking host-to-device copy on a GPU)
and read tensor values back on the CPU: built from ``arange`` on the image's device, and with pooling
for box sums, they keep a training step free of host-device synchronisation. Results equal kornia's
within float rounding (tests/test_losses.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.schema import TASKS
from lightning_modules.networks.layers import true_indices

MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
"""Exponents of the five scales of MS-SSIM, from Wang et al. 2003 (finest scale first)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def per_sample_mean(values: Tensor) -> Tensor:
    """Mean over every dimension but the first: (B, ...) -> (B,)."""
    return values.flatten(1).mean(dim=1)


def filter_planes(image: Tensor, kernels: Tensor, padding: tuple[int, ...] = (), mode: str = "reflect") -> Tensor:
    """Every channel of every sample of (B, C, H, W) filtered alone by each of ``kernels`` (K, kh, kw): (B, C, K, h, w).

    ``padding`` (left, right, top, bottom) is added first with ``mode``. One depthwise convolution with the
    B x C planes as its channels: oneDNN runs it several times faster, forward and backward, than a one-channel
    convolution over a batch of B x C planes.
    """
    planes = image.reshape(1, -1, *image.shape[-2:])
    if padding:
        planes = F.pad(planes, padding, mode=mode)
    count = planes.shape[1]
    filtered = F.conv2d(planes, kernels[:, None].repeat(count, 1, 1, 1), groups=count)
    return filtered.view(*image.shape[:2], kernels.shape[0], *filtered.shape[-2:])


def sobel_magnitude(image: Tensor) -> Tensor:
    """Per-pixel Sobel gradient magnitude ``sqrt(gx^2 + gy^2 + 1e-6)`` per channel, same shape as ``image``.

    Kernels normalised to an L1 norm of 1, border replicated (kornia's ``sobel``).
    """
    taps = torch.arange(-1, 2, device=image.device, dtype=image.dtype)  # -1 0 1; smoothing 2 - |taps|: 1 2 1
    along_x = (2 - taps.abs())[:, None] * taps / 8
    gx, gy = filter_planes(image, torch.stack([along_x, along_x.T]), (1, 1, 1, 1), "replicate").unbind(2)
    return torch.sqrt(gx * gx + gy * gy + 1e-6)


def gaussian_blur(image: Tensor, window_size: int = 11, sigma: float = 1.5) -> Tensor:
    """Each channel blurred by a normalised ``window_size``-tap Gaussian (odd), separably, border reflected."""
    offsets = torch.arange(window_size, device=image.device, dtype=image.dtype) - window_size // 2
    taps = torch.exp(-offsets.square() / (2 * sigma**2))
    taps = taps / taps.sum()
    radius = window_size // 2
    rows = filter_planes(image, taps.view(1, 1, -1), (radius, radius, radius, radius)).squeeze(2)
    return filter_planes(rows, taps.view(1, -1, 1)).squeeze(2)


def box_mean(image: Tensor, window: int) -> Tensor:
    """Each channel's mean over a ``window`` x ``window`` square (odd) around every pixel, border reflected."""
    radius = window // 2
    return F.avg_pool2d(F.pad(image, (radius, radius, radius, radius), mode="reflect"), window, stride=1)


def _stack_sources(sources: Sequence[Tensor]) -> Tensor:
    if not sources:
        raise ValueError("at least one source image is needed")
    return torch.stack(list(sources), dim=1)  # (B, S, C, H, W)


def _weighted_distance(value: Tensor, references: Tensor, weights: Tensor | None, squared: bool) -> Tensor:
    """L1 of ``value`` (B, C, H, W) to the max of ``references`` (B, S, C, H, W), or the weighted distance to each."""
    if weights is None:
        return per_sample_mean((value - references.amax(dim=1)).abs())
    sources = references.shape[1]
    if weights.shape[:2] != (value.shape[0], sources) or weights.dim() not in (2, 4):
        raise ValueError(
            f"weights must be (B, S) or (B, S, H, W) with B={value.shape[0]}, S={sources}; got {tuple(weights.shape)}"
        )
    if weights.dim() == 2:
        weights = weights[:, :, None, None]
    weights = weights.unsqueeze(2)  # (B, S, 1, H|1, W|1): broadcast over channels
    differences = value.unsqueeze(1) - references
    distances = differences.square() if squared else differences.abs()
    return per_sample_mean((weights * distances).sum(dim=1))


def intensity_loss(fused: Tensor, sources: Sequence[Tensor], weights: Tensor | None = None) -> Tensor:
    """The fused image against its sources, per sample; its optimum is the per-pixel maximum or the weighted blend.

    - ``weights=None``: L1 to the per-pixel maximum of the sources (optimum: that maximum).
    - With weights ``w``: ``sum_s w_s (f - x_s)^2``, minimised pixel by pixel by the weighted blend
      ``f = sum_s w_s x_s / sum_s w_s``, as in GIFNet's published loss. (The L1 form
      ``sum_s w_s |f - x_s|`` would be minimised by the weighted median: a copy of the source with
      the larger weight, over the whole image when the weights are per sample.)

    Args:
        fused: (B, C, H, W).
        sources: S images shaped like ``fused``.
        weights: ``None``, a (B, S) tensor weighting each source per sample, or a (B, S, H, W) tensor
            weighting it per pixel (weights should sum to 1 over S).

    Returns:
        (B,) loss.
    """
    return _weighted_distance(fused, _stack_sources(sources), weights, squared=True)


def gradient_loss(fused: Tensor, sources: Sequence[Tensor], weights: Tensor | None = None) -> Tensor:
    """L1 of the fused image's Sobel gradient magnitude to the sources', per sample.

    Args:
        fused: (B, C, H, W).
        sources: S images shaped like ``fused``; one source (a target image) makes this a plain
            gradient-fidelity term.
        weights: ``None`` compares with the per-pixel maximum of the sources' gradient magnitudes
            (keeps the strongest edge of either); (B, S) or (B, S, H, W) weights each source (with
            0/1 weights per pixel, such as :func:`focus_weights`, the chosen source's edges).

    Returns:
        (B,) loss.
    """
    gradients = sobel_magnitude(torch.cat([fused, *sources], dim=0)).split(fused.shape[0])
    return _weighted_distance(gradients[0], torch.stack(gradients[1:], dim=1), weights, squared=False)


def ssim_maps(
    image: Tensor, target: Tensor, window_size: int = 11, sigma: float = 1.5, data_range: float = 1.0
) -> tuple[Tensor, Tensor]:
    """The luminance and contrast-structure maps of SSIM, local statistics under a Gaussian window (reflect border).

    SSIM is their product; MS-SSIM combines the contrast-structure means of several scales.
    """
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    moments = gaussian_blur(
        torch.cat([image, target, image * image, target * target, image * target]), window_size, sigma
    )
    mean_x, mean_y, mean_xx, mean_yy, mean_xy = moments.chunk(5)
    variance_x, variance_y = mean_xx - mean_x**2, mean_yy - mean_y**2
    covariance = mean_xy - mean_x * mean_y
    luminance = (2 * mean_x * mean_y + c1) / (mean_x**2 + mean_y**2 + c1)
    return luminance, (2 * covariance + c2) / (variance_x + variance_y + c2)


def ssim_loss(image: Tensor, target: Tensor, window_size: int = 11) -> Tensor:
    """1 - mean SSIM per sample: Gaussian window (sigma 1.5), reflect border, data range 1 (as kornia's ``ssim``)."""
    # in float32 whatever the inputs and autocast: the variances (E[x^2] - E[x]^2) cancel in half precision
    with torch.autocast(image.device.type, enabled=False):
        luminance, contrast_structure = ssim_maps(image.float(), target.float(), window_size)
    return 1.0 - per_sample_mean(luminance * contrast_structure)


def ms_ssim(
    image: Tensor,
    target: Tensor,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
    window_size: int = 11,
    sigma: float = 1.5,
    data_range: float = 1.0,
) -> Tensor:
    """Multi-scale SSIM per sample (Wang, Simoncelli and Bovik 2003).

    ``prod_j cs_j ** w_j`` over every scale times ``l_M ** w_M`` at the coarsest one, where ``cs_j``
    is the mean contrast-structure term at scale ``j`` and ``l_M`` the mean luminance term at the
    last; scales are 2x2 average-pooled. Local statistics use a Gaussian window with reflect padding
    (so 128 px training crops work at five scales). Each factor is clamped at a small positive value
    before its fractional power, since a negative mean contrast-structure has no real power.

    Args:
        image, target: (B, C, H, W); the coarsest scale must stay larger than half the window.
        weights: Exponent per scale, finest first; their count is the number of scales.
        window_size: Side of the Gaussian window.
        sigma: Standard deviation of the Gaussian window.
        data_range: Value range of the images (sets the stabilising constants).

    Returns:
        (B,) MS-SSIM, 1 for identical images.
    """
    scales = len(weights)
    smallest_side = min(image.shape[-2:]) // 2 ** (scales - 1)
    if smallest_side <= window_size // 2:
        raise ValueError(
            f"images of {image.shape[-2]}x{image.shape[-1]} are too small for {scales}-scale MS-SSIM with a "
            f"{window_size}-px window (the coarsest side would be {smallest_side}); use fewer scales or a "
            "smaller window"
        )
    result = image.new_ones(image.shape[0])
    for scale, weight in enumerate(weights):
        luminance, contrast_structure = ssim_maps(image, target, window_size, sigma, data_range)
        if scale == scales - 1:
            factor = per_sample_mean(luminance * contrast_structure)
        else:
            factor = per_sample_mean(contrast_structure)
            image, target = F.avg_pool2d(image, 2), F.avg_pool2d(target, 2)
        result = result * factor.clamp(min=1e-6) ** weight
    return result


def ms_ssim_loss(image: Tensor, target: Tensor, weights: Sequence[float] = MS_SSIM_WEIGHTS) -> Tensor:
    """1 - :func:`ms_ssim` per sample."""
    return 1.0 - ms_ssim(image, target, weights)


def energy_weights(energy_a: Tensor, energy_b: Tensor) -> Tensor:
    """Per-sample source weights (B, 2) proportional to the two sources' (B,) energies; 0.5 each when both are 0."""
    energies = torch.stack([energy_a, energy_b], dim=1).clamp(min=0.0) + 1e-12
    return energies / energies.sum(dim=1, keepdim=True)


def exposure_weights(sources: Sequence[Tensor], sigma: float = 0.2) -> Tensor:
    """Per-pixel weights (B, S, H, W) favouring well-exposed pixels: exp(-(I - 0.5)^2 / 2 sigma^2), normalised over S.

    The well-exposedness measure of Mertens et al.'s exposure fusion; an unsupervised target for
    multi-exposure pairs that have no reference image.
    """
    stacked = _stack_sources(sources).mean(dim=2)  # (B, S, H, W), channels averaged
    scores = torch.exp(-((stacked - 0.5) ** 2) / (2 * sigma**2)) + 1e-12
    return scores / scores.sum(dim=1, keepdim=True)


def focus_measure(image: Tensor, window: int = 7) -> Tensor:
    """Per-pixel sharpness (B, 1, H, W): the local mean of the squared Laplacian over a ``window`` square.

    Defocus blur removes fine detail first, so of two shots of the same scene the one in focus at a
    pixel has the larger Laplacian energy around it (channels are averaged first).
    """
    grey = image.mean(dim=1, keepdim=True)
    laplacian = 9 * (box_mean(grey, 3) - grey)  # the 3x3 kernel of ones with -8 at its centre, border reflected
    return box_mean(laplacian.square(), window)


def focus_weights(sources: Sequence[Tensor], window: int = 7) -> Tensor:
    """Per-pixel weights (B, S, H, W) that choose the source in focus: 1 for the sharpest, 0 for the others.

    The target of multi-focus pairs without an all-in-focus reference: each pixel's sharpest source by
    :func:`focus_measure`, then a majority vote over the same window so that isolated wrong
    decisions (where both shots are smooth) follow their neighbours. Tied votes share the weight.
    With these weights :func:`intensity_loss` and :func:`gradient_loss` are minimised by the
    per-pixel choice of the sharper source, i.e. an all-in-focus composite.
    """
    measures = torch.cat([focus_measure(source, window) for source in sources], dim=1)  # (B, S, H, W)
    choices = torch.arange(len(sources), device=measures.device)[:, None, None]
    sharpest = (measures.argmax(dim=1, keepdim=True) == choices).to(measures.dtype)  # one-hot over S
    votes = box_mean(sharpest, window)
    winners = (votes == votes.amax(dim=1, keepdim=True)).to(measures.dtype)
    return winners / winners.sum(dim=1, keepdim=True)


class GradientEnergy(nn.Module):
    """How much structure an image holds: mean squared Sobel gradient magnitude, averaged over a pyramid.

    The offline default for weighting the sources of unsupervised fusion: no weights to download,
    and several scales so that both fine texture and large structures count.

    Args:
        scales: Pyramid levels (2x2 average pooling between them).
    """

    def __init__(self, scales: int = 3) -> None:
        super().__init__()
        if scales < 1:
            raise ValueError(f"scales must be at least 1, got {scales}")
        self.scales = scales

    @torch.no_grad()
    def forward(self, image: Tensor) -> Tensor:
        """(B, C, H, W) -> (B,) energy."""
        energy = image.new_zeros(image.shape[0])
        for level in range(self.scales):
            energy = energy + per_sample_mean(sobel_magnitude(image) ** 2)
            if level < self.scales - 1:
                image = F.avg_pool2d(image, 2)
        return energy / self.scales


def _imagenet_backbone(architecture: str) -> tuple[nn.Module, list[nn.Module]]:
    """A randomly initialised torchvision ImageNet CNN and its feature stages (modules shared with it)."""
    import torchvision.models as models  # imported here: only this option needs torchvision

    if architecture == "densenet121":
        model = models.densenet121(weights=None)
        features = list(model.features.children())
        # stem, then each dense block with the transition that follows it (as GIFNet's public code)
        bounds = [(0, 4), (4, 6), (6, 8), (8, 10), (10, 11)]
        return model, [nn.Sequential(*features[start:end]) for start, end in bounds]
    if architecture == "resnet18":
        model = models.resnet18(weights=None)
        stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
        return model, [stem, model.layer1, model.layer2, model.layer3, model.layer4]
    raise ValueError(f"unknown backbone architecture {architecture!r}; choose densenet121 or resnet18")


class BackboneEnergy(nn.Module):
    """Feature energy from a frozen ImageNet CNN: mean squared Sobel gradient of each stage's features, averaged.

    GIFNet's public code weights infrared and visible sources this way with DenseNet-121. The weights
    are read from a local file (the full ``state_dict`` of the torchvision model, e.g. saved with
    ``torch.save(torchvision.models.densenet121(weights="DEFAULT").state_dict(), PATH)`` on a machine
    with internet access); nothing is downloaded at run time.

    The CNN is kept out of the module tree and loaded on first use (or by :meth:`load_backbone`): a
    model holding this module never hands the frozen weights (~30 MB for DenseNet-121) to its
    optimiser, never writes them to a checkpoint, and needs the weights file only when it trains.

    Args:
        weights_path: Local ``.pth`` file with the torchvision model's state_dict.
        architecture: ``densenet121`` (as GIFNet) or ``resnet18`` (smaller).
    """

    def __init__(
        self, weights_path: str | Path, architecture: Literal["densenet121", "resnet18"] = "densenet121"
    ) -> None:
        super().__init__()
        if architecture not in ("densenet121", "resnet18"):
            raise ValueError(f"unknown backbone architecture {architecture!r}; choose densenet121 or resnet18")
        self.weights_path = Path(weights_path)
        self.architecture = architecture
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.__dict__["_stages"] = None  # outside the module tree: no parameters, no state_dict entries

    def load_backbone(self) -> nn.Sequential:
        """The frozen feature stages, loaded from the weights file once; a missing or wrong file fails with the fix."""
        if self._stages is not None:
            return self._stages
        path, architecture = self.weights_path, self.architecture
        if not path.is_file():
            raise FileNotFoundError(
                f"backbone weights file {path} does not exist; save the torchvision {architecture} ImageNet "
                f"state_dict there (torch.save(torchvision.models.{architecture}(weights='DEFAULT').state_dict(), "
                f"'{path}') on a machine with internet access), or drop the backbone option to use the offline "
                "image-gradient energy"
            )
        model, stages = _imagenet_backbone(architecture)
        try:
            # the stages share their modules with the full model, so loading it fills them
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except RuntimeError as error:
            raise ValueError(f"{path} is not a state_dict of torchvision's {architecture}: {error}") from None
        # eval for good: the batch-norm statistics are ImageNet's, not the batch's
        backbone = nn.Sequential(*stages).requires_grad_(False).eval()
        self.__dict__["_stages"] = backbone
        return backbone

    @torch.no_grad()
    def forward(self, image: Tensor) -> Tensor:
        """(B, 1 or 3, H, W) in [0, 1] -> (B,) energy."""
        stages = self.load_backbone().to(self.mean.device)  # follows the module's device (a no-op once there)
        features = (image.expand(-1, 3, -1, -1) - self.mean) / self.std
        energy = image.new_zeros(image.shape[0])
        for stage in stages:
            features = stage(features)
            energy = energy + per_sample_mean(sobel_magnitude(features) ** 2)
        return energy / len(stages)


def text_guided_terms(
    fused: Tensor, a: Tensor, b: Tensor, gt: Tensor, intensity: Tensor, energy: Tensor
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """UP-Fusion's and CMI-Fusion's per-sample terms, for every sample: (fusion terms, fidelity terms).

    Fusion terms, for pairs without a target: ``intensity`` (computed by the caller: the two papers
    differ in its target), the Sobel gradient towards the larger of the sources' gradients, and SSIM
    to each source weighted by ``energy`` (B, 2). Fidelity terms, for pairs with a target ``gt``:
    L1, SSIM and Sobel gradient to it. Each term is cheap next to the network, so computing all of
    them for every sample costs little and keeps the step free of data-dependent indexing.
    """
    fusion = {
        "intensity": intensity,
        "gradient": gradient_loss(fused, [a, b]),
        "ssim": energy[:, 0] * ssim_loss(fused, a) + energy[:, 1] * ssim_loss(fused, b),
    }
    fidelity = {
        "fidelity_l1": per_sample_mean((fused - gt).abs()),
        "fidelity_ssim": ssim_loss(fused, gt),
        "fidelity_gradient": gradient_loss(fused, [gt]),
    }
    return fusion, fidelity


def masked_total(
    fusion: Mapping[str, Tensor],
    fidelity: Mapping[str, Tensor],
    weights: Mapping[str, float],
    has_gt: Tensor,
    task: Tensor,
    host: Mapping[str, list],
) -> dict[str, Tensor]:
    """The loss of :func:`text_guided_terms`'s terms, each sample keeping those of its kind, and per-task means.

    Fusion terms apply to the samples without a target (``has_gt`` false), fidelity terms to those with
    one. Returns ``loss``, the batch mean of each sample's weighted sum of the terms that apply to it (a
    term that does not apply gets no gradient), and ``<task>/<name>``: each term's mean over the samples
    of each task it applies to. Which tasks to log and how many samples each has come from ``host``
    (:func:`~lightning_modules.fusion.host_metadata`), so nothing here asks the device.
    """
    total = torch.zeros_like(task, dtype=torch.float32)
    logged: dict[str, Tensor] = {}
    for target, applies, terms in ((False, ~has_gt, fusion), (True, has_gt, fidelity)):
        counts = Counter(index for index, flag in zip(host["task"], host["has_gt"]) if bool(flag) == target)
        for name, values in terms.items():
            total = total + torch.where(applies, weights[name] * values, 0.0)
            for index, count in counts.items():
                samples = true_indices(applies & (task == index), count)
                logged[f"{TASKS[index]}/{name}"] = values.index_select(0, samples).mean()
    logged["loss"] = total.mean()
    return logged
