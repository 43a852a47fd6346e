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
LOSSY_FORMATS = ("JPEG", "MPO", "WEBP")  # compression changes label values: never a label file


FAST_DECODE = (".png", ".jpg", ".jpeg")


def read_image(path: Path) -> torch.Tensor:
    """An image file as a uint8 RGB tensor 3×H×W (grey and palette images are converted; 16-bit images are
    scaled to 8 bits, v → round(v·255/65535), instead of being clipped to white).

    PNG and JPEG go through ``torchvision.io.decode_image`` (libpng/libjpeg-turbo straight into a
    tensor: 1.2× faster than PIL on a 2048×1024 Cityscapes frame, see docs/benchmarks.md); other formats
    (TIFF, BMP, GIF) through PIL.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in FAST_DECODE:
            image = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
            return image if image.dtype == torch.uint8 else to_8bit(image)  # 16-bit PNGs come back as uint16
        with Image.open(path) as img:
            if img.mode in SIXTEEN_BIT_MODES:  # PIL's convert("RGB") would clip every value above 255 to white
                values = torch.from_numpy(np.asarray(img).astype(np.int64))
                grey = to_8bit(values) if img.mode != "I" or values.max() > 255 else values.to(torch.uint8)
                return grey.expand(3, *grey.shape).clone()
            array = np.asarray(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError, RuntimeError) as err:
        raise DatasetFormatError(f"cannot read image {path}: {err}") from err
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # "I" (32-bit): 16-bit data if any value > 255


def to_8bit(image: torch.Tensor) -> torch.Tensor:
    """A 16-bit image (values 0…65535, any integer dtype) as uint8: round(v · 255 / 65535)."""
    wide = image.to(torch.int64).clamp(0, 65535)
    return ((wide * 255 + 32767) // 65535).to(torch.uint8)


def read_label_png(path: Path, hint: str = "") -> np.ndarray:
    """A single-channel label image as its raw index values (palette PNGs are read as indices,
    not colours). ``hint`` is appended to the error raised for a colour (RGB) label file."""
    try:
        with Image.open(path) as img:
            if img.format in LOSSY_FORMATS:  # detected from the content, whatever the file is called
                raise DatasetFormatError(
                    f"label file {path} holds {img.format} data: lossy compression changes label values (the "
                    "edges of 3 classes become a dozen), so the labels would be noise. Save masks losslessly, "
                    "as single-channel PNGs of class indices"
                )
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
