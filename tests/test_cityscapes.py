from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segloss.data import CityscapesDataset, DatasetFormatError, DatasetNotFoundError

# labelId → trainId from the Cityscapes label table, written out independently of the loader.
EXPECTED = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}


def test_loader_maps_label_ids_to_train_ids(cityscapes_tree):
    root, labels = cityscapes_tree
    ds = CityscapesDataset(root, "val")
    assert len(ds) == 3
    assert [s["name"] for s in ds] == ["frankfurt_000000_000019", "frankfurt_000001_000019", "lindau_000000_000019"]
    for sample in ds:
        raw = labels[sample["name"]]
        expected = np.vectorize(lambda v: EXPECTED.get(int(v), 255))(raw)
        assert sample["mask"].dtype == torch.int64 and sample["image"].dtype == torch.uint8
        assert sample["image"].shape == (3, *raw.shape)
        assert np.array_equal(sample["mask"].numpy(), expected)
        assert (sample["mask"] == 255).any() and (sample["mask"] < 19).any()


def test_train_split_reads_every_city(cityscapes_tree):
    root, _ = cityscapes_tree
    names = [s["name"] for s in CityscapesDataset(root, "train")]
    assert sorted({n.split("_")[0] for n in names}) == ["aachen", "bochum"] and len(names) == 4


def test_missing_root_names_path_layout_and_source(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        CityscapesDataset(tmp_path / "nowhere", "train")
    text = str(err.value)
    assert f"data.root={tmp_path / 'nowhere'}" in text
    assert "leftImg8bit/{train,val}/<city>/*_leftImg8bit.png" in text
    assert "gtFine/{train,val}/<city>/*_gtFine_labelIds.png" in text
    assert "cityscapes-dataset.com" in text and "DATA_ROOT" in text


def test_image_without_label_is_named(cityscapes_tree):
    root, _ = cityscapes_tree
    victim = root / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png"
    victim.unlink()
    with pytest.raises(DatasetFormatError, match=r"lindau_000000_000019_gtFine_labelIds\.png"):
        CityscapesDataset(root, "val")


def test_unknown_label_value_names_value_and_file(cityscapes_tree):
    root, _ = cityscapes_tree
    path = root / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png"
    Image.fromarray(np.full((8, 16), 77, dtype=np.uint8)).save(path)
    ds = CityscapesDataset(root, "val")
    with pytest.raises(DatasetFormatError, match=r"\[77\].*not Cityscapes labelIds") as err:
        ds[2]
    assert str(path) in str(err.value)


def test_colour_label_png_is_refused(cityscapes_tree):
    root, _ = cityscapes_tree
    path = Path(root / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png")
    Image.fromarray(np.zeros((8, 16, 3), dtype=np.uint8)).save(path)
    with pytest.raises(DatasetFormatError, match="RGB image"):
        CityscapesDataset(root, "val")[2]


def test_truncated_image_is_named(cityscapes_tree):
    root, _ = cityscapes_tree
    path = root / "leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DatasetFormatError, match=r"lindau_000000_000019_leftImg8bit\.png"):
        CityscapesDataset(root, "val")[2]
