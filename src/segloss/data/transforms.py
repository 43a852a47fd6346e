"""Joint image/mask transforms.

Items are dicts ``{"image": uint8 3×H×W, "mask": int64 H×W, "name": str, ...}``; extra keys pass
through untouched. Image and mask always see the same geometry; masks are resampled with nearest
neighbours and padded with ``ignore_index`` (padding never invents labels). Images end as float32
``(x/255 − mean)/std``, computed as one multiply-add per channel ``x·(1/(255·std)) − mean/std``.

Training (:func:`train_transform`) has two back-ends with the same random parameters:

* ``resample="fast"`` (default): :mod:`segloss.data.scale_crop` draws the scale, the crop window
  and the flip first and resamples only the window from the uint8 frame (bilinear, no antialias),
  then :class:`PhotometricJitter` and the normalisation run in place on the float crop.
* ``resample="torchvision"``: the v2 pipeline ScaleJitter → RandomCrop(pad_if_needed) → flip →
  ColorJitter → ToDtype → Normalize, which resizes the whole frame (antialiased) before cropping.

With ``augment_on_device`` the "fast" back-end is split between the loader and the model's device
(:mod:`segloss.data.device_augment`). The pixel-value operations (normalisation, jitter) live in
:mod:`segloss.data.photometric`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from segloss.data.device_augment import DeviceAugmentation
from segloss.data.photometric import IMAGENET_MEAN, IMAGENET_STD, Normalise, PhotometricJitter
from segloss.data.scale_crop import sample_scale_crop, scale_crop
from segloss.errors import ConfigError
from segloss.utils import consumer_rules
from segloss.utils.rules import require_all

# The rules of data.train_transform's sizes: applied by train_transform, declared in utils.consumer_rules.
TRAIN_TRANSFORM_RULES = consumer_rules.TRAIN_TRANSFORM


class JointTransform:
    """Apply ``pipeline(image, mask) -> (image, mask)`` to an item dict, keeping the other keys.
    A torchvision v2 pipeline gets its inputs as ``tv_tensors.Image`` / ``tv_tensors.Mask``."""

    def __init__(self, pipeline: Callable) -> None:
        self.pipeline = pipeline

    def __call__(self, sample: dict) -> dict:
        image, mask = sample["image"], sample["mask"]
        if isinstance(self.pipeline, v2.Transform):
            image, mask = tv_tensors.Image(image), tv_tensors.Mask(mask)
        image, mask = self.pipeline(image, mask)
        return {**sample, "image": image.as_subclass(torch.Tensor), "mask": mask.as_subclass(torch.Tensor)}

    def __repr__(self) -> str:
        return f"JointTransform({self.pipeline})"


class FastTrainPipeline:
    """Random scale + crop + flip (:mod:`segloss.data.scale_crop`), jitter, normalise."""

    def __init__(self, crop_size, base_size, scale_range, hflip, ignore_index, jitter, normalise) -> None:
        self.crop_size, self.base_size, self.scale_range = tuple(crop_size), tuple(base_size), tuple(scale_range)
        self.hflip, self.ignore_index, self.jitter, self.normalise = hflip, ignore_index, jitter, normalise

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = sample_scale_crop(image.shape[-2:], self.base_size, self.scale_range, self.crop_size, self.hflip)
        unit_range = image.is_floating_point()  # float frames hold 0–1 values, uint8 ones 0–255
        image, mask = scale_crop(image, mask, params, fill=0.0, ignore_index=self.ignore_index)
        if unit_range:
            image.mul_(255)
        if self.jitter is not None:
            self.jitter(image)
        return self.normalise.inplace(image), mask

    def __repr__(self) -> str:
        return (
            f"FastTrainPipeline(crop_size={self.crop_size}, base_size={self.base_size}, "
            f"scale_range={self.scale_range}, hflip={self.hflip}, ignore_index={self.ignore_index}, "
            f"jitter={self.jitter}, normalise={self.normalise})"
        )


def _torchvision_pipeline(crop_size, base_size, scale_range, hflip, ignore_index, color_jitter, mean, std, on_device):
    (crop_h, crop_w), (base_h, base_w) = crop_size, base_size
    steps: list[v2.Transform] = [
        # ScaleJitter reads target_size as (W, H): r = min(target[1]/h, target[0]/w) · scale.
        v2.ScaleJitter(target_size=(base_w, base_h), scale_range=tuple(scale_range), antialias=True),
        v2.RandomCrop((crop_h, crop_w), pad_if_needed=True, fill={tv_tensors.Mask: ignore_index, "others": 0}),
    ]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(p=hflip))
    if color_jitter is not None:
        brightness, contrast, saturation, hue = color_jitter
        steps.append(v2.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue))
    if not on_device:  # otherwise the uint8 crop goes to the model's device as it is
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    return v2.Compose(steps)


def train_transform(
    crop_size: Sequence[int],
    base_size: Sequence[int],
    scale_range: Sequence[float] = (0.5, 2.0),
    hflip: float = 0.5,
    ignore_index: int = 255,
    color_jitter: Sequence[float] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    resample: str = "fast",
    normalize_on_device: bool = False,
    augment_on_device: bool = False,
):
    """The standard segmentation recipe (DeepLab, MMSegmentation): random scale, crop, flip,
    photometric jitter, normalise.

    The image is scaled by ``r = min(base_h/h, base_w/w) · U(scale_range)`` (``base_size`` = (H, W),
    aspect ratio kept), then a ``crop_size`` (H, W) window is cut at a uniformly random valid
    position, padding with 0 (image) and ``ignore_index`` (mask) where the scaled image is smaller
    than the crop; the crop is flipped left-right with probability ``hflip``. ``color_jitter`` =
    (brightness, contrast, saturation, hue) strengths as in ``v2.ColorJitter`` (image only), or None.
    ``resample``: ``"fast"`` (window-only bilinear resampling, no antialias) or ``"torchvision"``
    (whole-frame antialiased v2 resize, then crop); both draw the same random parameters.
    ``normalize_on_device``: return uint8 images and leave the normalisation to the model (:class:`Normalise`).
    ``augment_on_device``: the loader only draws the parameters and cuts the uint8 source region; scale,
    crop, flip, jitter and normalisation run on the model's device
    (:class:`segloss.data.device_augment.DeviceAugmentation`; same parameters, same results).
    """
    require_all(TRAIN_TRANSFORM_RULES, {"crop_size": crop_size, "base_size": base_size})
    check_crop(crop_size, base_size, scale_range)
    if augment_on_device and resample != "fast":
        raise ConfigError(
            f"data.augment_on_device=true runs the 'fast' resampling on the device, but resample={resample!r}; "
            "set data.train_transform.resample=fast or data.augment_on_device=false"
        )
    if resample == "torchvision":
        args = (crop_size, base_size, scale_range, hflip, ignore_index, color_jitter, mean, std, normalize_on_device)
        return JointTransform(_torchvision_pipeline(*args))
    if resample != "fast":
        raise ValueError(f"resample must be 'fast' or 'torchvision', got {resample!r}")
    jitter = None if color_jitter is None else PhotometricJitter(*color_jitter)
    if augment_on_device:
        normalise = Normalise(mean, std)  # on the device, to float: what the model takes
        return DeviceAugmentation(crop_size, base_size, scale_range, hflip, ignore_index, jitter, normalise)
    normalise = Normalise(mean, std, on_device=normalize_on_device)
    return JointTransform(FastTrainPipeline(crop_size, base_size, scale_range, hflip, ignore_index, jitter, normalise))


def check_crop(crop_size: Sequence[int], base_size: Sequence[int], scale_range: Sequence[float]) -> None:
    """A crop must be positive and fit inside the frame at the largest scale: a bigger one would be
    padding (ignored pixels) on every side at every scale, wasting the whole border of each batch."""
    (crop_h, crop_w), (base_h, base_w), (low, high) = crop_size, base_size, scale_range
    if min(crop_h, crop_w, base_h, base_w) <= 0 or not 0 < low <= high:
        raise ConfigError(
            f"train_transform: crop_size={list(crop_size)}, base_size={list(base_size)} and scale_range="
            f"{list(scale_range)} must be positive (and scale_range low ≤ high)"
        )
    if crop_h > base_h * high or crop_w > base_w * high:
        raise ConfigError(
            f"train_transform: crop_size={list(crop_size)} (H, W) is larger than the frame at the largest scale "
            f"({round(base_h * high)}×{round(base_w * high)} = base_size {list(base_size)} × {high}), so every crop "
            "would be part padding; lower crop_size or raise base_size / scale_range"
        )


def eval_transform(
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, normalize_on_device: bool = False
) -> JointTransform:
    """Whole images, normalised only (no resizing: metrics are computed at the label resolution);
    uint8 as decoded with ``normalize_on_device``."""
    return JointTransform(Normalise(mean, std, on_device=normalize_on_device))
