"""Colour masks with a palette and lay out image | ground truth | prediction grids (PIL only)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def palette_lut(palette: Sequence[Sequence[int]], ignore_color=(0, 0, 0)) -> np.ndarray:
    """A 256×3 uint8 table: class c → palette[c]; every other value (ignore) → ``ignore_color``."""
    lut = np.tile(np.asarray(ignore_color, dtype=np.uint8), (256, 1))
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return lut


def default_palette(num_classes: int, seed: int = 0) -> list[tuple[int, int, int]]:
    rng = np.random.default_rng(seed)
    return [tuple(int(v) for v in rng.integers(40, 256, 3)) for _ in range(num_classes)]


def denormalise(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A normalised float 3×H×W tensor back to uint8 H×W×3."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    rgb = (image.detach().float().cpu() * std_t + mean_t).clamp(0, 1) * 255
    return rgb.round().byte().permute(1, 2, 0).numpy()


def prediction_grid(
    images: Sequence[np.ndarray], masks: Sequence[np.ndarray], preds: Sequence[np.ndarray], lut: np.ndarray
) -> Image.Image:
    """One row per example: image | ground truth | prediction, separated by 2 px white lines."""
    rows = []
    for image, mask, pred in zip(images, masks, preds):
        sep = np.full((image.shape[0], 2, 3), 255, dtype=np.uint8)
        gt, pr = lut[np.clip(mask, 0, 255).astype(np.uint8)], lut[pred.astype(np.uint8)]
        rows.append(np.concatenate([image, sep, gt, sep, pr], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return Image.fromarray(np.concatenate(rows, axis=0))


def save_palette_png(indices: np.ndarray, palette: Sequence[Sequence[int]], path) -> None:
    """Write class indices (H×W) as a palette ("P" mode) PNG: the file holds the indices, viewers
    show the palette colours (the VOC convention)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.asarray(indices, dtype=np.uint8))  # "L"; putpalette makes it "P"
    flat = [int(v) for colour in palette for v in colour]
    image.putpalette(flat + [0] * (768 - len(flat)))
    image.save(path)
