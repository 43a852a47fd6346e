"""Class weights from the training labels: one counting pass, cached outside the dataset folder."""

import json

import hydra
import numpy as np
import pytest
import torch

from segloss.build import resolve_class_weights
from segloss.data import CityscapesDataset
from segloss.data.label_stats import cached_label_counts, label_counts
from segloss.errors import ConfigError
from segloss.losses import class_weights

# labelId → trainId for the ids used below: 7 road → 0, 8 sidewalk → 1, 26 car → 13, 0 and 1 → ignore


def _write_masks(root, masks):
    from tests.conftest import write_cityscapes_tree

    write_cityscapes_tree(root, {"train": {"aachen": len(masks)}, "val": {"bonn": 1}}, size=(2, 3))
    from PIL import Image

    for i, mask in enumerate(masks):
        Image.fromarray(np.asarray(mask, dtype=np.uint8)).save(
            root / "gtFine/train/aachen" / f"aachen_{i:06d}_000019_gtFine_labelIds.png"
        )


def test_label_counts_by_hand(tmp_path):
    root = tmp_path / "cityscapes"
    _write_masks(root, [[[7, 7, 8], [8, 0, 1]], [[26, 7, 7], [7, 7, 7]]])
    stats = label_counts(CityscapesDataset(root, "train"), num_classes=19)
    counts = stats["counts"]
    assert counts[0] == 7 and counts[1] == 2 and counts[13] == 1 and sum(counts) == 10
    # image 1 has 4 valid pixels (road, sidewalk), image 2 has 6 (road, car)
    assert stats["image_pixels"][0] == 10 and stats["image_pixels"][1] == 4 and stats["image_pixels"][13] == 6
    weights = class_weights(torch.tensor(counts), "median_frequency", torch.tensor(stats["image_pixels"]))
    # freq: road .7, sidewalk .5, car 1/6 → median .5
    assert weights[[0, 1, 13]].tolist() == pytest.approx([0.5 / 0.7, 1.0, 3.0])


def test_counts_are_cached_outside_the_dataset(tmp_path):
    root = tmp_path / "cityscapes"
    _write_masks(root, [[[7, 7, 8], [8, 0, 1]]])
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    ds = CityscapesDataset(root, "train")
    first = cached_label_counts(ds, 19, 255, tmp_path / "cache", key="k")
    files = list((tmp_path / "cache" / "label_counts").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["counts"] == first["counts"]
    files[0].write_text(json.dumps({**first, "counts": [5.0] * 19}))  # a cached entry is reused as is
    assert cached_label_counts(ds, 19, 255, tmp_path / "cache", key="k")["counts"] == [5.0] * 19
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_loss_config_weight_by_name(make_cfg, tmp_path):
    root = tmp_path / "cityscapes"
    _write_masks(root, [[[7, 7, 8], [8, 0, 1]], [[26, 7, 7], [7, 7, 7]]])
    cfg = make_cfg(["data=cityscapes", "loss=wce", f"data.root={root}", f"paths.cache_dir={tmp_path / 'cache'}"])
    datamodule = hydra.utils.instantiate(cfg.data)
    loss_cfg = resolve_class_weights(cfg, datamodule)
    assert len(loss_cfg.weight) == 19 and loss_cfg.weight[1] == pytest.approx(1.0)
    assert cfg.loss.weight == "median_frequency"  # the composed config itself is left unchanged
    cfg.loss.weight = "mean_frequency"
    with pytest.raises(ConfigError, match="median_frequency"):
        resolve_class_weights(cfg, datamodule)
