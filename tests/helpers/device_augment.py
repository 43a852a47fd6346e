"""Batches and settings shared by the augment-on-device tests (CPU and CUDA): the two paths from the same items."""

from __future__ import annotations

import torch

from segloss.data.datamodule import PadCollate
from segloss.data.device_augment import augment_batch
from segloss.data.transforms import train_transform
from segloss.utils.seeding import seeded_rngs

ARGS = {
    "crop_size": (40, 50),
    "base_size": (60, 90),
    "scale_range": (0.3, 2.0),  # small scales pad the crop, large ones cut a small region
    "hflip": 0.5,
    "ignore_index": 255,
    "color_jitter": (0.3, 0.4, 0.5, 0.2),
}


def augment_items(count: int, layout: str, size=(60, 90)) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(count):
        image = torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=g)
        if layout == "channels_last":  # what image decoders return: H×W×C storage
            image = image.permute(1, 2, 0).contiguous().permute(2, 0, 1)
        elif layout == "float":  # 0–1 floats
            image = image.float() / 255
        mask = torch.randint(0, 5, size, generator=g)
        mask[: 3 + i] = 255
        items.append({"image": image, "mask": mask, "name": f"frame{i}"})
    return items


def both_paths(items: list[dict], args: dict) -> tuple[dict, dict, list[dict]]:
    """The CPU pipeline's batch and the device path's batch (run here on the CPU) for the same item seeds."""
    cpu, deferred = train_transform(**args), train_transform(**args, augment_on_device=True)
    reference, regions = [], []
    for i, item in enumerate(items):
        with seeded_rngs(1000 + i):
            reference.append(cpu(dict(item)))
        with seeded_rngs(1000 + i):
            regions.append(deferred(dict(item)))
    expected = PadCollate(255)(reference)
    return expected, augment_batch(PadCollate(255)(regions), deferred), regions
