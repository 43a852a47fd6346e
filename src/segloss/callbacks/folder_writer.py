"""``make predict``'s writer: each predicted image as a palette PNG of class indices (and an overlay)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from segloss.utils.visualize import palette_lut, save_palette_png


def blend_classes(image, indices: np.ndarray, lut: np.ndarray):
    """``round((image + colour) / 2)`` per channel (halves rounded up): the image blended 50 % with the classes."""
    from PIL import Image

    rgb = image.permute(1, 2, 0).cpu().numpy().astype(np.uint16)
    return Image.fromarray(((rgb + lut[indices] + 1) // 2).astype(np.uint8))


class FolderWriter(BasePredictionWriter):
    """After every predict batch, write ``targets[i] = (mask path, overlay path or None)`` of each image ``i``
    of the batch (``prediction``: uint8 H×W class indices per image, from ``SegmentationModule.predict_step``).
    Keeps what this process wrote (``written``, ``overlays``) and the images it could not read (``failed``:
    index → reason); ``make predict`` gathers them over the processes."""

    def __init__(self, targets: Sequence[tuple[Path, Path | None]], palette: Sequence[Sequence[int]]) -> None:
        super().__init__(write_interval="batch")
        self.targets, self.palette, self.lut = list(targets), palette, palette_lut(palette)
        self.written: list[int] = []
        self.overlays: list[int] = []
        self.failed: dict[int, str] = {}

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        self.failed.update(batch["failed"])
        for index, classes, rgb in zip(batch["index"], prediction, batch["rgb"], strict=True):
            indices = classes.cpu().numpy()
            mask_path, overlay_path = self.targets[index]
            save_palette_png(indices, self.palette, mask_path)
            self.written.append(index)
            if overlay_path is not None:
                blend_classes(rgb, indices, self.lut).save(overlay_path)
                self.overlays.append(index)
