"""2D image/mask folders, the layout in which Kvasir-SEG (Jha et al., "Kvasir-SEG: A Segmented Polyp
Dataset", MMM 2020), ISIC 2018 task 1 (Codella et al., arXiv:1902.03368) and DRIVE-like sets are shipped::

    root/images/<stem><image_suffix>.<jpg|jpeg|png|tif|tiff|bmp>
    root/masks/<stem><mask_suffix>.<png|gif|jpg|jpeg|tif|tiff|bmp>

An image and a mask pair up when they share ``<stem>`` after their suffixes are cut off, e.g.
``mask_suffix="_segmentation"`` for ISIC (``ISIC_0000000.jpg`` ↔ ``ISIC_0000000_segmentation.png``) or
``image_suffix="_training", mask_suffix="_manual1"`` for DRIVE (``21_training.tif`` ↔ ``21_manual1.gif``,
with ``images_dir="training/images", masks_dir="training/1st_manual"``). ``<stem>`` is the sample name.

Masks:
    * ``binary=True``: the mask is converted to grey (ITU-R 601 luma; Kvasir-SEG's masks are RGB JPEGs)
      and thresholded: grey ≥ 128 → 1, else 0. This makes 0/255 PNGs exact and removes the JPEG
      compression noise around 0 and 255. A mask holding only 0/1 is refused (use ``binary=False``).
    * ``binary=False``: single-channel index PNGs whose values must be < ``len(class_names)`` or 255.

Splits: ``split_file``, a JSON ``{"train": [stems], "val": [stems], "test": [stems]}`` (a relative path
is taken relative to ``root``), decides when given. Otherwise a stem goes to ``val`` when
``u = sha256(f"{seed}:{stem}")[:8] / 2**64`` is below ``val_fraction``, else to ``train`` (see
:func:`hashed_split`): the same seed and files give the same split, and adding or removing a file never
moves another one; the val share is ``val_fraction`` in expectation, not exactly. ``split="all"`` is
every pair.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segloss.data.image_io import check_label_values, read_label_png
from segloss.data.paired import ImageMaskFiles, check_utf8_names
from segloss.data.voc import voc_colormap
from segloss.errors import ConfigError, DatasetFormatError, DatasetNotFoundError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
MASK_EXTENSIONS = (".png", ".gif", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
INDEX_HINT = "binary=False reads class indices: convert colour masks to index PNGs, or use binary=True for 0/255 masks"
SOURCE = (
    "the dataset's publisher, e.g. Kvasir-SEG: https://datasets.simula.no/kvasir-seg/ (kvasir-seg.zip unpacks to "
    "Kvasir-SEG/{images,masks}); ISIC 2018 task 1: https://challenge.isic-archive.com/data/#2018"
)


def hashed_split(stem: str, seed: int, val_fraction: float) -> str:
    """``"val"`` if the hash of (seed, stem) mapped to [0, 1) is below ``val_fraction``, else ``"train"``."""
    digest = hashlib.sha256(f"{seed}:{stem}".encode()).digest()
    return "val" if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else "train"


def _files_by_key(folder: Path, extensions: tuple[str, ...], suffix: str) -> dict[str, Path]:
    """``{stem without suffix: path}`` of the files in ``folder`` with one of ``extensions``."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in extensions or not path.stem.endswith(suffix):
            continue
        key = path.stem[: len(path.stem) - len(suffix)]
        if key in found:
            raise DatasetFormatError(f"{found[key]} and {path} share the stem '{key}'; keep one of them")
        found[key] = path
    check_utf8_names(list(found.values()), folder.name)
    return found


class ImageMaskFolderDataset(ImageMaskFiles):
    """Image/mask pairs from two folders; binary (0/1) or index masks, 255 = ignore.

    Args:
        root: folder holding ``images_dir`` and ``masks_dir``.
        split: ``train``, ``val``, a key of ``split_file``, or ``all``.
        transform: callable on the item dict (see :mod:`segloss.data.transforms`), or None.
        class_names: one name per class (exactly two when ``binary``).
        binary: threshold grey masks at 128 into {0, 1}; else read index masks.
        split_file: JSON file of stems per split, or None for the hashed split.
        val_fraction, seed: the hashed split (see :func:`hashed_split`).
        images_dir, masks_dir: the two folders, relative to ``root``.
        mask_suffix, image_suffix: cut from the file stems before pairing (``_segmentation``, ``_manual1``).
        name, source: how error messages name the dataset and where they say it is published.
    """

    IGNORE_INDEX = 255

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable | None = None,
        class_names: Sequence[str] = ("background", "foreground"),
        binary: bool = True,
        split_file: str | Path | None = None,
        val_fraction: float = 0.2,
        seed: int = 0,
        images_dir: str = "images",
        masks_dir: str = "masks",
        mask_suffix: str = "",
        image_suffix: str = "",
        name: str = "Image-mask dataset",
        source: str = SOURCE,
    ) -> None:
        self.root, self.split, self.transform = Path(root).expanduser(), split, transform
        self.CLASS_NAMES = tuple(class_names)
        if binary and len(self.CLASS_NAMES) != 2:
            raise ConfigError(f"binary masks have 2 classes but class_names={list(self.CLASS_NAMES)}; give 2 names")
        if not 0.0 <= val_fraction <= 1.0:
            raise ConfigError(f"val_fraction={val_fraction} is not in [0, 1]")
        self.PALETTE = ((0, 0, 0), (255, 255, 255)) if binary else voc_colormap(len(self.CLASS_NAMES))
        self.binary, self.seed, self.val_fraction = binary, seed, val_fraction
        self.name, self.source = name, source
        self.layout = (
            f"{images_dir}/<stem>{image_suffix}.<jpg|png|tif…> and {masks_dir}/<stem>{mask_suffix}.<png|jpg|gif…>"
        )
        pairs = self._pairs(self.root / images_dir, self.root / masks_dir, image_suffix, mask_suffix)
        self.samples = self._select(pairs, split_file)

    def _pairs(self, image_dir: Path, mask_dir: Path, image_suffix: str, mask_suffix: str) -> dict:
        for problem, missing in (
            ("the folder does not exist", self.root),
            (f"there is no {image_dir}", image_dir),
            (f"there is no {mask_dir}", mask_dir),
        ):
            if not missing.is_dir():
                raise DatasetNotFoundError(self.name, self.root, problem, self.layout, self.source)
        images = _files_by_key(image_dir, IMAGE_EXTENSIONS, image_suffix)
        masks = _files_by_key(mask_dir, MASK_EXTENSIONS, mask_suffix)
        if not images:
            raise DatasetNotFoundError(
                self.name, self.root, f"no {'/'.join(IMAGE_EXTENSIONS)} files in {image_dir}", self.layout, self.source
            )
        lone_images, lone_masks = sorted(images.keys() - masks.keys()), sorted(masks.keys() - images.keys())
        if lone_images or lone_masks:
            raise DatasetFormatError(
                f"{len(lone_images)} images in {image_dir} have no mask (e.g. "
                f"{[images[k].name for k in lone_images[:3]]}) and {len(lone_masks)} masks in {mask_dir} have no "
                f"image (e.g. {[masks[k].name for k in lone_masks[:3]]}); a mask must be named <image stem>"
                f"{mask_suffix}.<ext> — set mask_suffix/image_suffix to match, or remove the unpaired files"
            )
        return {key: (images[key], masks[key]) for key in sorted(images)}

    def _select(self, pairs: dict, split_file: str | Path | None) -> list[tuple[str, Path, Path]]:
        if self.split == "all":
            keys = list(pairs)
        elif split_file is None:
            if self.split not in ("train", "val"):
                raise ConfigError(
                    f"split '{self.split}' of {self.root} needs a split_file; without one the splits are "
                    "train, val (hashed) and all"
                )
            keys = [k for k in pairs if hashed_split(k, self.seed, self.val_fraction) == self.split]
        else:
            keys = self._split_file_keys(pairs, split_file)
        if not keys:
            raise ConfigError(
                f"split '{self.split}' of {self.root} is empty; add images, or change val_fraction/seed/split_file"
            )
        return [(key, *pairs[key]) for key in keys]

    def _split_file_keys(self, pairs: dict, split_file: str | Path) -> list[str]:
        path = Path(split_file).expanduser()
        path = path if path.is_absolute() else self.root / path
        try:
            splits = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"cannot read split_file {path}: {err}; give a JSON {{split: [stems]}} file") from err
        if not isinstance(splits, dict) or self.split not in splits:
            keys = list(splits) if isinstance(splits, dict) else type(splits).__name__
            raise ConfigError(f"split_file {path} has no split '{self.split}' (it holds {keys})")
        unknown = [stem for stem in splits[self.split] if stem not in pairs]
        if unknown:
            raise DatasetFormatError(
                f"split_file {path} lists {len(unknown)} stems of split '{self.split}' that have no image/mask pair "
                f"in {self.root}, e.g. {unknown[:3]}; fix the file or add the images"
            )
        return list(splits[self.split])

    def load_mask(self, index: int) -> torch.Tensor:
        """The mask (int64 H×W: 0/1 when binary, else class indices and 255), without reading the image."""
        mask_path = self.samples[index][2]
        if not self.binary:
            values = read_label_png(mask_path, INDEX_HINT)
            check_label_values(values, (*range(len(self.CLASS_NAMES)), self.IGNORE_INDEX), mask_path, "classes")
            return torch.from_numpy(values.astype(np.int64))
        try:
            with Image.open(mask_path) as img:
                grey = np.asarray(img.convert("L"))
        except (OSError, SyntaxError, ValueError) as err:
            raise DatasetFormatError(f"cannot read mask {mask_path}: {err}") from err
        if grey.max(initial=0) == 1:
            raise DatasetFormatError(f"{mask_path} holds 0/1 values, not 0/255; read such masks with binary=False")
        return torch.from_numpy((grey >= 128).astype(np.int64))
