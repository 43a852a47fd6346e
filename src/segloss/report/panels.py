"""The disagreement panels of ``make report``: image | ground truth | predictions in one PNG row, titled."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

MAX_TILE_HEIGHT = 256  # taller images are scaled down (bilinear for the image, nearest for label maps)
GAP = 4  # white pixels between the tiles
TITLE_HEIGHT = 30  # the band of two title lines above the tiles


def display_rgb(image) -> np.ndarray:
    """H×W×3 uint8 of a raw 3×H×W (or C×H×W) image: RGB as it is; another channel count shows its first channel
    in grey; a non-uint8 image is scaled from its minimum to its maximum."""
    array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    array = array if array.shape[0] == 3 else np.repeat(array[:1], 3, axis=0)
    if array.dtype != np.uint8:
        low, high = float(array.min()), float(array.max())
        array = ((array - low) / (high - low or 1.0) * 255).round().astype(np.uint8)
    return np.ascontiguousarray(array.transpose(1, 2, 0))


def _font(size: int = 11):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # an old Pillow or one without FreeType: its bitmap font
        return ImageFont.load_default()


def _fitted(draw, text: str, font, width: int) -> str:
    """``text``, cut with ``...`` to fit ``width`` pixels (ASCII and Latin-1 only: Pillow's default font has no
    other glyphs)."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def panel(tiles: list[np.ndarray], titles: list[tuple[str, str]]) -> Image.Image:
    """One row of equally tall H×W×3 uint8 tiles, :data:`GAP` white pixels apart, under a white band of
    :data:`TITLE_HEIGHT` pixels holding each tile's two title lines."""
    from PIL import Image, ImageDraw

    height = tiles[0].shape[0]
    width = sum(tile.shape[1] for tile in tiles) + GAP * (len(tiles) - 1)
    canvas = Image.new("RGB", (width, TITLE_HEIGHT + height), (255, 255, 255))
    draw, font = ImageDraw.Draw(canvas), _font()
    x = 0
    for tile, lines in zip(tiles, titles, strict=True):
        canvas.paste(Image.fromarray(tile), (x, TITLE_HEIGHT))
        for row, line in enumerate(lines):
            draw.text((x + 2, 2 + 13 * row), _fitted(draw, line, font, tile.shape[1] - 4), fill=(0, 0, 0), font=font)
        x += tile.shape[1] + GAP
    return canvas


def tiles(image: np.ndarray, mask: np.ndarray, preds: list[np.ndarray], lut: np.ndarray) -> list[np.ndarray]:
    """image | ground truth | predictions as palette colours (ignore in black), at most :data:`MAX_TILE_HEIGHT`
    pixels high."""
    from segloss.utils.visualize import fit_within

    height, width = image.shape[:2]
    if height > MAX_TILE_HEIGHT:
        side = max(1, max(height, width) * MAX_TILE_HEIGHT // height)
        scaled = [fit_within((image, mask, pred), side) for pred in preds]
        image, mask, preds = scaled[0][0], scaled[0][1], [s[2] for s in scaled]
    colour = [lut[np.clip(x, 0, 255).astype(np.uint8)] for x in (mask, *preds)]
    return [image, *colour]
