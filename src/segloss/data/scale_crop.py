"""Joint random scale + crop (+ horizontal flip) that resamples only the pixels the crop keeps.

The classic recipe resizes the whole frame by a random factor and then cuts a window out of it: at
factor 2 a 1024×2048 Cityscapes frame becomes 2048×4096 and 7/8 of it is thrown away. Here the
scale and the window are drawn first and only the window is computed, from the source rows and
columns it needs. The result is the same as resize-whole-then-crop:

* image: bilinear with ``align_corners=False`` and **no antialiasing**, as
  ``torch.nn.functional.interpolate(mode="bilinear", antialias=False)`` (MMSegmentation and cv2
  do not antialias either). Output position ``o`` of an axis resized ``n → m`` reads source
  ``s = max((o + 0.5)·n/m − 0.5, 0)``, ``i0 = min(⌊s⌋, n − 1)``, ``i1 = min(i0 + 1, n − 1)``,
  weight ``λ = s − i0`` on ``i1``, all in float32 with ``n/m`` rounded to float32 as torch's 2-D
  kernel does (some torch code paths fuse the multiply-add, so ``s`` may differ by one float32
  ulp). The rows are blended first, then the columns (torch blends columns first). Values agree
  to ~3e-5 on the 0–255 scale, at worst 255 · ulp(s) (≤ 0.03 grey levels at 2048 px), not bit for
  bit. Output is float32 on the input's value scale (0–255 floats for uint8 input, not rounded).
* mask: nearest with torch's ``mode="nearest"`` rule ``i = min(⌊o · float32(n/m)⌋, n − 1)``;
  exact, so it only ever holds input values or ``ignore_index``.
* padding: where the scaled frame is smaller than the crop, the image is ``fill`` and the mask
  ``ignore_index`` there.
* flip: mirrors the crop (padding included) by reversing the column taps: no extra pass.

Random parameters (:func:`sample_scale_crop`) follow ``v2.ScaleJitter`` + ``v2.RandomCrop(
pad_if_needed=True)`` + ``v2.RandomHorizontalFlip``, drawing from torch's RNG in the same order:
``r = min(base_h/h, base_w/w) · U(scale_range)`` (float32), scaled size ``(int(h·r), int(w·r))``;
along each axis the window offset in the scaled frame is uniform over ``[0, m − c]`` when the
scaled size ``m`` is at least the crop ``c``, and over ``[m − c, 0]`` when it is smaller (the frame
lands at a uniform position inside the padded crop, as torchvision pads ``c − m`` on both sides and
then crops at random); flip when ``U(0, 1) < hflip``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ScaleCropParams:
    """One draw: the frame is (virtually) resized to ``scaled_size`` (H, W); the crop of
    ``crop_size`` starts at (``top``, ``left``) of the scaled frame (negative = padding first)."""

    scaled_size: tuple[int, int]
    top: int
    left: int
    crop_size: tuple[int, int]
    flip: bool = False


def _offset(scaled: int, crop: int, generator: torch.Generator | None) -> int:
    if scaled == crop:
        return 0
    draw = int(torch.randint(0, abs(scaled - crop) + 1, size=(), generator=generator))
    return draw if scaled > crop else draw - (crop - scaled)


def sample_scale_crop(
    frame_size: Sequence[int],
    base_size: Sequence[int],
    scale_range: Sequence[float],
    crop_size: Sequence[int],
    hflip: float = 0.0,
    generator: torch.Generator | None = None,
) -> ScaleCropParams:
    """Draw scale, window and flip for a frame of ``frame_size`` (H, W) (see the module docstring)."""
    (h, w), (base_h, base_w), (crop_h, crop_w) = frame_size, base_size, crop_size
    lo, hi = scale_range
    factor = lo + torch.rand(1, generator=generator) * (hi - lo)
    r = min(base_h / h, base_w / w) * factor  # float32, as in v2.ScaleJitter
    scaled_h, scaled_w = int(h * r), int(w * r)
    top = _offset(scaled_h, crop_h, generator)
    left = _offset(scaled_w, crop_w, generator)
    flip = hflip > 0 and bool(torch.rand(1, generator=generator) < hflip)
    return ScaleCropParams((scaled_h, scaled_w), top, left, (crop_h, crop_w), flip)


@dataclass(frozen=True)
class AxisTaps:
    """Source taps of the crop positions ``[lo, hi)`` that fall inside the scaled frame."""

    lo: int
    hi: int
    i0: torch.Tensor  # int64 source index of each position (bilinear: left/upper tap; nearest: the tap)
    i1: torch.Tensor | None = None  # bilinear: right/lower tap
    weight: torch.Tensor | None = None  # bilinear: float32 weight of i1


def _inside(offset: int, crop: int, scaled: int) -> tuple[int, int]:
    """Scaled-frame positions ``[first, last)`` covered by the window."""
    return max(offset, 0), min(offset + crop, scaled)


def _mirror(taps: AxisTaps, crop: int) -> AxisTaps:
    rev = [None if t is None else t.flip(0) for t in (taps.i0, taps.i1, taps.weight)]
    return AxisTaps(crop - taps.hi, crop - taps.lo, *rev)


def linear_taps(source: int, scaled: int, offset: int, crop: int, flip: bool = False) -> AxisTaps:
    """Bilinear taps (align_corners=False, no antialias) of a window of ``crop`` positions starting at
    ``offset`` in an axis resized ``source → scaled``."""
    first, last = _inside(offset, crop, scaled)
    ratio = float(np.float32(source) / np.float32(scaled))
    src = (torch.arange(first, last, dtype=torch.float32) + 0.5).mul_(ratio).sub_(0.5).clamp_(min=0)
    i0 = src.floor().long().clamp_(max=source - 1)
    weight = src.sub_(i0).clamp_(0, 1)
    i1 = (i0 + 1).clamp_(max=source - 1)
    taps = AxisTaps(first - offset, last - offset, i0, i1, weight)
    return _mirror(taps, crop) if flip else taps


def nearest_taps(source: int, scaled: int, offset: int, crop: int, flip: bool = False) -> AxisTaps:
    """Nearest taps with the rule of ``F.interpolate(mode="nearest")``."""
    first, last = _inside(offset, crop, scaled)
    ratio = float(np.float32(source) / np.float32(scaled))
    i0 = torch.arange(first, last, dtype=torch.float32).mul_(ratio).floor_().long().clamp_(max=source - 1)
    taps = AxisTaps(first - offset, last - offset, i0)
    return _mirror(taps, crop) if flip else taps


CHUNK_FLOATS = 1 << 18  # float32 elements of row-blend intermediate per chunk (1 MiB: stays in cache)


def _resample_image(image: torch.Tensor, rows: AxisTaps, cols: AxisTaps, out: torch.Tensor) -> None:
    """Bilinear samples of ``image`` (C×H×W, any dtype) written into ``out`` (C×h×w float32, the
    crop's inside region): the needed rows are blended on the needed column span only, then the
    columns, a band of output rows at a time so that the float intermediates stay in cache.

    Rows are gathered along the leading axis of a view that follows the image's memory layout:
    H×W×C for a C×H×W view of H×W×C storage (what decoders return; a column gather then moves whole
    pixels), H×C×W for contiguous C×H×W (columns gathered on the flattened H·C×W rows)."""
    c0 = int(torch.minimum(cols.i0.min(), cols.i1.min()))
    c1 = int(torch.maximum(cols.i0.max(), cols.i1.max())) + 1
    channels, m = image.shape[0], cols.i0.numel()
    col_index = torch.cat([cols.i0, cols.i1]).sub_(c0)
    last = channels > 1 and image.stride(0) == 1  # channels last
    span = image.permute(1, 2, 0)[:, c0:c1] if last else image.transpose(0, 1)[:, :, c0:c1]
    target = out.permute(1, 2, 0) if last else out.transpose(0, 1)
    col_weight = cols.weight[:, None] if last else cols.weight
    band = max(1, CHUNK_FLOATS // (2 * channels * (c1 - c0)))
    for start in range(0, rows.i0.numel(), band):
        i0, i1 = rows.i0[start : start + band], rows.i1[start : start + band]
        n, weight = i0.numel(), rows.weight[start : start + band, None, None]
        both = span.index_select(0, torch.cat([i0, i1])).to(torch.float32)
        blended = both[:n].lerp_(both[n:], weight)
        if last:
            picked = blended.index_select(1, col_index)
            torch.lerp(picked[:, :m], picked[:, m:], col_weight, out=target[start : start + n])
        else:
            picked = blended.view(n * channels, -1).index_select(1, col_index).view(n, channels, 2 * m)
            torch.lerp(picked[..., :m], picked[..., m:], col_weight, out=target[start : start + n])


def scale_crop(
    image: torch.Tensor,
    mask: torch.Tensor | None,
    params: ScaleCropParams,
    fill: float = 0.0,
    ignore_index: int = 255,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply ``params`` to ``image`` (C×H×W, uint8 or float) and ``mask`` (H×W integer, or None).

    Returns the float32 C×h×w crop on the image's value scale (uint8 in → 0–255 floats out, not
    rounded) and the int64 h×w mask crop (``ignore_index`` in the padding).
    """
    (height, width), (scaled_h, scaled_w) = image.shape[-2:], params.scaled_size
    crop_h, crop_w = params.crop_size
    out = torch.full((image.shape[0], crop_h, crop_w), fill, dtype=torch.float32)
    rows = linear_taps(height, scaled_h, params.top, crop_h)
    cols = linear_taps(width, scaled_w, params.left, crop_w, params.flip)
    if rows.hi > rows.lo and cols.hi > cols.lo:
        _resample_image(image, rows, cols, out[:, rows.lo : rows.hi, cols.lo : cols.hi])
    if mask is None:
        return out, None
    mask_out = torch.full((crop_h, crop_w), ignore_index, dtype=torch.int64)
    rows = nearest_taps(height, scaled_h, params.top, crop_h)
    cols = nearest_taps(width, scaled_w, params.left, crop_w, params.flip)
    if rows.hi > rows.lo and cols.hi > cols.lo:
        c0 = int(cols.i0.min())
        picked = mask[:, c0 : int(cols.i0.max()) + 1].index_select(0, rows.i0)
        index = (cols.i0 - c0).expand(rows.i0.numel(), -1)
        mask_out[rows.lo : rows.hi, cols.lo : cols.hi] = torch.gather(picked, 1, index)
    return out, mask_out
