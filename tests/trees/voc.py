"""Tiny Pascal VOC 2012 trees in the official layout (``VOCdevkit/VOC2012/...``), with palette PNG masks
that carry 255 object borders, and optionally SBD masks in the DeepLab/MMSegmentation
``SegmentationClassAug/`` layout (single-channel index PNGs, no borders, as SBD has none)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from segloss.data.voc import voc_colormap

PALETTE_BYTES = [channel for colour in voc_colormap(256) for channel in colour]


def voc_mask(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Background 0 with two rectangles of classes 1–20, each outlined by a 255 border (the last outline
    is always kept, so 255 is always present)."""
    height, width = size
    mask = np.zeros(size, dtype=np.uint8)
    for _ in range(2):
        top, left = rng.integers(0, height - 3), rng.integers(0, width - 3)
        bottom, right = rng.integers(top + 3, height + 1), rng.integers(left + 3, width + 1)
        mask[top:bottom, left:right] = 255
        mask[top + 1 : bottom - 1, left + 1 : right - 1] = rng.integers(1, 21)
    return mask


def write_voc_tree(
    root: Path,
    ids_per_split: dict[str, Sequence[str]],
    size: tuple[int, int] = (12, 16),
    seed: int = 0,
    with_aug: bool | Sequence[str] = False,
) -> dict[str, dict[str, np.ndarray]]:
    """Write ``root/VOCdevkit/VOC2012`` with ``ImageSets/Segmentation/<split>.txt`` for each split of
    ``ids_per_split`` and a JPEG plus a palette-PNG mask for every listed id.

    ``with_aug``: True writes ``SegmentationClassAug/<id>.png`` for every listed id (the VOC mask with its
    borders set to 0); a sequence of ids also writes those SBD-only ids (JPEG + aug mask, random classes).
    Returns ``{"SegmentationClass": {id: mask}, "SegmentationClassAug": {id: mask}}``.
    """
    rng = np.random.default_rng(seed)
    voc = Path(root) / "VOCdevkit" / "VOC2012"
    folders = ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation", "SegmentationClassAug"]
    for folder in folders[: 4 if with_aug else 3]:
        (voc / folder).mkdir(parents=True, exist_ok=True)
    written: dict[str, dict[str, np.ndarray]] = {"SegmentationClass": {}, "SegmentationClassAug": {}}
    for split, ids in ids_per_split.items():
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for image_id in ids:
            if image_id in written["SegmentationClass"]:
                continue
            mask = voc_mask(rng, size)
            _write_jpeg(rng, voc / "JPEGImages" / f"{image_id}.jpg", size)
            png = Image.fromarray(mask)
            png.putpalette(PALETTE_BYTES)
            png.save(voc / "SegmentationClass" / f"{image_id}.png")
            written["SegmentationClass"][image_id] = mask
            if with_aug:
                written["SegmentationClassAug"][image_id] = np.where(mask == 255, 0, mask).astype(np.uint8)
    extra = [] if isinstance(with_aug, bool) else list(with_aug)
    for image_id in extra:
        _write_jpeg(rng, voc / "JPEGImages" / f"{image_id}.jpg", size)
        written["SegmentationClassAug"][image_id] = rng.integers(0, 21, size, dtype=np.uint8)
    for image_id, mask in written["SegmentationClassAug"].items():
        Image.fromarray(mask).save(voc / "SegmentationClassAug" / f"{image_id}.png")
    return written


def _write_jpeg(rng: np.random.Generator, path: Path, size: tuple[int, int]) -> None:
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, quality=90)
