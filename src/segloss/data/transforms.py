"""Joint image/mask transforms built on torchvision.transforms.v2.

Items are dicts ``{"image": uint8 3×H×W, "mask": int64 H×W, "name": str}``. Masks travel as
``tv_tensors.Mask`` so resizing uses nearest neighbours and padding fills them with ``ignore_index``
(padding never invents labels). Images end as float32, normalised with ``mean``/``std``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class JointTransform:
    """Apply a v2 pipeline to an item dict, keeping image and mask aligned."""

    def __init__(self, pipeline: v2.Transform) -> None:
        self.pipeline = pipeline

    def __call__(self, sample: dict) -> dict:
        image, mask = self.pipeline(tv_tensors.Image(sample["image"]), tv_tensors.Mask(sample["mask"]))
        return {**sample, "image": image.as_subclass(torch.Tensor), "mask": mask.as_subclass(torch.Tensor)}

    def __repr__(self) -> str:
        return f"JointTransform({self.pipeline})"


def _normalise(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def train_transform(
    crop_size: Sequence[int],
    base_size: Sequence[int],
    scale_range: Sequence[float] = (0.5, 2.0),
    hflip: float = 0.5,
    ignore_index: int = 255,
    color_jitter: Sequence[float] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> JointTransform:
    """The standard segmentation recipe (DeepLab, MMSegmentation): random scale, crop, flip,
    photometric jitter, normalise.

    The image is resized so it fits ``base_size`` (H, W) times a factor drawn from ``scale_range``
    (keeping its aspect ratio), then a ``crop_size`` (H, W) window is cut at random, padding with 0
    (image) and ``ignore_index`` (mask) where the scaled image is smaller than the crop.
    ``color_jitter`` = (brightness, contrast, saturation, hue) strengths of ``v2.ColorJitter``
    (image only), or None for no photometric change.
    """
    crop_h, crop_w = crop_size
    steps: list[v2.Transform] = [
        v2.ScaleJitter(target_size=tuple(base_size), scale_range=tuple(scale_range), antialias=True),
        v2.RandomCrop((crop_h, crop_w), pad_if_needed=True, fill={tv_tensors.Mask: ignore_index, "others": 0}),
    ]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(p=hflip))
    if color_jitter is not None:
        brightness, contrast, saturation, hue = color_jitter
        steps.append(v2.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue))
    return JointTransform(v2.Compose(steps + _normalise(mean, std)))


def eval_transform(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> JointTransform:
    """Whole images, normalised only (no resizing: metrics are computed at the label resolution)."""
    return JointTransform(v2.Compose(_normalise(mean, std)))
