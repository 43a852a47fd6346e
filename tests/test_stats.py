"""`make stats`: label statistics and class-weight vectors of a data config's training split."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from segloss.errors import ConfigError, DatasetNotFoundError
from segloss.losses import class_weights
from segloss.stats import compute_stats, run
from tests.conftest import write_cityscapes_tree


def _tree(root):
    write_cityscapes_tree(root, {"train": {"aachen": 2}, "val": {"bonn": 1}}, size=(2, 3))
    masks = [[[7, 7, 8], [8, 0, 1]], [[26, 7, 7], [7, 7, 7]]]  # road 7, sidewalk 2, car 1; 2 ignored
    for i, mask in enumerate(masks):
        Image.fromarray(np.asarray(mask, dtype=np.uint8)).save(
            root / "gtFine/train/aachen" / f"aachen_{i:06d}_000019_gtFine_labelIds.png"
        )


@pytest.fixture
def stats_cfg(make_cfg, tmp_path):
    root = tmp_path / "cityscapes"
    _tree(root)
    return make_cfg(["data=cityscapes", f"data.root={root}", f"paths.cache_dir={tmp_path / 'cache'}"], name="stats")


def test_counts_frequencies_and_weights_by_hand(stats_cfg):
    stats = compute_stats(stats_cfg)
    assert stats["num_images"] == 2 and stats["pixels"] == 12 and stats["ignored"] == 2
    assert stats["counts"][0] == 7 and stats["counts"][1] == 2 and stats["counts"][13] == 1
    assert stats["share"][0] == pytest.approx(0.7) and stats["share"][13] == pytest.approx(0.1)
    assert stats["image_frequency"][0] == 1.0 and stats["image_frequency"][1] == 0.5
    assert stats["image_frequency"][13] == 0.5 and stats["image_frequency"][5] == 0.0
    counts = torch.tensor(stats["counts"])
    for method in ("inverse", "median_frequency", "enet"):
        expected = class_weights(counts, method, torch.tensor(stats["image_pixels"]))
        np.testing.assert_allclose(stats["weights"][method], expected.tolist(), rtol=1e-6)
    # median frequency by hand: freq road .7, sidewalk .5, car 1/6 → median .5 → w_road = .5/.7
    assert stats["weights"]["median_frequency"][0] == pytest.approx(0.5 / 0.7, rel=1e-6)


def test_counts_are_cached_outside_the_dataset(stats_cfg, tmp_path):
    compute_stats(stats_cfg)
    cached = list((tmp_path / "cache" / "label_counts").glob("*.json"))
    assert len(cached) == 1
    entry = json.loads(cached[0].read_text())
    entry["counts"][0] = 123.0  # a second run reads the cache instead of recounting
    cached[0].write_text(json.dumps(entry))
    assert compute_stats(stats_cfg)["counts"][0] == 123.0
    stats_cfg.refresh = True
    assert compute_stats(stats_cfg)["counts"][0] == 7
    assert not list((tmp_path / "cityscapes").rglob("*.json"))


def test_masks_corrected_in_place_are_recounted(stats_cfg, tmp_path):
    """The cache used to be keyed on path + file count: a mask fixed in place kept its stale counts."""
    assert compute_stats(stats_cfg)["counts"][0] == 7
    mask = tmp_path / "cityscapes/gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"
    Image.fromarray(np.asarray([[26, 26, 26], [26, 26, 26]], dtype=np.uint8)).save(mask)  # all car now
    stats = compute_stats(stats_cfg)
    assert stats["counts"][0] == 5 and stats["counts"][13] == 7  # road 7 → 5, car 1 → 7


def test_run_prints_the_table_and_writes_json(stats_cfg, capsys, tmp_path):
    run(stats_cfg)
    out = capsys.readouterr().out
    assert "sidewalk" in out and "16.67 % of pixels ignored" in out
    assert "0.714" in out  # median-frequency weight of road
    written = json.loads((tmp_path / "run0" / "stats.json").read_text())
    assert written["counts"][0] == 7 and written["class_names"][0] == "road"


def test_unknown_split_is_named(stats_cfg):
    stats_cfg.split = "holdout"
    with pytest.raises(ConfigError, match=r"split='holdout': the data config has splits \{'train': 'train'"):
        compute_stats(stats_cfg)


def test_missing_data_is_one_clear_error(make_cfg, tmp_path):
    """(The command line turns it into one line without a traceback, as every entry point does: test_checks.)"""
    cfg = make_cfg(["data=cityscapes", f"data.root={tmp_path / 'nowhere'}"], name="stats")
    with pytest.raises(DatasetNotFoundError, match=r"^Cityscapes not found: the folder does not exist"):
        compute_stats(cfg)
    assert not (tmp_path / "nowhere").exists()


def test_labels_that_are_all_ignore_are_named(stats_cfg, tmp_path):
    """Used to be a ValueError traceback from the class-weight formula."""
    from segloss.errors import DatasetFormatError

    for mask in (tmp_path / "cityscapes" / "gtFine" / "train").rglob("*labelIds.png"):
        Image.fromarray(np.zeros((2, 3), np.uint8)).save(mask)  # labelId 0: unlabeled → ignore
    with pytest.raises(
        DatasetFormatError, match=r"every pixel of the train labels of .* \(2 images, 12 pixels\) is ignore_index=255"
    ):
        compute_stats(stats_cfg)
