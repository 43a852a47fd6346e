"""Pixel-value operations shared by the CPU training pipeline (:mod:`segloss.data.transforms`) and the
device one (:mod:`segloss.data.device_augment`): the normalisation and torchvision-equivalent photometric
jitter on float images holding 0–255 values, for one image (3×H×W) or a batch (N×3×H×W)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from segloss.utils.normalisation import IMAGENET_MEAN, IMAGENET_STD

GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


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
