"""Training augmentation on the model's device (``data.augment_on_device``).

At Cityscapes resolution the CPU cost of a training item is decoding two PNGs plus the random scale,
crop, flip, photometric jitter and normalisation of :class:`segloss.data.transforms.FastTrainPipeline`.
A GPU that trains 180 frames/s of 2048×1024 outruns what the loader processes can augment, so here
the work is split in two:

* **in the loader worker** (:class:`DeviceAugmentation`, a drop-in ``train_transform``): decode, draw
  the item's random parameters from the item's seeded RNG exactly as the CPU pipeline does (scale,
  window, flip, then the jitter's order and factors — so the (seed, epoch, index) contract and exact
  resume hold unchanged), and cut the **uint8 source region** the crop reads (at scale 2 a quarter of
  the crop's area, at scale 0.5 four times) with the mask region as uint8 when its values fit.
  The sampling taps (source row/column of each crop position and its bilinear weight, relative to the
  region) and the jitter factors travel with the item as small tensors; :func:`collate` groups the
  jitter operations of a batch by position.
* **on the device** (:func:`augment_batch`, called from
  ``SegmentationDataModule.on_after_batch_transfer``): one batched bilinear resample (rows then
  columns, the same arithmetic as :func:`segloss.data.scale_crop.scale_crop`), the nearest-neighbour
  mask resample, the padding (0 / ``ignore_index``), the jitter operations of each position applied to
  the images that have them at that position, and the normalisation. Nothing is read back to the host.

Results match the CPU pipeline within float rounding (the contrast mean is reduced in another order;
tested on CPU to 1e-3 grey levels, masks exactly) — a run with ``augment_on_device`` sees the same
crops as one without.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import default_collate, get_worker_info

from segloss.data.photometric import Normalise, PhotometricJitter, apply_jitter_
from segloss.data.scale_crop import AxisTaps, linear_taps, nearest_taps, sample_scale_crop

AXES = ("row", "col")


def _full(taps: AxisTaps, crop: int, origin: int) -> dict[str, Tensor]:
    """Crop-length tap vectors relative to the region's ``origin``; positions outside the scaled
    frame (padding) read index 0 with weight 0 and are marked by ``inside``."""
    i0 = torch.zeros(crop, dtype=torch.int64)
    inside = torch.zeros(crop, dtype=torch.bool)
    i0[taps.lo : taps.hi] = taps.i0 - origin
    inside[taps.lo : taps.hi] = True
    out = {"i0": i0, "inside": inside}
    if taps.i1 is not None:
        i1, weight = torch.zeros(crop, dtype=torch.int64), torch.zeros(crop, dtype=torch.float32)
        i1[taps.lo : taps.hi] = taps.i1 - origin
        weight[taps.lo : taps.hi] = taps.weight
        out.update(i1=i1, weight=weight)
    return out


def _span(*taps: AxisTaps) -> tuple[int, int]:
    """Source indices ``[first, last)`` read by any of ``taps`` (at least one index)."""
    used = [t for tap in taps for t in (tap.i0, tap.i1) if t is not None and t.numel()]
    if not used:
        return 0, 1
    return int(min(int(t.min()) for t in used)), int(max(int(t.max()) for t in used)) + 1


def _narrow_mask(mask: Tensor, ignore_index: int) -> Tensor:
    """The mask as uint8 when every value (and ``ignore_index``) fits: an eighth of int64's bytes."""
    if mask.dtype == torch.uint8 or not 0 <= ignore_index <= 255 or mask.numel() == 0:
        return mask
    low, high = torch.aminmax(mask)
    return mask.to(torch.uint8) if int(low) >= 0 and int(high) <= 255 else mask


class DeviceAugmentation:
    """The loader half of ``data.augment_on_device``: a ``train_transform`` for item dicts that draws
    the parameters of :class:`segloss.data.transforms.FastTrainPipeline` and leaves the pixels to
    :func:`augment_batch`. Items keep ``image``/``mask`` (the source regions) and gain ``augment``."""

    def __init__(
        self,
        crop_size: Sequence[int],
        base_size: Sequence[int],
        scale_range: Sequence[float],
        hflip: float,
        ignore_index: int,
        jitter: PhotometricJitter | None,
        normalise: Normalise,
    ) -> None:
        self.crop_size, self.base_size, self.scale_range = tuple(crop_size), tuple(base_size), tuple(scale_range)
        self.hflip, self.ignore_index, self.jitter, self.normalise = hflip, ignore_index, jitter, normalise
        self._device_constants: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def __call__(self, sample: dict) -> dict:
        image, mask = sample["image"], sample["mask"]
        (height, width), (crop_h, crop_w) = image.shape[-2:], self.crop_size
        p = sample_scale_crop((height, width), self.base_size, self.scale_range, self.crop_size, self.hflip)
        order, factors = self.jitter.draw() if self.jitter is not None else ([0, 1, 2, 3], [None] * 4)
        (scaled_h, scaled_w) = p.scaled_size
        rows = linear_taps(height, scaled_h, p.top, crop_h), nearest_taps(height, scaled_h, p.top, crop_h)
        cols = (
            linear_taps(width, scaled_w, p.left, crop_w, p.flip),
            nearest_taps(width, scaled_w, p.left, crop_w, p.flip),
        )
        (r0, r1), (c0, c1) = _span(*rows), _span(*cols)
        augment = {}
        for axis, (linear, nearest), origin, crop in (("row", rows, r0, crop_h), ("col", cols, c0, crop_w)):
            taps = _full(linear, crop, origin)
            augment.update({f"{axis}_{k}": v for k, v in taps.items()})
            augment[f"{axis}_near"] = _full(nearest, crop, origin)["i0"]
        augment["order"] = torch.tensor(order)
        augment["factors"] = torch.tensor([float("nan") if f is None else f for f in factors], dtype=torch.float32)
        return {
            **sample,
            "image": image[:, r0:r1, c0:c1].contiguous(),
            "mask": _narrow_mask(mask[r0:r1, c0:c1].contiguous(), self.ignore_index),
            "augment": augment,
        }

    def constants(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """The normalisation's per-channel scale and shift on ``device`` (copied there once)."""
        if device not in self._device_constants:
            scale, shift = self.normalise.scale, self.normalise.shift
            self._device_constants[device] = (scale.to(device)[None], shift.to(device)[None])
        return self._device_constants[device]

    def __repr__(self) -> str:
        return (
            f"DeviceAugmentation(crop_size={self.crop_size}, base_size={self.base_size}, "
            f"scale_range={self.scale_range}, hflip={self.hflip}, ignore_index={self.ignore_index}, "
            f"jitter={self.jitter}, normalise={self.normalise})"
        )


def _packed(tensors: list[Tensor]) -> Tensor:
    """The tensors flattened end to end into one 1-D tensor — in shared memory inside a loader worker, as
    ``default_collate`` does, so that handing it to the main process copies nothing."""
    numel = sum(t.numel() for t in tensors)
    out = None
    if get_worker_info() is not None:
        storage = tensors[0]._typed_storage()._new_shared(numel, device=tensors[0].device)
        out = tensors[0].new(storage).resize_(numel)
    return torch.cat([t.reshape(-1) for t in tensors], out=out)


def collate(items: list[dict]) -> dict:
    """A batch of items from :class:`DeviceAugmentation`: the regions (of different sizes) packed end to
    end in one uint8 vector each for images and masks — no padding to the largest region, whose size
    is set by the smallest scale of the batch — with each item's ``offset`` and region ``size`` in
    ``augment``, plus ``groups``: for each of the four jitter positions, for each operation, the indices
    of the images that apply it there (None when none does), so the device applies each operation to
    those images only. Runs on the CPU, in the loader worker."""
    images, masks = [item["image"] for item in items], [item["mask"] for item in items]
    rest = default_collate([{k: v for k, v in item.items() if k not in ("image", "mask", "augment")} for item in items])
    augment = default_collate([item["augment"] for item in items])
    augment["size"] = torch.tensor([tuple(image.shape) for image in images])  # N×3: C, h, w of each region
    counts = torch.tensor([0] + [image[0].numel() for image in images])
    augment["offset"] = counts.cumsum(0)[:-1]  # pixels before each region (× C for the image vector)
    augment["channels"] = int(images[0].shape[0])  # a host value: shapes the device code
    order, factors = augment["order"], augment["factors"]
    groups = []
    for position in range(4):
        ops = []
        for op in range(4):
            chosen = (order[:, position] == op) & ~factors[:, op].isnan()
            ops.append(chosen.nonzero().flatten() if bool(chosen.any()) else None)
        groups.append(ops)
    augment["groups"] = groups
    return {**rest, "image": _packed(images), "mask": _packed(masks), "augment": augment}


def _resample(image: Tensor, aug: dict) -> Tensor:
    """Bilinear samples of the packed C×h_n×w_n regions at the crop taps → float32 N×C×h×w (0 in the
    padding). Each output reads its four source pixels directly from the packed vector, then blends
    the rows and then the columns: the arithmetic of :func:`segloss.data.scale_crop.scale_crop`."""
    size, offset = aug["size"], aug["offset"]
    channels, width = size[:, 0], size[:, 2]
    plane = size[:, 1] * width
    channel = torch.arange(aug["channels"], device=image.device)
    base = (offset * channels)[:, None] + channel * plane[:, None]  # N×C: where each region's planes start
    rows0, rows1 = aug["row_i0"] * width[:, None], aug["row_i1"] * width[:, None]  # N×h
    cols0, cols1 = aug["col_i0"], aug["col_i1"]  # N×w
    corner = base[:, :, None, None] + rows0[:, None, :, None] + cols0[:, None, None, :]  # N×C×h×w
    down = (rows1 - rows0)[:, None, :, None]
    right = (cols1 - cols0)[:, None, None, :]
    row_weight, col_weight = aug["row_weight"][:, None, :, None], aug["col_weight"][:, None, None, :]
    left = image.take(corner).float().lerp_(image.take(corner + down).float(), row_weight)
    corner += right
    far = image.take(corner).float().lerp_(image.take(corner.add_(down)).float(), row_weight)
    out = left.lerp_(far, col_weight)
    inside = aug["row_inside"][:, None, :, None] & aug["col_inside"][:, None, None, :]
    return out.masked_fill_(~inside, 0.0)


def _resample_mask(mask: Tensor, aug: dict, ignore_index: int) -> Tensor:
    """Nearest-neighbour crop of the packed mask regions (exact) → int64 N×h×w, ``ignore_index`` in the
    padding."""
    width = aug["size"][:, 2, None]
    rows = (aug["offset"][:, None] + aug["row_near"] * width)[:, :, None]
    picked = mask.take(rows + aug["col_near"][:, None, :]).long()
    inside = aug["row_inside"][:, :, None] & aug["col_inside"][:, None, :]
    return picked.masked_fill_(~inside, ignore_index)


def augment_batch(batch: dict, augmentation: DeviceAugmentation) -> dict:
    """The device half: the batch of source regions (on any device) → the batch contract
    ``{"image": float32 N×3×h×w normalised, "mask": int64 N×h×w, …}``. No host sync."""
    aug = batch["augment"]
    image = _resample(batch["image"], aug)
    if batch["image"].is_floating_point():  # float frames hold 0–1 values
        image.mul_(255)
    factors = aug["factors"]
    for ops in aug["groups"]:
        for op, members in enumerate(ops):
            if members is None:
                continue
            chosen = image.index_select(0, members)
            apply_jitter_(chosen, op, factors.index_select(0, members)[:, op, None, None, None])
            image.index_copy_(0, members, chosen)
    scale, shift = augmentation.constants(image.device)
    image.mul_(scale).add_(shift)
    mask = _resample_mask(batch["mask"], aug, augmentation.ignore_index)
    rest = {k: v for k, v in batch.items() if k not in ("augment", "image", "mask")}
    return {**rest, "image": image, "mask": mask}
