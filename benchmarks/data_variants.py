"""The variants that ``bench_data.py`` times: PNG decoders and training pipelines (torchvision v2,
segloss's fast path with and without jitter, albumentations when installed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision.io as tvio
from PIL import Image

from segloss.data.image_io import read_image, read_label_png
from segloss.data.transforms import IMAGENET_MEAN, IMAGENET_STD, train_transform

try:
    import cv2
except ImportError:  # the cv2 rows are skipped without OpenCV
    cv2 = None


def decoders() -> dict[str, tuple]:
    """{name: (read RGB as uint8 3×H×W, read label as H×W)}."""
    png, rgb = lambda p, **kw: tvio.decode_png(tvio.read_file(str(p)), **kw), tvio.ImageReadMode.RGB
    table = {
        "PIL": (_pil_rgb, read_label_png),
        "segloss image_io": (read_image, read_label_png),
        "torchvision decode_png": (lambda p: png(p, mode=rgb), lambda p: png(p)[0]),
        "torchvision decode_image": (
            lambda p: tvio.decode_image(str(p), mode=rgb),
            lambda p: tvio.decode_image(str(p))[0],
        ),
    }
    if cv2 is not None:
        table["cv2 imread"] = (_cv2_rgb, lambda p: cv2.imread(str(p), cv2.IMREAD_UNCHANGED))
    return table


def _pil_rgb(path: Path) -> torch.Tensor:
    with Image.open(path) as img:
        return torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)


def _cv2_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


class AlbumentationsRecipe:
    """The recipe with albumentations: RandomScale → PadIfNeeded (random position) → RandomCrop →
    HorizontalFlip → ColorJitter → Normalize → ToTensorV2. What differs from ``train_transform``:
    the scale multiplies the input size (equal to the base size for Cityscapes frames, not in
    general); the whole frame is resized by cv2 (bilinear, no antialias, fixed-point weights) and
    then cropped; jitter runs on uint8 (rounded after each step; hue through OpenCV's 8-bit HSV,
    2° steps); its random draws are its own; ToTensorV2 returns a C×H×W view of an H×W×C array."""

    def __init__(self, crop: tuple[int, int], scale_range: tuple[float, float], jitter: tuple | None) -> None:
        import albumentations as A
        from albumentations.pytorch import ToTensorV2

        lo, hi = scale_range
        steps = [
            A.RandomScale(scale_limit=(lo - 1, hi - 1), interpolation=cv2.INTER_LINEAR, p=1.0),
            A.PadIfNeeded(*crop, position="random", border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=255),
            A.RandomCrop(*crop),
            A.HorizontalFlip(p=0.5),
        ]
        if jitter is not None:
            brightness, contrast, saturation, hue = jitter
            steps.append(A.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue, p=1))
        steps += [A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0), ToTensorV2()]
        self.compose = A.Compose(steps, seed=0)

    def __call__(self, sample: dict) -> dict:
        image = np.ascontiguousarray(sample["image"].permute(1, 2, 0).numpy())  # a view: decoders give H×W×C
        mask = sample["mask"].numpy().astype(np.uint8)  # cv2 cannot resample int64
        out = self.compose(image=image, mask=mask)
        return {**sample, "image": out["image"], "mask": out["mask"].long()}


def pipelines(args) -> tuple[dict, list[str]]:
    """{name: transform or None (decode only)} and the notes on skipped variants."""
    recipe = {"crop_size": args.crop, "base_size": args.base, "scale_range": (0.5, 2.0), "hflip": 0.5}
    no_antialias = train_transform(**recipe, color_jitter=args.jitter, resample="torchvision")
    no_antialias.pipeline.transforms[0].antialias = False  # the ScaleJitter step
    table = {
        "decode": None,
        "torchvision": train_transform(**recipe, color_jitter=args.jitter, resample="torchvision"),
        "torchvision (no antialias)": no_antialias,
        "torchvision (no jitter)": train_transform(**recipe, color_jitter=None, resample="torchvision"),
        "fast": train_transform(**recipe, color_jitter=args.jitter),
        "fast (no jitter)": train_transform(**recipe, color_jitter=None),
        # the loader's half of data.augment_on_device: draws + the uint8 source region (pixels on the device)
        "augment_on_device (loader half)": train_transform(**recipe, color_jitter=args.jitter, augment_on_device=True),
    }
    skipped = []
    try:
        table["albumentations"] = AlbumentationsRecipe(tuple(args.crop), (0.5, 2.0), tuple(args.jitter))
        table["albumentations (no jitter)"] = AlbumentationsRecipe(tuple(args.crop), (0.5, 2.0), None)
    except ImportError as err:
        skipped.append(f"albumentations: not importable ({err}); pip install -e '.[bench]'")
    return table, skipped


def device_variant(args):
    """The loader half of ``data.augment_on_device`` (uint8 source regions + parameters)."""
    recipe = {"crop_size": args.crop, "base_size": args.base, "scale_range": (0.5, 2.0), "hflip": 0.5}
    return train_transform(**recipe, color_jitter=args.jitter, augment_on_device=True)


def uint8_variant(args):
    """The "fast" pipeline with ``normalize_on_device`` (uint8 out; the model normalises)."""
    recipe = {"crop_size": args.crop, "base_size": args.base, "scale_range": (0.5, 2.0), "hflip": 0.5}
    return train_transform(**recipe, color_jitter=args.jitter, normalize_on_device=True)
