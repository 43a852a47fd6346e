"""Tiny image/mask folder trees in the Kvasir-SEG layout (``images/<stem>.jpg``, ``masks/<stem>.jpg``):
RGB JPEG images, and binary masks either as RGB JPEGs (as Kvasir-SEG ships them, so compression leaves
values near, not at, 0 and 255) or as exact 0/255 single-channel PNGs (ISIC 2018 style)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def blob_mask(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A boolean mask: a random rectangle joined with a random disc."""
    height, width = size
    mask = np.zeros(size, dtype=bool)
    top, left = rng.integers(0, height - 6), rng.integers(0, width - 6)
    mask[top : rng.integers(top + 4, height + 1), left : rng.integers(left + 4, width + 1)] = True
    rows, cols = np.mgrid[:height, :width]
    cy, cx, radius = rng.integers(4, height - 4), rng.integers(4, width - 4), rng.integers(2, 6)
    return mask | ((rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2)


def write_folder_tree(
    root: Path,
    stems: Sequence[str],
    size: tuple[int, int] = (24, 32),
    seed: int = 0,
    mask_format: str = "jpg",
    mask_suffix: str = "",
) -> dict[str, np.ndarray]:
    """Write ``root/images/<stem>.jpg`` and ``root/masks/<stem><mask_suffix>.<mask_format>`` for each stem;
    ``mask_format`` is ``jpg`` (RGB JPEG, quality 75) or ``png`` (mode L, 0/255). Returns
    ``{stem: 0/1 uint8 mask}``, the intended labels."""
    if mask_format not in ("jpg", "png"):
        raise ValueError(f"mask_format must be jpg or png, not {mask_format}")
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    written = {}
    for stem in stems:
        mask = blob_mask(rng, size)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / "images" / f"{stem}.jpg")
        grey = (mask * 255).astype(np.uint8)
        path = root / "masks" / f"{stem}{mask_suffix}.{mask_format}"
        if mask_format == "jpg":
            Image.fromarray(np.repeat(grey[..., None], 3, axis=2)).save(path, quality=75)
        else:
            Image.fromarray(grey).save(path)
        written[stem] = mask.astype(np.uint8)
    return written
