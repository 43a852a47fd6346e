"""The part that every 2D image/label-file dataset shares (Cityscapes, VOC, image/mask folders)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from segloss.data.image_io import read_image
from segloss.errors import DatasetFormatError


def check_utf8_names(paths: list[Path], dataset: str) -> None:
    """Refuse file names that are not UTF-8 (bytes from another locale): they would break later, far from
    here, when a name is logged, written to a CSV or a W&B table."""
    for path in paths:
        try:
            str(path).encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(path).decode("utf-8", "backslashreplace")
            raise DatasetFormatError(
                f"{dataset}: the file name {shown} is not UTF-8 (written under another locale); rename it, e.g. "
                "with convmv -f latin1 -t utf8 --notest"
            ) from None


class ImageMaskFiles(Dataset):
    """Base of datasets whose ``samples[i]`` is ``(name, image_path, mask_path)``; subclasses build
    ``samples`` and read labels in ``load_mask(i)`` (int64 H×W). Items are
    ``{"image": uint8 3×H×W, "mask": int64 H×W, "name": str}``, passed through ``transform`` if set."""

    samples: list[tuple[str, Path, Path | None]]
    transform: Callable | None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def label_paths(self) -> list[Path]:
        """The label files (what a cache of label statistics must notice changing)."""
        return [mask for _, _, mask in self.samples if mask is not None]

    def load_mask(self, index: int) -> torch.Tensor:
        raise NotImplementedError

    def image_size(self, index: int) -> tuple[int, int]:
        """(H, W) of sample ``index`` from the image header only (PIL decodes lazily)."""
        with Image.open(self.samples[index][1]) as img:
            return img.height, img.width

    def __getitem__(self, index: int) -> dict:
        name, image_path, mask_path = self.samples[index]
        image = read_image(image_path)
        mask = self.load_mask(index)
        if tuple(mask.shape) != tuple(image.shape[1:]):
            raise DatasetFormatError(
                f"image {image_path} is {tuple(image.shape[1:])} but its mask {mask_path} is {tuple(mask.shape)}"
            )
        sample = {"image": image, "mask": mask, "name": name}
        return self.transform(sample) if self.transform is not None else sample
