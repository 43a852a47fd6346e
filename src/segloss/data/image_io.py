"""Reading image and label files, with errors that name the file and what is wrong with it."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, read_file

from segloss.errors import DatasetFormatError

LABEL_MODES = ("L", "P", "I", "I;16")


FAST_DECODE = (".png", ".jpg", ".jpeg")


def read_image(path: Path) -> torch.Tensor:
    """An image file as a uint8 RGB tensor 3×H×W (grey and palette images are converted).

    PNG and JPEG go through ``torchvision.io.decode_image`` (libpng/libjpeg-turbo straight into a
    tensor: 1.2× faster than PIL on a 2048×1024 Cityscapes frame, see docs/benchmarks.md); other formats
    (TIFF, BMP, GIF) through PIL.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in FAST_DECODE:
            image = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
            if image.dtype == torch.uint8:  # 16-bit PNGs come back as uint16: PIL converts those below
                return image
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError, RuntimeError) as err:
        raise DatasetFormatError(f"cannot read image {path}: {err}") from err
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def read_label_png(path: Path, hint: str = "") -> np.ndarray:
    """A single-channel label image as its raw index values (palette PNGs are read as indices,
    not colours). ``hint`` is appended to the error raised for a colour (RGB) label file."""
    try:
        with Image.open(path) as img:
            if img.mode not in LABEL_MODES:
                raise DatasetFormatError(
                    f"label file {path} is a {img.mode} image; expected a single-channel index or palette PNG"
                    + (f" ({hint})" if hint else "")
                )
            return np.asarray(img)
    except (OSError, SyntaxError) as err:
        raise DatasetFormatError(f"cannot read label file {path}: {err}") from err


def check_label_values(values: np.ndarray, allowed: Iterable[int], path: Path, what: str) -> None:
    """Raise if ``values`` holds a value outside ``allowed``, naming the values and the file."""
    present = np.unique(values)
    bad = np.setdiff1d(present, np.fromiter(allowed, dtype=np.int64))
    if bad.size:
        raise DatasetFormatError(
            f"{path} holds label values {bad[:10].tolist()} that are neither {what} nor the ignore value"
        )
