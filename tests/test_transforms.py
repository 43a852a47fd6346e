"""Joint transforms: the window-only scale + crop against resize-whole-then-crop, the random
parameters against torchvision's, joint geometry, mask values and padding, jitter, normalisation,
and a smoke run of the data-loading benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from segloss.data.photometric import shift_hue_
from segloss.data.scale_crop import ScaleCropParams, sample_scale_crop, scale_crop
from segloss.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalise,
    PhotometricJitter,
    eval_transform,
    train_transform,
)

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("fast", "torchvision")


def frame(height: int, width: int, channels_last: bool, seed: int = 0) -> torch.Tensor:
    """Random uint8 3×H×W image, stored H×W×C (as decoders return it) or C×H×W."""
    gen = torch.Generator().manual_seed(seed)
    if channels_last:
        return torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=gen).permute(2, 0, 1)
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=gen)


def resize_then_crop(image, mask, p: ScaleCropParams, fill=0.0, ignore=255):
    """Reference: whole-frame F.interpolate, padded on every side, then the window (then the flip)."""
    full = F.interpolate(image.float()[None], size=p.scaled_size, mode="bilinear", align_corners=False)[0]
    full_mask = F.interpolate(mask[None, None].float(), size=p.scaled_size, mode="nearest")[0, 0].long()
    pad = max(p.crop_size)
    full = F.pad(full, (pad,) * 4, value=fill)
    full_mask = F.pad(full_mask, (pad,) * 4, value=ignore)
    rows = slice(p.top + pad, p.top + pad + p.crop_size[0])
    cols = slice(p.left + pad, p.left + pad + p.crop_size[1])
    image_crop, mask_crop = full[:, rows, cols], full_mask[rows, cols]
    return (image_crop.flip(-1), mask_crop.flip(-1)) if p.flip else (image_crop, mask_crop)


CASES = [  # frame (H, W), scaled (H, W), top, left, crop (H, W), flip
    ((37, 53), (80, 111), 5, 20, (31, 45), False),  # up-scaling, odd sizes
    ((37, 53), (80, 111), 49, 66, (31, 45), True),  # bottom-right window, flipped
    ((101, 77), (50, 39), 3, 1, (31, 20), False),  # down-scaling
    ((101, 77), (40, 31), 0, 8, (40, 20), True),  # down-scaling, window as tall as the scaled frame
    ((64, 96), (23, 35), -4, -10, (31, 45), True),  # scaled frame smaller than the crop: padding
    ((30, 40), (61, 81), -3, 50, (70, 40), False),  # taller than the frame, wider inside it
    ((40, 60), (80, 120), 7, 9, (30, 31), False),  # exactly ×2 (torch's nearest special case)
    ((40, 60), (40, 60), 5, 0, (20, 60), True),  # ×1
]


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize(("size", "scaled", "top", "left", "crop", "flip"), CASES)
def test_scale_crop_equals_resize_then_crop(size, scaled, top, left, crop, flip, channels_last):
    image = frame(*size, channels_last)
    mask = torch.randint(0, 19, size, generator=torch.Generator().manual_seed(1))
    params = ScaleCropParams(scaled, top, left, crop, flip)
    got_image, got_mask = scale_crop(image, mask, params, fill=0.0, ignore_index=255)
    want_image, want_mask = resize_then_crop(image, mask, params)
    assert got_image.dtype == torch.float32 and got_mask.dtype == torch.int64
    assert got_image.shape == (3, *crop) and got_mask.shape == crop
    # On the [0, 1] scale. Source coordinates agree to 1 float32 ulp: torch's kernels round
    # (o + 0.5)·n/m − 0.5 with or without a fused multiply-add depending on the code path.
    assert (got_image - want_image).abs().max() / 255 <= 1e-5
    assert torch.equal(got_mask, want_mask)
    assert got_image.is_contiguous()


def test_padding_uses_fill_and_ignore_and_counts_exactly():
    image, mask = frame(40, 60, True), torch.zeros(40, 60, dtype=torch.int64)
    params = ScaleCropParams((20, 30), -5, -7, (32, 48))
    got_image, got_mask = scale_crop(image, mask, params, fill=0.0, ignore_index=255)
    assert int((got_mask == 255).sum()) == 32 * 48 - 20 * 30
    assert torch.equal(got_mask[5:25, 7:37], torch.zeros(20, 30, dtype=torch.int64))
    assert float(got_image[:, (got_mask == 255)].abs().max()) == 0.0


def test_offsets_are_uniform_over_valid_positions():
    torch.manual_seed(0)
    for crop, expected in ((7, set(range(0, 4))), (13, set(range(-3, 1))), (10, {0})):
        draws = [sample_scale_crop((10, 10), (10, 10), (1.0, 1.0), (crop, crop)) for _ in range(200)]
        assert {p.top for p in draws} == expected
        assert {p.left for p in draws} == expected
        assert {p.scaled_size for p in draws} == {(10, 10)}


def test_scale_is_relative_to_base_size_given_as_height_width():
    """base (H, W) = (50, 300) on a 100×300 frame: r = min(50/100, 300/300)·U(0.5, 2) = U(0.25, 1)."""
    torch.manual_seed(0)
    draws = [sample_scale_crop((100, 300), (50, 300), (0.5, 2.0), (10, 10), hflip=0.5) for _ in range(300)]
    heights, widths = (torch.tensor(side, dtype=torch.float64) for side in zip(*(p.scaled_size for p in draws)))
    assert 25 <= heights.min() < 30 and 95 < heights.max() <= 100
    assert 75 <= widths.min() < 90 and 285 < widths.max() <= 300
    assert (widths / heights - 3).abs().max() < 0.1  # aspect ratio kept
    assert 0.4 < sum(p.flip for p in draws) / len(draws) < 0.6


@pytest.mark.parametrize("resample", BACKENDS)
def test_base_size_fits_frame_without_padding(resample):
    """base (50, 300) on a 100×300 frame at scale 1 → 50×150: a 50×150 crop needs no padding."""
    transform = train_transform((50, 150), (50, 300), (1.0, 1.0), hflip=0.0, resample=resample)
    out = transform({"image": frame(100, 300, True), "mask": torch.zeros(100, 300, dtype=torch.int64)})
    assert not (out["mask"] == 255).any()


@pytest.mark.parametrize("seed", range(6))
def test_fast_pipeline_equals_torchvision_without_antialias(seed):
    """Same torch seed → same scale, window, flip and jitter as the v2 pipeline (run on 0–1 floats,
    antialias off); images agree to float rounding, masks exactly."""
    jitter, crop, base, scales = (0.3, 0.4, 0.5, 0.1), (24, 40), (40, 50), (0.3, 1.8)
    fast = train_transform(crop, base, scales, 0.5, 255, jitter)
    reference = train_transform(crop, base, scales, 0.5, 255, jitter, resample="torchvision").pipeline
    reference.transforms[0].antialias = False
    image, mask = frame(37, 61, True, seed), torch.randint(0, 19, (37, 61))
    torch.manual_seed(seed)
    got = fast({"image": image, "mask": mask})
    torch.manual_seed(seed)
    want_image, want_mask = reference(tv_tensors.Image(image.float() / 255), tv_tensors.Mask(mask))
    assert (got["image"] - want_image).abs().max() <= 1e-4
    assert torch.equal(got["mask"], want_mask.as_subclass(torch.Tensor))


@pytest.mark.parametrize("resample", BACKENDS)
def test_image_and_mask_share_geometry(resample):
    """R holds the source row and G the source column; the mask holds the row (then the column)
    index: bilinear and nearest coordinates differ by < 0.5·n/m + 0.5 ≤ 1.5 px at scale ≥ 0.5."""
    height, width = 97, 131
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    image = torch.stack([rows, cols, torch.full_like(rows, 200)]).to(torch.uint8)
    for axis, coordinate in ((0, rows), (1, cols)):
        transform = train_transform((64, 80), (97, 131), (0.5, 1.6), 0.5, 255, None, (0, 0, 0), (1, 1, 1), resample)
        torch.manual_seed(axis)
        for _ in range(15):
            out = transform({"image": image, "mask": coordinate.clone()})
            inside = out["mask"] != 255
            assert torch.equal(inside, out["image"][2] * 255 > 100)  # padding: ignore in the mask, 0 in the image
            decoded = out["image"][axis] * 255
            assert (decoded[inside] - out["mask"][inside].float()).abs().max() < 1.55


@pytest.mark.parametrize("resample", BACKENDS)
def test_mask_values_come_from_the_input_or_ignore(resample):
    mask = torch.tensor([0, 3, 7])[torch.randint(0, 3, (50, 70), generator=torch.Generator().manual_seed(0))]
    transform = train_transform((48, 64), (50, 70), (0.3, 2.0), 0.5, 255, (0.2, 0.2, 0.2, 0.05), resample=resample)
    torch.manual_seed(0)
    seen = set()
    for _ in range(10):
        seen |= set(transform({"image": frame(50, 70, True), "mask": mask})["mask"].unique().tolist())
    assert seen <= {0, 3, 7, 255} and {0, 3, 7, 255} <= seen


@pytest.mark.parametrize(
    "transform", [train_transform((24, 32), (30, 40), resample=r) for r in BACKENDS] + [eval_transform()]
)
def test_items_keep_extra_keys_and_get_dtypes(transform):
    case = object()
    image = frame(30, 40, True)
    source = image.clone()
    out = transform({"image": image, "mask": torch.zeros(30, 40, dtype=torch.int64), "name": "a", "case": case})
    assert set(out) == {"image", "mask", "name", "case"} and out["case"] is case and out["name"] == "a"
    assert out["image"].dtype == torch.float32 and out["mask"].dtype == torch.int64
    assert out["image"].shape[0] == 3 and out["image"].shape[1:] == out["mask"].shape
    assert type(out["image"]) is torch.Tensor and type(out["mask"]) is torch.Tensor
    assert torch.equal(image, source)  # the input item is not modified


def test_float_frames_are_read_as_unit_range():
    transform = train_transform((24, 32), (30, 40), color_jitter=(0.2, 0.2, 0.2, 0.1))
    image = frame(30, 40, False)
    torch.manual_seed(3)
    from_uint8 = transform({"image": image, "mask": torch.zeros(30, 40, dtype=torch.int64)})["image"]
    torch.manual_seed(3)
    from_float = transform({"image": image.float() / 255, "mask": torch.zeros(30, 40, dtype=torch.int64)})["image"]
    assert (from_uint8 - from_float).abs().max() <= 1e-4


def test_jitter_matches_torchvision_colorjitter():
    image = torch.rand(3, 40, 50, generator=torch.Generator().manual_seed(0))
    for seed in range(8):
        torch.manual_seed(seed)
        got = PhotometricJitter(0.4, 0.5, 0.6, 0.2)(image * 255) / 255
        torch.manual_seed(seed)
        want = v2.ColorJitter(0.4, 0.5, 0.6, 0.2)(image)
        assert (got - want).abs().max() <= 1e-5


def test_hue_shift_matches_torchvision_including_ties_and_greys():
    image = torch.rand(3, 32, 48, generator=torch.Generator().manual_seed(0))
    image[:, :4] = 0.4  # grey: hue undefined
    image[1, 4:8] = image[0, 4:8]  # R = G
    image[2, 8:12] = image[0, 8:12]  # R = B
    image[2, 12:16] = image[1, 12:16]  # G = B
    for shift in (-0.5, -0.27, 0.0, 0.05, 0.31, 0.5):
        got = shift_hue_(image.clone() * 255, shift) / 255
        assert (got - TF.adjust_hue(image, shift)).abs().max() <= 1e-5


def test_normalise_matches_todtype_and_normalize():
    image = frame(20, 30, True)
    want = TF.normalize(TF.to_dtype(image, torch.float32, scale=True), list(IMAGENET_MEAN), list(IMAGENET_STD))
    for source in (image, image.float() / 255):
        got = Normalise()(source)
        assert got.is_contiguous() and (got - want).abs().max() <= 1e-5
    assert (eval_transform()({"image": image, "mask": torch.zeros(20, 30)})["image"] - want).abs().max() <= 1e-5


def test_unknown_resample_is_rejected():
    with pytest.raises(ValueError, match="resample"):
        train_transform((8, 8), (8, 8), resample="pil")


def test_bench_data_quick_writes_positive_numbers(tmp_path):
    out = tmp_path / "data.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_data.py"), "--quick", "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    result = json.loads(out.read_text())
    variants = set(result["pipelines"])
    assert {"decode", "torchvision", "torchvision (no jitter)", "fast", "fast (no jitter)"} <= variants
    assert "albumentations" in variants or any("albumentations" in note for note in result["skipped"])
    for row in result["pipelines"].values():
        assert row["ms"] > 0 and row["images_per_s"] > 0 and row["vs_decode"] > 0
    for name, row in result["pipelines"].items():
        assert (row["augment_ms"] > 0) == (name != "decode")
    assert {"PIL", "segloss image_io", "torchvision decode_png"} <= set(result["decoders"])
    assert all(row["ms"] > 0 and row["image_ms"] > 0 for row in result["decoders"].values())
    for row in result["dataloader"].values():
        assert row["images_per_s"] > 0 and row["images"] > 0
    assert result["meta"]["image_png_mb"] > 0
