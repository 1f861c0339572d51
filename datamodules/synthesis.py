"""Training pairs synthesised from clean images: defocus, exposure, degradations.

Two consumers share one set of parameters per severity, so a "noise:2" sample means the same
thing wherever it was made:

- photographs (NumPy, float32 RGB or grey in [0, 1]): the demo set and the shard builders make
  multi-focus pairs (depth-dependent defocus with an all-in-focus target), multi-exposure pairs
  (exposure shifts in linear light, a tone curve, 8-bit quantisation), restoration pairs and
  infrared-like images from real photographs, deterministically from a ``numpy`` generator;
- batches (torch, (B, 1, H, W) luminance): LURE's pseudo-degradation task re-degrades clean
  images on the fly on the training device (:func:`degrade_batch`, :func:`random_degradations`).

The parameters span mild to strong; they are chosen to look like the real degradations the prompt
table names, not to reproduce any one dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import cv2
import numpy as np
import torch
from kornia.enhance import jpeg_codec_differentiable
from kornia.filters import gaussian_blur2d

from datamodules.schema import BT601, DEGRADATIONS, MAX_SEVERITY

NOISE_SIGMA = (0.04, 0.09, 0.16)
"""Standard deviation of additive Gaussian noise (on [0, 1]) per severity."""
BLUR_SIGMA = (1.2, 2.2, 3.5)
"""Gaussian blur sigma in pixels per severity."""
LOWLIGHT_GAIN = (0.3, 0.15, 0.07)
"""Exposure gain in linear light per severity (applied through a 2.2 gamma)."""
HAZE_DENSITY = (0.8, 1.5, 2.4)
"""Scattering coefficient beta of the transmission t = exp(-beta (0.2 + depth)) per severity."""
JPEG_QUALITY = (35.0, 18.0, 8.0)
"""JPEG quality per severity."""
OVEREXPOSURE_GAIN = (1.4, 1.8, 2.4)
"""Gain before clipping per severity."""
CONTRAST = (0.7, 0.5, 0.3)
"""Factor on the deviation from the image mean per severity."""


# --------------------------------------------------------------------------------------------
# Photographs (NumPy)


def to_unit_float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / (65535.0 if image.dtype == np.uint16 else 255.0)


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def _srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def _linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0, 1)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055).astype(np.float32)


def _gaussian(image: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return image
    return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)


def _variable_blur(image: np.ndarray, sigma_map: np.ndarray, max_sigma: float) -> np.ndarray:
    """Per-pixel Gaussian defocus: blend between a stack of uniformly blurred copies."""
    levels = np.linspace(0.0, max_sigma, 7)
    stack = [_gaussian(image, float(s)) for s in levels]
    position = np.clip(sigma_map / max_sigma * (len(levels) - 1), 0, len(levels) - 1 - 1e-6)
    low = np.floor(position).astype(np.int64)
    frac = (position - low).astype(np.float32)
    out = np.zeros_like(image)
    for index in range(len(levels) - 1):
        weight_low = np.where(low == index, 1 - frac, 0).astype(np.float32)
        weight_high = np.where(low == index, frac, 0).astype(np.float32)
        if image.ndim == 3:
            weight_low, weight_high = weight_low[..., None], weight_high[..., None]
        out += weight_low * stack[index] + weight_high * stack[index + 1]
    return out


def _blob_mask(shape: tuple[int, int], rng: np.random.Generator, coverage: float = 0.45) -> np.ndarray:
    """A smooth foreground mask in [0, 1] from thresholded low-frequency noise."""
    height, width = shape
    noise = rng.standard_normal((max(4, height // 32), max(4, width // 32))).astype(np.float32)
    field = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    field = _gaussian(field, min(height, width) / 24)
    threshold = np.quantile(field, 1 - coverage)
    mask = (field > threshold).astype(np.float32)
    return np.clip(_gaussian(mask, 2.0), 0, 1)


def _smooth_depth(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A plausible scene depth in [0, 1] (0 near): a ground-plane gradient plus low-frequency relief."""
    height, width = shape
    rows = np.linspace(1.0, 0.0, height, dtype=np.float32)[:, None].repeat(width, 1)
    relief = cv2.resize(rng.standard_normal((6, 6)).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    depth = 0.7 * rows + 0.3 * (relief - relief.min()) / (np.ptp(relief) + 1e-6)
    return (depth - depth.min()) / (np.ptp(depth) + 1e-6)


def make_multifocus(
    photo: np.ndarray, depth: np.ndarray | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, str]:
    """(near focus, far focus, how): defocus grows with distance from each focal plane."""
    max_sigma = float(rng.uniform(3.0, 5.5))
    if depth is not None:
        plane_near, plane_far = np.quantile(depth, 0.1), np.quantile(depth, 0.85)
        near = _variable_blur(photo, np.abs(depth - plane_near) / (1 - plane_near + 1e-6) * max_sigma * 1.4, max_sigma)
        far = _variable_blur(photo, np.abs(depth - plane_far) / (plane_far + 1e-6) * max_sigma * 1.4, max_sigma)
        return near, far, "depth"
    mask = _blob_mask(photo.shape[:2], rng)
    near = _variable_blur(photo, (1 - mask) * max_sigma, max_sigma)  # foreground sharp
    far = _variable_blur(photo, mask * max_sigma, max_sigma)  # background sharp
    return near, far, "mask"


def _shoulder(x_linear: np.ndarray, knee: float = 0.75) -> np.ndarray:
    """Identity below ``knee``, then an exponential roll-off to 1 (highlights saturate softly)."""
    span = 1.0 - knee
    return np.where(x_linear < knee, x_linear, knee + span * (1 - np.exp(-(x_linear - knee) / span))).astype(np.float32)


def make_exposures(photo: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """(under, over, stops): the photograph shifted by -stops and +stops in linear light."""
    stops = float(rng.uniform(1.8, 3.0))
    linear = _srgb_to_linear(photo)
    under = _linear_to_srgb(linear * 2.0**-stops)
    over = _linear_to_srgb(_shoulder(linear * 2.0**stops))
    return under, over, stops


def degrade_photo(
    photo: np.ndarray, kind: str, severity: int, rng: np.random.Generator, depth: np.ndarray | None = None
) -> np.ndarray:
    """One degradation of ``kind`` at ``severity`` (1..3) applied to a float image in [0, 1]."""
    level = severity - 1
    if kind == "noise":
        sigma = NOISE_SIGMA[level]
        return np.clip(photo + rng.normal(0, sigma, photo.shape).astype(np.float32), 0, 1)
    if kind == "blur":
        if rng.random() < 0.5:
            return _gaussian(photo, BLUR_SIGMA[level])
        length = (7, 13, 21)[level]
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2, :] = 1.0 / length
        rotation = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), float(rng.uniform(0, 180)), 1.0)
        kernel = cv2.warpAffine(kernel, rotation, (length, length))
        kernel /= kernel.sum()
        return cv2.filter2D(photo, -1, kernel, borderType=cv2.BORDER_REFLECT)
    if kind == "lowlight":
        gain = LOWLIGHT_GAIN[level]
        dark = _linear_to_srgb(_srgb_to_linear(photo) * gain)
        shot = rng.normal(0, 1, photo.shape).astype(np.float32) * np.sqrt(np.maximum(dark, 0) * 0.002) + rng.normal(
            0, 0.004, photo.shape
        ).astype(np.float32)
        return np.clip(dark + shot, 0, 1)
    if kind == "haze":
        depth = depth if depth is not None else _smooth_depth(photo.shape[:2], rng)
        beta = HAZE_DENSITY[level]
        transmission = np.exp(-beta * (0.2 + depth)).astype(np.float32)
        if photo.ndim == 3:
            transmission = transmission[..., None]
        airlight = float(rng.uniform(0.75, 0.95))
        return np.clip(photo * transmission + airlight * (1 - transmission), 0, 1)
    if kind == "jpeg":
        quality = int(JPEG_QUALITY[level])
        as_uint8 = to_uint8(photo)
        bgr = as_uint8 if as_uint8.ndim == 2 else cv2.cvtColor(as_uint8, cv2.COLOR_RGB2BGR)
        ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
        decoded = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
        decoded = decoded if decoded.ndim == 2 else cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
        return to_unit_float(decoded)
    raise ValueError(f"unknown degradation {kind!r}")


def make_infrared(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A grey infrared-like image: smoothed emission, hot objects, little texture, sensor noise.

    Warm-coloured regions (skin, red paint) of a colour photograph become the hot objects; a grey
    photograph gets a few hot blobs where it is bright.
    """
    grey = photo if photo.ndim == 2 else photo @ np.array(BT601, np.float32)
    base = 0.2 + 0.3 * _gaussian(0.6 * grey + 0.4 * (1.0 - grey), 4.0)
    if photo.ndim == 3:
        warm = np.clip((photo[..., 0] - photo[..., 2]) * 2.5, 0, 1) * np.clip(photo[..., 0] * 1.5, 0, 1)
        hot = _gaussian(warm, 3.0)
    else:
        hot = _blob_mask(grey.shape, rng, coverage=0.15) * _gaussian(grey, 3.0)
    hot = hot / (hot.max() + 1e-6) * float(rng.uniform(0.4, 0.6))
    edges = np.abs(cv2.Laplacian(_gaussian(grey, 1.5), cv2.CV_32F, ksize=3))
    texture = 0.12 * edges / (np.quantile(edges, 0.99) + 1e-6)
    columns = 0.004 * rng.standard_normal(grey.shape[1]).astype(np.float32)[None, :]  # fixed-pattern noise
    infrared = base + hot + texture + columns + rng.normal(0, 0.01, grey.shape).astype(np.float32)
    return np.clip(infrared, 0, 1)


PHOTO_DEGRADATIONS: tuple[str, ...] = ("noise", "blur", "lowlight", "haze", "jpeg")
"""The kinds :func:`degrade_photo` applies to photographs."""

SYNTHETIC_TASKS: tuple[str, ...] = ("mfif", "meif", "restore")
"""What :func:`synthetic_samples` can make from a clean photograph."""


def focus_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth random in-focus region in [0, 1]: blobs, an ellipse or a polygon, feathered.

    Blobs are thresholded low-frequency noise at a random scale and coverage (30-70 %); the
    ellipse and the polygon stand for a single object. The feathered edge makes focus change
    gradually, as it does across a real depth discontinuity seen through a lens.
    """
    height, width = shape
    shape_kind = int(rng.integers(3))
    if shape_kind == 0:
        cells = int(rng.integers(2, 7))
        field = cv2.resize(
            rng.standard_normal((cells, cells)).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC
        )
        mask = (field > np.quantile(field, 1 - rng.uniform(0.3, 0.7))).astype(np.float32)
    else:
        mask = np.zeros((height, width), np.float32)
        centre = np.array([rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height])
        if shape_kind == 1:
            axes = (int(rng.uniform(0.2, 0.45) * width), int(rng.uniform(0.2, 0.45) * height))
            cv2.ellipse(mask, (int(centre[0]), int(centre[1])), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        else:
            angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(5, 9))))
            radii = rng.uniform(0.2, 0.45, angles.size)[:, None] * np.array([width, height])
            corners = centre + radii * np.stack([np.cos(angles), np.sin(angles)], 1)
            cv2.fillPoly(mask, [np.round(corners).astype(np.int32)], 1.0)
    feather = float(rng.uniform(1.0, 4.0)) * max(1.0, min(height, width) / 256)
    return np.clip(_gaussian(mask, feather), 0, 1)


def mask_depth(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scene depth in [0, 1] (0 near) behind a focus mask: the masked object near, with a little
    relief; the rest a receding background (ground-plane gradient and relief, :func:`_smooth_depth`)."""
    foreground = 0.25 * _smooth_depth(mask.shape, rng)
    background = 0.45 + 0.55 * _smooth_depth(mask.shape, rng)
    return mask * foreground + (1 - mask) * background


def focus_sigmas(mask: np.ndarray, depth: np.ndarray, max_sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel defocus sigma of the near- and the far-focused image.

    Each keeps its own region (the mask for near focus, the rest for far focus) sharp. Elsewhere
    the blur grows with the distance in depth from its focal plane (the median depth of the region
    in focus), as the circle of confusion of a thin lens does: from 30 % of ``max_sigma`` to all of it.
    """
    sigmas = []
    for sharp in (mask, 1 - mask):
        in_focus = sharp > 0.5
        focal_depth = float(np.median(depth[in_focus])) if in_focus.any() else float(depth.mean())
        distance = np.abs(depth - focal_depth)
        sigmas.append((max_sigma * (1 - sharp) * (0.3 + 0.7 * distance / (distance.max() + 1e-6))).astype(np.float32))
    return sigmas[0], sigmas[1]


def make_focus_pair(photo: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(near focus, far focus) from a sharp photograph, GIFNet-style, with depth-dependent defocus.

    A random :func:`focus_mask` is the near object over a :func:`mask_depth` scene; the blur of
    each image follows :func:`focus_sigmas` with a maximum sigma of 2-5 pixels (per 256 pixels of
    image side). The complementary regions stay sharp, so the photograph is the all-in-focus target.
    """
    mask = focus_mask(photo.shape[:2], rng)
    depth = mask_depth(mask, rng)
    max_sigma = float(rng.uniform(2.0, 5.0)) * max(1.0, min(photo.shape[:2]) / 256)
    near_sigma, far_sigma = focus_sigmas(mask, depth, max_sigma)
    return _variable_blur(photo, near_sigma, max_sigma), _variable_blur(photo, far_sigma, max_sigma)


def synthetic_samples(
    photo: np.ndarray, task: str, rng: np.random.Generator, variants: int = 1
) -> Iterator[tuple[str, dict[str, np.ndarray], list[str], str]]:
    """Synthetic training samples of ``task`` from one clean photograph (float in [0, 1]).

    Yields (name, {role: float image}, degradation tags, how it was made): ``mfif``: ``variants``
    near/far pairs (:func:`make_focus_pair`) with the photograph as target; ``meif``: ``variants``
    under/over-exposed pairs (:func:`make_exposures`) with the photograph as target; ``restore``:
    per kind of :data:`PHOTO_DEGRADATIONS`, ``variants`` (at most 3) distinct random severities.
    """
    if task == "mfif":
        for index in range(variants):
            near, far = make_focus_pair(photo, rng)
            yield f"mf{index}", {"a": near, "b": far, "gt": photo}, [], "defocus"
    elif task == "meif":
        for index in range(variants):
            under, over, stops = make_exposures(photo, rng)
            yield f"me{index}", {"a": under, "b": over, "gt": photo}, [], f"exposure-{stops:.1f}ev"
    elif task == "restore":
        for kind in PHOTO_DEGRADATIONS:
            for severity in sorted(
                rng.choice(np.arange(1, MAX_SEVERITY + 1), size=min(variants, MAX_SEVERITY), replace=False)
            ):
                yield (
                    f"{kind}{severity}",
                    {"a": degrade_photo(photo, kind, int(severity), rng), "gt": photo},
                    [f"{kind}:{severity}"],
                    kind,
                )
    else:
        raise ValueError(f"cannot synthesise task {task!r} from photographs; choose from {', '.join(SYNTHETIC_TASKS)}")


# --------------------------------------------------------------------------------------------
# Batches (torch)


SYNTHETIC_KINDS: tuple[str, ...] = ("noise", "blur", "lowlight", "haze", "jpeg", "overexposure", "lowcontrast")
"""The kinds :func:`degrade_batch` can synthesise (rain is left out: streaks need more than a formula)."""


def _random(draw: Callable[..., torch.Tensor], shape: Sequence[int], like: torch.Tensor,
            generator: torch.Generator | None) -> torch.Tensor:  # fmt: skip
    """``draw`` (torch.rand / randn) of ``shape`` on ``like``'s device and dtype, from ``generator`` if given."""
    if generator is None:
        return draw(shape, device=like.device, dtype=like.dtype)
    return draw(shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)


def degrade_batch(
    image: torch.Tensor, kind: str, severity: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``image`` (B, 1, H, W) in [0, 1] degraded by ``kind`` at ``severity`` (1..3), clamped to [0, 1].

    Random parts (noise, haze airlight) come from ``generator`` (default: torch's global one).
    """
    if kind not in SYNTHETIC_KINDS:
        raise ValueError(f"cannot synthesise degradation {kind!r}; synthetic kinds: {', '.join(SYNTHETIC_KINDS)}")
    if not 1 <= severity <= MAX_SEVERITY:
        raise ValueError(f"severity must be 1..{MAX_SEVERITY}, got {severity}")
    level = severity - 1
    if kind == "noise":
        noise = _random(torch.randn, image.shape, image, generator)
        degraded = image + NOISE_SIGMA[level] * noise
    elif kind == "blur":
        sigma = BLUR_SIGMA[level]
        size = 2 * int(3 * sigma + 0.5) + 1
        degraded = gaussian_blur2d(image, (size, size), (sigma, sigma), border_type="reflect")
    elif kind == "lowlight":
        # darkening in linear light is a plain gain on gamma-encoded values under a 2.2 gamma
        degraded = image * LOWLIGHT_GAIN[level] ** (1.0 / 2.2)
    elif kind == "haze":
        # depth grows towards the top of the frame (a ground plane), so haze thickens with distance;
        # airlight varies a little between samples so "haze" is not one fixed grey level.
        height = image.shape[-2]
        depth = torch.linspace(1.0, 0.0, height, device=image.device, dtype=image.dtype)[:, None]
        transmission = torch.exp(-HAZE_DENSITY[level] * (0.2 + depth))
        airlight = 0.75 + 0.2 * _random(torch.rand, (image.shape[0], 1, 1, 1), image, generator)
        degraded = image * transmission + airlight * (1.0 - transmission)
    elif kind == "jpeg":
        # kornia's codec works on RGB; a grey image as three equal channels compresses its luminance only.
        quality = torch.full((image.shape[0],), JPEG_QUALITY[level], device=image.device, dtype=image.dtype)
        degraded = jpeg_codec_differentiable(image.expand(-1, 3, -1, -1), quality)[:, :1]
    elif kind == "overexposure":
        degraded = image * OVEREXPOSURE_GAIN[level]
    else:  # lowcontrast
        mean = image.mean(dim=(-2, -1), keepdim=True)
        degraded = mean + CONTRAST[level] * (image - mean)
    return degraded.clamp(0.0, 1.0)


def random_degradations(
    clean: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image of ``clean`` (B, 1, H, W) degraded by one random synthetic kind and severity.

    Returns the degraded batch and its (B, len(DEGRADATIONS)) severity matrix (the batch contract's
    ``degradation`` layout), so prompts can be composed for the pseudo samples. Every draw comes
    from ``generator`` (a CPU generator; default: torch's global one).
    """
    count = clean.shape[0]
    kinds = torch.randint(len(SYNTHETIC_KINDS), (count,), generator=generator).tolist()
    severities = torch.randint(1, MAX_SEVERITY + 1, (count,), generator=generator).tolist()
    degraded = torch.empty_like(clean)
    matrix = torch.zeros(count, len(DEGRADATIONS), device=clean.device)
    # samples sharing kind and severity are degraded together (the JPEG codec is slow per call).
    for kind_index, severity in sorted(set(zip(kinds, severities))):
        members = [i for i in range(count) if kinds[i] == kind_index and severities[i] == severity]
        kind = SYNTHETIC_KINDS[kind_index]
        degraded[members] = degrade_batch(clean[members], kind, severity, generator).to(degraded.dtype)
        matrix[members, DEGRADATIONS.index(kind)] = float(severity)
    return degraded, matrix
