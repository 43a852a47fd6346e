"""Image and label readers: the fast decoder gives PIL's pixels, and every failure names the file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from segloss.data.image_io import check_label_values, read_image, read_label_png
from segloss.errors import DatasetFormatError


def pil_rgb(path) -> torch.Tensor:
    with Image.open(path) as img:
        return torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)


@pytest.mark.parametrize("kind", ["rgb.png", "grey.png", "palette.png", "rgb.jpg", "rgb.bmp", "grey16.png"])
def test_read_image_equals_pil_for_every_format(tmp_path, kind):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    path = tmp_path / kind
    if kind.startswith("grey16"):
        Image.fromarray(rgb[..., 0].astype(np.uint16) * 200).save(path)
    elif kind.startswith("grey"):
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
