"""Writes predicted fusions as PNG files, one per pair, with the pair's stem and bit depth."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter

from datamodules.images import encode_png


def to_integer_image(image: torch.Tensor, bit_depth: int) -> np.ndarray:
    """A (C, H, W) float image in [0, 1] as an (H, W) or (H, W, 3) uint8/uint16 array.

    ``bit_depth`` is the sources' effective depth: above 8 the image goes into 16 bits scaled to
    ``2**bit_depth - 1``, so a 12-bit pair fuses into values 0..4095, as its sources were read.
    """
    peak, dtype = ((1 << bit_depth) - 1, np.uint16) if bit_depth > 8 else (255, np.uint8)
    array = (image.detach().float().cpu().clamp(0, 1) * peak).round().numpy().astype(dtype)
    return array[0] if array.shape[0] == 1 else np.transpose(array, (1, 2, 0))


class FusedImageWriter(BasePredictionWriter):
    """Saves every fused image under ``output_dir`` as ``<key>.png`` (keys may contain folders).

    Args:
        output_dir: Folder for the fused images; created when missing.
    """

    def __init__(self, output_dir: str) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: dict[str, Any],
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        for key, image, bit_depth in zip(prediction["key"], prediction["images"], prediction["bit_depth"]):
            path = self.output_dir / f"{key}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode_png(to_integer_image(image, bit_depth), level=6))
