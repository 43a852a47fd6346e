"""Cityscapes trees whose images encode their own trainIds, a net that reads them back (OracleNet), and the
eval overrides that run it: predictions that are imperfect in a known way, for comparisons with the official
evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from segloss.data.cityscapes_labels import label_to_train_lut
from segloss.data.transforms import IMAGENET_MEAN, IMAGENET_STD

OFFSET, STEP = 6, 13  # the red channel of a test image encodes a trainId t as OFFSET + STEP·t


class OracleNet(nn.Module):
    """Reads the trainId that the test images encode in their red channel; knows nothing else."""

    def __init__(self, num_classes: int = 19, **_ignored) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.sharpness = nn.Parameter(torch.tensor(10.0))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        red = (image[:, 0].float() * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255
        train_id = ((red - OFFSET) / STEP).round().clamp(0, self.num_classes - 1).long()
        return nn.functional.one_hot(train_id, self.num_classes).permute(0, 3, 1, 2).float() * self.sharpness


def write_encoded_tree(root: Path, cities: dict[str, int], split: str = "val", size=(24, 40), seed=0) -> None:
    """Official layout; label ids from every id 0–33 in blocks; the image encodes a noisy copy of the
    trainIds (15 % of pixels and every ignored pixel encode a random class), so predictions are imperfect."""
    rng = np.random.default_rng(seed)
    lut = label_to_train_lut()
    for city, count in cities.items():
        (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
        (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            stem = f"{city}_{i:06d}_000019"
            blocks = rng.integers(0, 34, (size[0] // 4, size[1] // 4), dtype=np.uint8)
            label_ids = np.kron(blocks, np.ones((4, 4), dtype=np.uint8))
            train_ids = lut[label_ids].astype(np.int64)
            noisy = np.where((train_ids == 255) | (rng.random(size) < 0.15), rng.integers(0, 19, size), train_ids)
            rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            rgb[..., 0] = OFFSET + STEP * noisy
            Image.fromarray(rgb).save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
            Image.fromarray(label_ids).save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")


def eval_overrides(root: Path, ckpt: Path, out: Path, *extra: str) -> list[str]:
    return [
        "data=cityscapes",
        f"data.root={root}",
        "data.num_workers=0",
        "data.val_batch_size=2",
        "data.persistent_workers=false",
        "data.pin_memory=false",
        "model=unet",
        "model.net._target_=tests.helpers.cityscapes.OracleNet",
        f"ckpt_path={ckpt}",
        "save_predictions=true",
        f"predictions_dir={out}",
        "trainer=cpu",
        *extra,
    ]
