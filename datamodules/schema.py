"""The sample contract shared by shards, the demo set, the streaming mixture and the models.

A shard sample (WebDataset tar, members grouped by key) holds ``a.png``, optionally ``b.png`` and
``gt.png``, and a ``json`` member with the metadata below. In a batch every image is float32 in
[0, 1] with shape (B, C, H, W); training batches hold luminance only (C = 1, BT.601 Y) and carry,
per sample, the task id, whether ``b`` and ``gt`` are present, and the degradation severities, so
one batch can mix tasks and each task's loss applies to its own samples.

Batch keys (training and evaluation alike):

==============  =====================================================================
``a``           (B, 1, H, W) luminance of the first source (or the degraded input)
``b``           (B, 1, H, W) luminance of the second source; zeros where absent
``gt``          (B, 1, H, W) luminance of the target; zeros where absent
``has_b``       (B,) bool
``has_gt``      (B,) bool
``task``        (B,) int64, index into :data:`TASKS`
``degradation`` (B, len(DEGRADATIONS)) float32 severity per kind, 0 = absent
``prompt``      list of B strings, "" where the sample names none
``key``         list of B sample keys
==============  =====================================================================

Full-resolution pair batches (validation, test, predict) add ``a_color`` / ``b_color``:
(B, 3, H, W) RGB in [0, 1] (grey sources repeated), ``a_channels`` / ``b_channels`` (B,) int64
with the stored channel count, and ``bit_depth`` (B,) int64, so predict can put colour back and
write the same bit depth.

Bit depth: 16-bit containers often hold fewer bits (10-12-bit medical and NIR data). An image is
scaled to [0, 1] by its *effective* depth, ``2**bits - 1``: a shard sample's ``bit_depth`` (decided
per source at build time), or a pair's (see :mod:`datamodules.pairs`). ``bit_depth`` in a batch is
that effective depth; more than 8 means a 16-bit container.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

TASKS: tuple[str, ...] = ("ivif", "mfif", "meif", "med", "nir", "restore")
"""Task names, in task-id order. ``restore`` samples have no ``b``."""

TASK_IDS: dict[str, int] = {name: index for index, name in enumerate(TASKS)}

DEGRADATIONS: tuple[str, ...] = ("noise", "blur", "lowlight", "haze", "jpeg", "rain", "overexposure", "lowcontrast")
"""Degradation kinds a sample may be tagged with, in column order of the ``degradation`` tensor."""

MAX_SEVERITY = 3
"""Severities run 1..MAX_SEVERITY; a tag without one means severity 1."""

IMAGE_MEMBERS: tuple[str, ...] = ("a", "b", "gt")

BT601 = (0.299, 0.587, 0.114)

BIT_DEPTHS: tuple[int, ...] = (8, 10, 12, 14, 16)
"""Effective bit depths: 8 for 8-bit containers, the others for 16-bit ones."""


def task_id(task: str) -> int:
    """The integer id of ``task``; an unknown name raises an error that lists the known ones."""
    try:
        return TASK_IDS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}") from None


def parse_degradation(tag: str) -> tuple[str, int]:
    """Split a tag ``"kind"`` or ``"kind:severity"`` into its kind and severity (1 by default)."""
    kind, _, severity_text = tag.partition(":")
    if kind not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {kind!r} in tag {tag!r}; known: {', '.join(DEGRADATIONS)}")
    severity = int(severity_text) if severity_text else 1
    if not 1 <= severity <= MAX_SEVERITY:
        raise ValueError(f"severity of {tag!r} must be 1..{MAX_SEVERITY}")
    return kind, severity


def degradation_vector(tags: Iterable[str]) -> torch.Tensor:
    """Severity per kind in :data:`DEGRADATIONS` order (float32, 0 = absent)."""
    vector = torch.zeros(len(DEGRADATIONS), dtype=torch.float32)
    for tag in tags:
        kind, severity = parse_degradation(tag)
        vector[DEGRADATIONS.index(kind)] = float(severity)
    return vector


@dataclasses.dataclass
class SampleMeta:
    """The ``json`` member of a shard sample."""

    task: str
    degradations: list[str] = dataclasses.field(default_factory=list)
    prompt: str | None = None
    source: str = ""
    synthetic: bool = False
    bit_depth: int | None = None
    """Effective bit depth of the sample's 16-bit images (10..16); absent means the container's depth."""

    def __post_init__(self) -> None:
        task_id(self.task)
        for tag in self.degradations:
            parse_degradation(tag)
        if self.bit_depth is not None and self.bit_depth not in BIT_DEPTHS[1:]:
            raise ValueError(f"bit_depth {self.bit_depth}: choose one of {', '.join(map(str, BIT_DEPTHS[1:]))}")

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"task": self.task, "degradations": list(self.degradations), "source": self.source}
        if self.prompt:
            record["prompt"] = self.prompt
        if self.synthetic:
            record["synthetic"] = True
        if self.bit_depth is not None:
            record["bit_depth"] = self.bit_depth
        return record

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> SampleMeta:
        return cls(
            task=record["task"],
            degradations=list(record.get("degradations", [])),
            prompt=record.get("prompt"),
            source=record.get("source", ""),
            synthetic=bool(record.get("synthetic", False)),
            bit_depth=record.get("bit_depth"),
        )


def effective_bit_depth(peak: int) -> int:
    """The smallest 16-bit container depth in :data:`BIT_DEPTHS` (10 to 16) that holds the value ``peak``."""
    return next(bits for bits in BIT_DEPTHS[1:] if peak < 1 << bits)


def unit_scale(image: np.ndarray, bit_depth: int | None = None) -> float:
    """The divisor that maps ``image`` to [0, 1]: 255 for uint8, ``2**bit_depth - 1`` for uint16 (default 16)."""
    if image.dtype == np.uint8:
        return 255.0
    if image.dtype == np.uint16:
        return float((1 << (bit_depth or 16)) - 1)
    raise TypeError(f"expected an 8- or 16-bit image, got dtype {image.dtype}")


def to_float(image: np.ndarray, bit_depth: int | None = None) -> torch.Tensor:
    """An (H, W) or (H, W, C) uint8/uint16 array as a (C, H, W) float32 tensor in [0, 1] (:func:`unit_scale`)."""
    scale = unit_scale(image, bit_depth)
    tensor = torch.from_numpy(np.ascontiguousarray(image).astype(np.float32) / scale)
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


def luminance(image: torch.Tensor) -> torch.Tensor:
    """BT.601 Y of a (..., C, H, W) image with C = 1 (returned as is) or 3 (RGB)."""
    if image.shape[-3] == 1:
        return image
    if image.shape[-3] != 3:
        raise ValueError(f"expected 1 or 3 channels, got {image.shape[-3]}")
    red, green, blue = image.unbind(-3)
    return (BT601[0] * red + BT601[1] * green + BT601[2] * blue).unsqueeze(-3)


def second_source(batch: Mapping[str, Any]) -> torch.Tensor:
    """The batch's ``b`` where a sample has one, else its ``a``: what a restoration sample fuses with."""
    return torch.where(batch["has_b"][:, None, None, None], batch["b"], batch["a"])


def collate(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack per-sample dicts (tensors without the batch dim, flags, strings) into a batch dict.

    Missing ``b``/``gt`` in a sample are zeros of ``a``'s shape, flagged by ``has_b``/``has_gt``.
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    batch: dict[str, Any] = {}
    reference = samples[0]["a"]
    for member in IMAGE_MEMBERS:
        batch[member] = torch.stack(
            [s[member] if s.get(member) is not None else torch.zeros_like(reference) for s in samples]
        )
    batch["has_b"] = torch.tensor([s.get("b") is not None for s in samples])
    batch["has_gt"] = torch.tensor([s.get("gt") is not None for s in samples])
    batch["task"] = torch.tensor([int(s["task"]) for s in samples], dtype=torch.int64)
    batch["degradation"] = torch.stack([s["degradation"] for s in samples])
    batch["prompt"] = [s.get("prompt") or "" for s in samples]
    batch["key"] = [s.get("key", "") for s in samples]
    for extra in ("a_color", "b_color"):
        if all(s.get(extra) is not None for s in samples):
            batch[extra] = torch.stack([s[extra] for s in samples])
    for extra in ("a_channels", "b_channels", "bit_depth"):
        if all(extra in s for s in samples):
            batch[extra] = torch.tensor([int(s[extra]) for s in samples], dtype=torch.int64)
    return batch
