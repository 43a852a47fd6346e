"""Data that used to pass silently: a training split smaller than the batch, masks that are all ignore.
Each stops the run with one message instead of a "best epoch" table for an untrained net."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segloss.errors import ConfigError, DatasetFormatError
from segloss.train import train
from tests.conftest import QUIET_RUN


def _run(make_cfg, root, *extra):
    return make_cfg(["data=cityscapes", f"data.root={root}", "data.train_transform.base_size=[8,16]",
                     "data.train_transform.crop_size=[8,16]", "data.num_workers=0", "data.batch_size=2",
                     "data.val_batch_size=2", "model.net.base_channels=4", "model.net.depth=2", "trainer.max_epochs=2",
                     *QUIET_RUN, *extra])  # fmt: skip


def test_a_training_split_smaller_than_the_batch(make_cfg, cityscapes_tree):
    root, _ = cityscapes_tree  # 4 training images
    with pytest.raises(ConfigError, match=r"has 4 image\(s\), fewer than data.batch_size=8: .* no training step"):
        train(_run(make_cfg, root, "data.batch_size=8"))


def _ignore_all(root, split):
    for mask in (root / "gtFine" / split).rglob("*labelIds.png"):
        Image.fromarray(np.zeros((8, 16), np.uint8)).save(mask)  # labelId 0 "unlabeled" → ignore


def test_training_masks_that_are_all_ignore(make_cfg, cityscapes_tree):
    root, _ = cityscapes_tree
    _ignore_all(root, "train")
    cfg = _run(make_cfg, root)
    with pytest.raises(DatasetFormatError, match=r"every pixel of the training masks of the first epoch is ignore_"):
        train(cfg)
    assert not list(Path(cfg.paths.output_dir).rglob("*.ckpt"))  # stopped before the first checkpoint


def test_validation_masks_that_are_all_ignore(make_cfg, cityscapes_tree):
    root, _ = cityscapes_tree
    _ignore_all(root, "val")
    with pytest.raises(DatasetFormatError, match=r"the validation split holds no labelled pixel"):
        train(_run(make_cfg, root))


def test_macos_appledouble_files_are_not_cityscapes_samples(cityscapes_tree):
    from segloss.data.cityscapes import CityscapesDataset

    root, _ = cityscapes_tree
    junk = root / "leftImg8bit" / "val" / "lindau" / "._lindau_000000_000019_leftImg8bit.png"
    junk.write_bytes(b"\x00\x05\x16\x07 Mac OS X resource fork")  # what a Mac copies next to each file
    names = [name for name, _, _ in CityscapesDataset(root, split="val").samples]
    assert names == ["frankfurt_000000_000019", "frankfurt_000001_000019", "lindau_000000_000019"]


def test_a_16_bit_cityscapes_mask_with_a_large_id_is_named(cityscapes_tree):
    from segloss.data.cityscapes import CityscapesDataset

    root, _ = cityscapes_tree
    mask = root / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png"
    Image.fromarray(np.full((8, 16), 1000, dtype=np.uint16)).save(mask)  # used to be an IndexError
    dataset = CityscapesDataset(root, split="val")
    with pytest.raises(DatasetFormatError, match=r"lindau_000000_000019_gtFine_labelIds.png holds values \[1000\]"):
        dataset[2]


def test_a_file_name_that_is_not_utf8_is_named(cityscapes_tree):
    import os

    from segloss.data.cityscapes import CityscapesDataset

    root, _ = cityscapes_tree
    city = root / "leftImg8bit" / "val" / "lindau"
    os.rename(city / "lindau_000000_000019_leftImg8bit.png",
              os.fsencode(city) + b"/lindau_\xe9t\xe9_000019_leftImg8bit.png")  # latin-1 "été"  # fmt: skip
    with pytest.raises(
        DatasetFormatError, match=r"the file name .*lindau_\\xe9t\\xe9_000019_leftImg8bit.png is not UTF-8"
    ):
        CityscapesDataset(root, split="val")


def test_a_voc_split_file_with_a_byte_order_mark_reads_its_first_id(tmp_path):
    from segloss.data.voc import VOCDataset
    from tests.trees.voc import write_voc_tree

    write_voc_tree(tmp_path, {"train": ["2007_000032", "2007_000039"], "val": ["2007_000063"], "trainval": []})
    split = tmp_path / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt"
    split.write_text("\ufeff2007_000032\r\n2007_000039\r\n", encoding="utf-8")  # as Windows Notepad saves it
    names = [name for name, _, _ in VOCDataset(tmp_path / "VOCdevkit", split="train").samples]
    assert names == ["2007_000032", "2007_000039"]


def test_an_ignore_index_the_masks_do_not_use_is_one_message(make_cfg, cityscapes_tree):
    """data.ignore_index=-1 with masks that mark ignore with 255: a ValueError traceback from inside the loss."""
    from segloss.errors import SeglossError

    root, _ = cityscapes_tree
    with pytest.raises(SeglossError, match=r"target holds values \[255\] .* ignore_index=-1; .*data.ignore_index=255"):
        train(_run(make_cfg, root, "data.ignore_index=-1"))


def test_a_net_that_takes_other_channels_than_the_data_gives(make_cfg, cityscapes_tree):
    """model.net.in_channels=1 with RGB images: a convolution's RuntimeError."""
    root, _ = cityscapes_tree
    with pytest.raises(
        ConfigError, match=r"the net takes 1 input channel\(s\) but the data gives 3: set model.net.in_channels=3"
    ):
        train(_run(make_cfg, root, "model.net.in_channels=1"))
