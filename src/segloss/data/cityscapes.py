"""Cityscapes (Cordts et al., "The Cityscapes Dataset for Semantic Urban Scene Understanding", CVPR 2016).

Official layout under ``root``::

    leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

Masks are read as labelIds and mapped to the 19 benchmark trainIds; every other id becomes 255
(ignore). Without a transform an item is ``{"image": uint8 3×H×W, "mask": int64 H×W, "name": str}``.
The ``test`` split's labels are withheld by the benchmark: when ``gtFine/test`` is absent its masks
are all 255, so the split can still be predicted and exported.

Result files (:meth:`CityscapesDataset.save_prediction`): one single-channel PNG of **labelIds** per
image, named ``<city>_<seq>_<frame>.png`` — the format of the official evaluation
(``cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling``, which finds a prediction by the
pattern ``<city>_<seq>_<frame>*.png`` anywhere under ``CITYSCAPES_RESULTS``) and of the benchmark
server's submission zip.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segloss.data.cityscapes_labels import (
    CLASS_NAMES,
    IGNORE_INDEX,
    LABELS,
    PALETTE,
    label_to_train_lut,
    train_to_label_lut,
)
from segloss.data.image_io import read_label_png
from segloss.data.paired import ImageMaskFiles, check_utf8_names
from segloss.errors import DatasetFormatError, DatasetNotFoundError

IMAGE_SUFFIX, MASK_SUFFIX = "_leftImg8bit.png", "_gtFine_labelIds.png"
LAYOUT = "leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and gtFine/{train,val}/<city>/*_gtFine_labelIds.png"
SOURCE = (
    "https://www.cityscapes-dataset.com/downloads/ (free registration; leftImg8bit_trainvaltest.zip and "
    "gtFine_trainvaltest.zip, unzipped into the same folder)"
)


class CityscapesDataset(ImageMaskFiles):
    """Cityscapes fine annotations as 19 trainIds (255 = ignore).

    Args:
        root: folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``train``, ``val`` or ``test``.
        transform: callable on the item dict (see :mod:`segloss.data.transforms`), or None.
    """

    CLASS_NAMES = CLASS_NAMES
    PALETTE = PALETTE
    IGNORE_INDEX = IGNORE_INDEX
    _LUT = label_to_train_lut()
    _TO_LABEL_IDS = train_to_label_lut()
    _KNOWN = np.isin(np.arange(256), [label_id for label_id, *_ in LABELS] + [255])

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None) -> None:
        self.root, self.split, self.transform = Path(root).expanduser(), split, transform
        self.samples = self._index()

    def _index(self) -> list[tuple[str, Path, Path | None]]:
        image_dir = self.root / "leftImg8bit" / self.split
        if not self.root.is_dir():
            raise DatasetNotFoundError("Cityscapes", self.root, "the folder does not exist", LAYOUT, SOURCE)
        if not image_dir.is_dir():
            raise DatasetNotFoundError("Cityscapes", self.root, f"there is no {image_dir}", LAYOUT, SOURCE)
        # macOS' AppleDouble files (._name, copied from a Mac volume) share the suffix but hold no image
        images = sorted(p for p in image_dir.glob(f"*/*{IMAGE_SUFFIX}") if not p.name.startswith("._"))
        check_utf8_names(images, "Cityscapes")
        if not images:
            raise DatasetNotFoundError(
                "Cityscapes", self.root, f"no *{IMAGE_SUFFIX} files in {image_dir}/<city>/", LAYOUT, SOURCE
            )
        samples = []
        missing = []
        withheld = self.split == "test" and not (self.root / "gtFine" / "test").is_dir()
        for image in images:
            stem = image.name[: -len(IMAGE_SUFFIX)]
            mask = self.root / "gtFine" / self.split / image.parent.name / f"{stem}{MASK_SUFFIX}"
            if withheld:
                samples.append((stem, image, None))
            else:
                (samples if mask.is_file() else missing).append((stem, image, mask))
        if missing:
            shown = ", ".join(str(m) for _, _, m in missing[:3])
            raise DatasetFormatError(
                f"{len(missing)} of {len(images)} images in {image_dir} have no label file, e.g. {shown}; "
                "unzip gtFine_trainvaltest.zip next to leftImg8bit/"
            )
        return samples

    def load_mask(self, index: int) -> torch.Tensor:
        """The trainId mask (int64 H×W) of sample ``index``, without reading the image."""
        mask_path = self.samples[index][2]
        if mask_path is None:  # test labels withheld: everything is ignore
            return torch.full(self.image_size(index), IGNORE_INDEX, dtype=torch.int64)
        label_ids = read_label_png(mask_path, "use the *_gtFine_labelIds.png files, not *_gtFine_color.png")
        if label_ids.max(initial=0) > 255:  # a 16-bit file: ids past the lookup table
            bad = np.unique(label_ids[label_ids > 255])[:10].tolist()
            raise DatasetFormatError(f"{mask_path} holds values {bad} that are not Cityscapes labelIds (0–33)")
        if not self._KNOWN[label_ids].all():
            bad = sorted(set(np.unique(label_ids).tolist()) - set(np.flatnonzero(self._KNOWN).tolist()))
            raise DatasetFormatError(f"{mask_path} holds values {bad[:10]} that are not Cityscapes labelIds")
        return torch.from_numpy(self._LUT[label_ids].astype(np.int64))

    @classmethod
    def save_prediction(cls, pred: np.ndarray, out_dir: str | Path, name: str) -> Path:
        """Write trainId predictions (H×W) as the official result file ``out_dir/<name>.png`` of labelIds."""
        pred = np.asarray(pred)
        if pred.min(initial=0) < 0 or pred.max(initial=0) >= len(CLASS_NAMES):
            raise ValueError(f"prediction for {name} holds values outside the 19 trainIds 0–18")
        path = Path(out_dir) / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(cls._TO_LABEL_IDS[pred.astype(np.uint8)]).save(path)
        return path
