"""Pascal VOC 2012 segmentation (Everingham et al., "The PASCAL Visual Object Classes (VOC) Challenge",
IJCV 2010), optionally with the SBD "trainaug" set (Hariharan et al., "Semantic Contours from Inverse
Detectors", ICCV 2011).

Official layout (``VOCtrainval_11-May-2012.tar``)::

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png           palette PNG: pixel value = class index
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt   one id per line

``root`` may be the folder holding ``VOCdevkit/``, ``VOCdevkit/`` itself or ``VOC2012/`` itself; it is
resolved to the ``VOC2012`` folder (:attr:`VOCDataset.voc_dir`). Masks are read as palette *indices*,
never as colours: 0 = background, 1–20 = the object classes, 255 = object border / "difficult"
(ignored). Splits: ``train`` (1,464 images), ``val`` (1,449), ``trainval`` (2,913) and ``trainaug``.

``trainaug`` (10,582 images) uses the SBD masks in the layout of DeepLab and MMSegmentation:
``VOC2012/SegmentationClassAug/<id>.png``, single-channel index PNGs (the distributed
``SegmentationClassAug.zip`` holds 12,031; MMSegmentation's ``tools/dataset_converters/voc_aug.py`` writes
the 11,355 SBD ones). Its id list is ``ImageSets/Segmentation/trainaug.txt`` when present, else
``(stems of SegmentationClassAug ∪ train.txt) − val.txt``, which gives exactly 10,582 ids with either
distribution. As in MMSegmentation's ``voc12aug`` recipe, ids listed in ``train.txt`` keep their VOC
mask (``SegmentationClass/``, with object borders); every other id reads ``SegmentationClassAug/``.

Predictions are exported with :meth:`VOCDataset.save_prediction` as ``<id>.png`` palette PNGs, the
format of the VOC evaluation server (``results/VOC2012/Segmentation/comp6_test_cls/<id>.png``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segloss.data.image_io import check_label_values, read_label_png
from segloss.data.paired import ImageMaskFiles
from segloss.errors import DatasetFormatError, DatasetNotFoundError

NAME = "Pascal VOC"
CLASS_NAMES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
IGNORE_INDEX = 255
LAYOUT = (
    "VOCdevkit/VOC2012/{JPEGImages/<id>.jpg, SegmentationClass/<id>.png, "
    "ImageSets/Segmentation/{train,val,trainval}.txt} (data.root may be the folder holding VOCdevkit/, "
    "VOCdevkit/ itself or VOC2012/ itself); the trainaug split also reads VOC2012/SegmentationClassAug/<id>.png"
)
VOC_SOURCE = (
    "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ (VOCtrainval_11-May-2012.tar, which unpacks to VOCdevkit/VOC2012/)"
)
SBD_SOURCE = (
    "SBD from http://home.bharathh.info/pubs/codes/SBD/download.html; SegmentationClassAug/ is SBD converted "
    "to VOC-style index PNGs as used by DeepLab and MMSegmentation (SegmentationClassAug.zip, or MMSegmentation's "
    "tools/dataset_converters/voc_aug.py), placed in VOCdevkit/VOC2012/"
)
RGB_HINT = (
    "VOC masks are palette PNGs whose pixel values are class indices; use the original SegmentationClass/ "
    "files, or map colours to indices with VOCDataset.PALETTE"
)


def voc_colormap(n: int = 256) -> tuple[tuple[int, int, int], ...]:
    """The VOC devkit colour map (``VOClabelcolormap.m``): the bits of index ``i`` are dealt out in turn
    to R, G, B, from the most significant bit of each channel down, e.g. 1 → (128, 0, 0),
    15 → (192, 128, 128), 255 → (224, 224, 192)."""
    colours = []
    for index in range(n):
        rgb, value = [0, 0, 0], index
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << shift
            value >>= 3
        colours.append((rgb[0], rgb[1], rgb[2]))
    return tuple(colours)


def _read_ids(path: Path) -> list[str]:
    """Ids of a split file: the first word of each non-empty line (a UTF-8 byte-order mark, as Windows
    editors write, is dropped)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DatasetFormatError(f"split file {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def _names(folder: Path, suffix: str) -> set[str]:
    """Stems of the files ``*<suffix>`` in ``folder`` (one directory listing, not one stat per id)."""
    return {n[: -len(suffix)] for n in os.listdir(folder) if n.endswith(suffix)} if folder.is_dir() else set()


class VOCDataset(ImageMaskFiles):
    """Pascal VOC 2012 segmentation, 21 classes (0 = background), 255 = ignore.

    Args:
        root: the folder holding ``VOCdevkit/``, or ``VOCdevkit/``, or ``VOC2012/``.
        split: ``train``, ``val``, ``trainval`` or ``trainaug`` (any ``ImageSets/Segmentation/<split>.txt``).
        transform: callable on the item dict (see :mod:`segloss.data.transforms`), or None.
    """

    CLASS_NAMES = CLASS_NAMES
    PALETTE = voc_colormap(len(CLASS_NAMES))
    IGNORE_INDEX = IGNORE_INDEX
    _ALLOWED = (*range(len(CLASS_NAMES)), IGNORE_INDEX)

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None) -> None:
        self.root, self.split, self.transform = Path(root).expanduser(), split, transform
        self.voc_dir = self._resolve_root()
        self.samples = self._index()

    def _not_found(self, problem: str, source: str = VOC_SOURCE) -> DatasetNotFoundError:
        return DatasetNotFoundError(NAME, self.root, problem, LAYOUT, source)

    def _resolve_root(self) -> Path:
        if not self.root.is_dir():
            raise self._not_found("the folder does not exist")
        for candidate in (self.root, self.root / "VOC2012", self.root / "VOCdevkit" / "VOC2012"):
            if (candidate / "JPEGImages").is_dir() or (candidate / "ImageSets").is_dir():
                return candidate
        raise self._not_found(
            f"none of {self.root}, {self.root}/VOC2012 and {self.root}/VOCdevkit/VOC2012 holds JPEGImages/ "
            "or ImageSets/"
        )

    def _split_ids(self) -> list[str]:
        sets = self.voc_dir / "ImageSets" / "Segmentation"
        if not sets.is_dir():
            raise self._not_found(f"there is no {sets}")
        split_file = sets / f"{self.split}.txt"
        if split_file.is_file():
            return _read_ids(split_file)
        if self.split != "trainaug":
            raise self._not_found(f"there is no split file {split_file} (splits: train, val, trainval, trainaug)")
        aug_dir = self.voc_dir / "SegmentationClassAug"
        if not aug_dir.is_dir():
            raise self._not_found(f"the trainaug split needs {split_file} or {aug_dir}", SBD_SOURCE)
        for needed in ("train", "val"):
            if not (sets / f"{needed}.txt").is_file():
                raise self._not_found(f"deriving trainaug needs {sets / f'{needed}.txt'}")
        val = set(_read_ids(sets / "val.txt"))
        return sorted((_names(aug_dir, ".png") | set(_read_ids(sets / "train.txt"))) - val)

    def _index(self) -> list[tuple[str, Path, Path]]:
        ids = self._split_ids()
        if not ids:
            raise self._not_found(f"the split file for '{self.split}' lists no ids")
        image_dir = self.voc_dir / "JPEGImages"
        if not image_dir.is_dir():
            raise self._not_found(f"there is no {image_dir}")
        class_dir, aug_dir = self.voc_dir / "SegmentationClass", self.voc_dir / "SegmentationClassAug"
        voc_ids = set(ids)
        if self.split == "trainaug":
            train_file = self.voc_dir / "ImageSets" / "Segmentation" / "train.txt"
            voc_ids = set(_read_ids(train_file)) if train_file.is_file() else set()
        jpegs = _names(image_dir, ".jpg")
        masks = {class_dir: _names(class_dir, ".png"), aug_dir: _names(aug_dir, ".png")}
        samples, missing = [], []
        for stem in ids:
            folder = class_dir if stem in voc_ids else aug_dir
            image, mask = image_dir / f"{stem}.jpg", folder / f"{stem}.png"
            if stem not in jpegs:
                missing.append(str(image))
            elif stem not in masks[folder]:
                missing.append(str(mask))
            else:
                samples.append((stem, image, mask))
        if missing:
            raise DatasetFormatError(
                f"{len(missing)} of {len(ids)} ids of split '{self.split}' of {self.voc_dir} lack their JPEG or "
                f"mask, e.g. {', '.join(missing[:3])}; unpack the complete {VOC_SOURCE}"
                + (f" and {SBD_SOURCE}" if self.split == "trainaug" else "")
                + ", or remove those ids from the split file"
            )
        return samples

    def load_mask(self, index: int) -> torch.Tensor:
        """The class-index mask (int64 H×W, 255 = ignore) of sample ``index``, without reading the image."""
        mask_path = self.samples[index][2]
        values = read_label_png(mask_path, RGB_HINT)
        check_label_values(values, self._ALLOWED, mask_path, "VOC classes 0–20")
        return torch.from_numpy(values.astype(np.int64))

    @classmethod
    def save_prediction(cls, pred: np.ndarray, path: str | Path, name: str | None = None) -> Path:
        """Write ``pred`` (H×W class indices 0–20, or 255) as a VOC palette PNG and return its path.

        The file is ``path`` itself, or ``path/<name>.png`` when ``name`` (the image id) is given — the
        ``save_prediction(pred, out_dir, name)`` call of :class:`segloss.callbacks.PredictionWriter`. Files
        are named ``<id>.png`` (e.g. ``2008_000001.png``) as the devkit and the evaluation server expect;
        folders are created; :meth:`load_mask` reads the file back unchanged."""
        path = Path(path) / f"{name}.png" if name is not None else Path(path)
        pred = np.asarray(pred)
        if pred.ndim != 2 or not np.issubdtype(pred.dtype, np.integer):
            raise ValueError(f"prediction for {path} must be an H×W integer array, got {pred.dtype} {pred.shape}")
        check_label_values(pred, cls._ALLOWED, path, "VOC classes 0–20")
        image = Image.fromarray(pred.astype(np.uint8))
        image.putpalette([channel for colour in voc_colormap(256) for channel in colour])
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        return path
