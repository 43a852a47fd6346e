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
