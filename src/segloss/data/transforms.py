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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from segloss.data.scale_crop import sample_scale_crop, scale_crop
from segloss.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


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


class Normalise:
    """``(x/m − mean)/std`` per channel → new contiguous float32 tensor, with m = 255 for integer
    images and m = 1 for floating ones (torchvision's ``ToDtype(scale=True)`` convention).

    ``on_device=True`` (``data.normalize_on_device``) leaves the normalisation to the model's device
    (:class:`segloss.models.module.SegmentationModule` normalises uint8 batches): images leave the
    workers as uint8 0–255 — a quarter of the bytes to pass between processes and to the GPU, and no
    float pass over them on the CPU.
    """

    def __init__(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, on_device: bool = False
    ) -> None:
        std_t, mean_t = torch.tensor(list(std), dtype=torch.float64), torch.tensor(list(mean), dtype=torch.float64)
        self.scale = (1 / (255 * std_t)).float()[:, None, None]  # for 0–255 values
        self.shift = (-mean_t / std_t).float()[:, None, None]
        self.on_device = on_device

    def __call__(self, image: torch.Tensor, mask: torch.Tensor | None = None):
        """The normalised image (uint8 0–255 with ``on_device``); given a mask too, the pair (image, mask)."""
        if self.on_device:
            out = image if image.dtype == torch.uint8 else to_uint8(image * (255 if image.is_floating_point() else 1))
        else:
            scale = self.scale * 255 if image.is_floating_point() else self.scale
            out = torch.addcmul(self.shift, image, scale, out=torch.empty(image.shape, dtype=torch.float32))
        return out if mask is None else (out, mask)

    def inplace(self, image: torch.Tensor) -> torch.Tensor:
        """Normalise a float32 image holding 0–255 values, in place (rounded to uint8 with ``on_device``)."""
        if self.on_device:
            return to_uint8(image)
        return image.mul_(self.scale).add_(self.shift)

    def __repr__(self) -> str:
        return f"Normalise(scale={self.scale.flatten().tolist()}, shift={self.shift.flatten().tolist()})"


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """A float image holding 0–255 values, rounded and clamped to uint8."""
    return image.round().clamp_(0, 255).to(torch.uint8)


def _grey(image: torch.Tensor) -> torch.Tensor:
    """Luma of a …×3×H×W image (one image or a batch)."""
    r, g, b = image.unbind(-3)
    return r.mul(GREY_WEIGHTS[0]).add_(g, alpha=GREY_WEIGHTS[1]).add_(b, alpha=GREY_WEIGHTS[2])


def shift_hue_(image: torch.Tensor, shift: float | torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of a float RGB image (…×3×H×W, any value scale) by ``shift`` turns, in place
    (a batch may take one shift per image, shaped N×1×1).

    Same result as torchvision's ``adjust_hue`` (rgb → hsv, h + shift, hsv → rgb) without the HSV
    round trip: max ``v``, min ``low`` and chroma ``c = v − low`` are unchanged. The hue sector
    coordinate 6h ∈ [0, 6) is ((g − b)/c, 2 + (b − r)/c, 4 + (r − g)/c) where R, else G, else B
    is the max; with H = 6h + 6·shift mod 6, channel = ``low + c·w`` with w_R = clamp(|H − 3| − 1),
    w_G = clamp(2 − |H − 2|), w_B = clamp(2 − |H − 4|) clamped to [0, 1]. Branch-free: the "is the
    max" masks are 1 − sign(v − channel), which is far cheaper on CPU than comparisons + ``where``.
    """
    r, g, b = image.unbind(-3)
    v = torch.maximum(torch.maximum(r, g), b)
    low = torch.minimum(torch.minimum(r, g), b)
    chroma = v - low
    is_r = torch.sub(v, r).sign_().neg_().add_(1)  # v ≥ r, so sign(v − r) ∈ {0, 1}
    is_g = torch.sub(v, g).sign_().neg_().add_(1).mul_(1 - is_r)
    is_b = 1 - is_r - is_g
    sector = (g - b).mul_(is_r)
    sector.addcmul_((b - r).add_(chroma, alpha=2), is_g).addcmul_((r - g).add_(chroma, alpha=4), is_b)
    sector.div_(chroma.sign().neg_().add_(chroma).add_(1)).add_(6 * shift).remainder_(6)  # c, or 1 for greys
    for channel, centre, rising in ((r, 3.0, True), (g, 2.0, False), (b, 4.0, False)):
        weight = torch.sub(sector, centre).abs_()
        weight = (weight.sub_(1) if rising else weight.neg_().add_(2)).clamp_(0, 1)
        torch.addcmul(low, chroma, weight, out=channel)
    return image


def apply_jitter_(image: torch.Tensor, op: int, factor: float | torch.Tensor) -> torch.Tensor:
    """One ``PhotometricJitter`` operation on a float 0–255 image, in place, clamped to [0, 255]:
    0 brightness ``x·f``, 1 contrast ``x·f + (1 − f)·mean(grey)``, 2 saturation ``x·f + (1 − f)·grey``,
    3 hue :func:`shift_hue_`. A batch (N×3×H×W) may take one factor per image (N×1×1×1); then every
    step stays on the device (no value is read back)."""
    if op == 3:
        shift_hue_(image, factor if not torch.is_tensor(factor) else factor.flatten(1)[:, :, None])
    elif op == 0:
        image.mul_(factor)
    elif not torch.is_tensor(factor):
        grey = _grey(image)
        image.mul_(factor)
        if op == 1:
            image.add_((1 - factor) * float(grey.mean()))
        else:
            image.add_(grey, alpha=1 - factor)
    else:
        grey = _grey(image).unsqueeze(-3)
        blend = grey.mean((-2, -1), keepdim=True) if op == 1 else grey
        image.mul_(factor).addcmul_(blend, 1 - factor)
    return image.clamp_(0, 255)


class PhotometricJitter:
    """``v2.ColorJitter(brightness, contrast, saturation, hue)`` on a float32 0–255 image, in place.

    Same parameter distribution and the same draws from torch's RNG: a random order of the four
    operations (``randperm(4)``), then factors U(max(0, 1 − s), 1 + s) for brightness, contrast and
    saturation and U(−h, h) for hue (a zero strength leaves the operation out). Each operation is
    torchvision's float kernel on the 0–255 scale with its clamp to [0, 255]: brightness ``x·f``,
    contrast ``x·f + (1 − f)·mean(grey)``, saturation ``x·f + (1 − f)·grey``, hue :func:`shift_hue_`.
    Unlike v2 on uint8 images, nothing is truncated to integers between the operations.
    """

    def __init__(self, brightness: float = 0, contrast: float = 0, saturation: float = 0, hue: float = 0) -> None:
        self.ranges = [(max(0.0, 1 - s), 1 + s) if s else None for s in (brightness, contrast, saturation)]
        self.ranges.append((-hue, hue) if hue else None)

    def draw(self) -> tuple[list[int], list[float | None]]:
        """The random order of the four operations and their factors (None = left out), drawn from
        torch's RNG as ``v2.ColorJitter`` does."""
        order = torch.randperm(4).tolist()
        factors = [None if rng is None else float(torch.empty(1).uniform_(*rng)) for rng in self.ranges]
        return order, factors

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        order, factors = self.draw()
        for op in order:
            if factors[op] is not None:
                apply_jitter_(image, op, factors[op])
        return image

    def __repr__(self) -> str:
        return f"PhotometricJitter(ranges={self.ranges})"


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
        from segloss.data.device_augment import DeviceAugmentation

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
