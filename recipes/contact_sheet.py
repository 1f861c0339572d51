"""Contact sheets: images of several methods side by side, one row per pair, at one height.

People judge fusions by looking, so ``recipes.evaluate --sheet`` writes one sheet per task: each
row a pair (its sources, the target where there is one, then every method's fused image), every
tile scaled to the same height, a label above each tile and the pair's name at the left. This
module only lays out and draws; which images go in a row is the caller's choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LABEL_HEIGHT = 14
"""Pixels above each tile for its label (PIL's default bitmap font is 11 px high)."""
GAP = 4
"""Pixels between tiles and between rows."""
Item = TypeVar("Item")


@dataclass
class SheetRow:
    """One pair on a sheet: its name and the (label, image) tiles left to right."""

    name: str
    tiles: list[tuple[str, np.ndarray]]


def evenly_spaced(items: Sequence[Item], count: int) -> list[Item]:
    """``count`` items spread evenly over ``items`` (first and last included): a choice that looks at no score."""
    if count >= len(items):
        return list(items)
    positions = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[p] for p in positions]


def to_display(image: np.ndarray) -> Image.Image:
    """An 8-bit RGB PIL image from a grey or RGB image of 8 or 16 bits (16-bit scaled down)."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:  # float in [0, 1]
        image = np.clip(np.rint(np.asarray(image, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    return Image.fromarray(image).convert("RGB")


def scaled_to_height(image: np.ndarray, height: int) -> Image.Image:
    tile = to_display(image)
    width = max(1, round(tile.width * height / tile.height))
    return tile.resize((width, height), Image.Resampling.LANCZOS)


def draw_sheet(rows: Sequence[SheetRow], height: int = 160, title: str | None = None) -> Image.Image:
    """The sheet as one RGB image: rows of labelled tiles, each ``height`` pixels high."""
    if not rows:
        raise ValueError("a contact sheet needs at least one row")
    font = ImageFont.load_default()
    name_width = max(8 + 6 * len(row.name) for row in rows)  # the default font is about 6 px per character
    scaled = [[(label, scaled_to_height(image, height)) for label, image in row.tiles] for row in rows]
    row_widths = [sum(tile.width + GAP for _, tile in tiles) for tiles in scaled]
    top = LABEL_HEIGHT + GAP if title else 0
    sheet_width = name_width + max(row_widths) + GAP
    sheet_height = top + len(rows) * (LABEL_HEIGHT + height + GAP) + GAP
    sheet = Image.new("RGB", (sheet_width, sheet_height), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((GAP, GAP), title, fill="black", font=font)
    y = top + GAP
    for row, tiles in zip(rows, scaled):
        draw.text((GAP, y + LABEL_HEIGHT + height // 2 - 6), row.name, fill="black", font=font)
        x = name_width
        for label, tile in tiles:
            draw.text((x, y), label, fill="black", font=font)
            sheet.paste(tile, (x, y + LABEL_HEIGHT))
            x += tile.width + GAP
        y += LABEL_HEIGHT + height + GAP
    return sheet


def write_sheet(rows: Sequence[SheetRow], path: Path, height: int = 160, title: str | None = None) -> Path:
    """Draw the sheet and save it as PNG at ``path``; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_sheet(rows, height, title).save(path)
    return path
