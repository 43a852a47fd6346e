"""Image and label readers: the fast decoder gives PIL's pixels, and every failure names the file."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from segloss.data.image_io import check_label_values, read_image, read_label_png
from segloss.errors import DatasetFormatError


def pil_rgb(path) -> torch.Tensor:
    with Image.open(path) as img:
        return torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)


@pytest.mark.parametrize("kind", ["rgb.png", "grey.png", "palette.png", "rgb.jpg", "rgb.bmp"])
def test_read_image_equals_pil_for_every_format(tmp_path, kind):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    path = tmp_path / kind
    if kind.startswith("grey"):
        Image.fromarray(rgb[..., 0]).save(path)
    elif kind.startswith("palette"):
        image = Image.fromarray(rgb[..., 0] % 7)
        image.putpalette([v for c in range(256) for v in (c * 37 % 256, c * 91 % 256, c * 53 % 256)])
        image.save(path)
    else:
        Image.fromarray(rgb).save(path)
    image = read_image(path)
    assert image.dtype == torch.uint8 and image.shape == (3, 20, 30)
    assert torch.equal(image, pil_rgb(path))


def write_png16(path, array: np.ndarray) -> None:
    """A 16-bit PNG (grey H×W or RGB H×W×3) written by hand: PIL cannot write 16-bit RGB."""
    height, width = array.shape[:2]
    colour_type = 2 if array.ndim == 3 else 0
    rows = array.astype(">u2").reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("kind", ["grey16.png", "rgb16.png", "grey16.tif"])
def test_16_bit_images_are_scaled_to_8_bits_not_clipped_to_white(tmp_path, kind):
    rng = np.random.default_rng(1)
    values = rng.integers(0, 65536, (20, 30, 3) if kind.startswith("rgb") else (20, 30), dtype=np.uint16)
    path = tmp_path / kind
    if kind.endswith(".png"):
        write_png16(path, values)
    else:
        Image.fromarray(values).save(path)
    image = read_image(path)
    expected = np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    expected = expected.transpose(2, 0, 1) if expected.ndim == 3 else np.broadcast_to(expected, (3, 20, 30))
    assert image.dtype == torch.uint8 and np.array_equal(image.numpy(), expected)
    assert image.float().mean() < 200  # PIL's convert("RGB") made them (almost) all white


def test_a_jpeg_mask_under_a_png_name_is_refused(tmp_path):
    yy, xx = np.mgrid[:30, :40]
    labels = ((xx + 2 * yy) // 13 % 3).astype(np.uint8)  # 3 classes with diagonal edges
    Image.fromarray(labels).save(tmp_path / "mask.png", format="JPEG", quality=75)
    assert len(np.unique(np.asarray(Image.open(tmp_path / "mask.png")))) > 3  # compression noise: not 3 labels
    with pytest.raises(DatasetFormatError, match=r"mask.png holds JPEG data: lossy compression changes label values"):
        read_label_png(tmp_path / "mask.png")


def test_unreadable_files_are_named(tmp_path):
    for name in ("broken.png", "broken.jpg", "broken.tif"):
        (tmp_path / name).write_bytes(b"not an image")
        with pytest.raises(DatasetFormatError, match=f"cannot read image .*{name}"):
            read_image(tmp_path / name)
    (tmp_path / "broken_label.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(DatasetFormatError, match=r"cannot read label file .*broken_label\.png"):
        read_label_png(tmp_path / "broken_label.png")


def test_colour_labels_and_unknown_values_are_refused(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "colour.png")
    with pytest.raises(DatasetFormatError, match=r"colour.png is a RGB image.*\(use the index files\)"):
        read_label_png(tmp_path / "colour.png", hint="use the index files")
    check_label_values(np.array([[0, 1], [255, 1]]), [0, 1, 255], tmp_path / "ok.png", "a class")
    with pytest.raises(DatasetFormatError, match=r"m.png holds label values \[7, 9\] that are neither a class"):
        check_label_values(np.array([[0, 7], [9, 1]]), [0, 1, 255], tmp_path / "m.png", "a class")
