"""Our val mIoU equals the official Cityscapes pixel-level evaluation (cityscapesscripts) on the same
predictions, written by ``segloss.eval save_predictions=true`` in the official result layout."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segloss.data import CityscapesDataset
from segloss.data.cityscapes_labels import CLASS_NAMES
from segloss.eval import evaluate
from tests.helpers.cityscapes import eval_overrides, write_encoded_tree


def official_evaluation(root: Path, predictions: Path) -> dict:
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

    args = official.args
    args.predictionPath, args.predictionWalk = str(predictions), None
    args.evalInstLevelScore, args.evalPixelAccuracy, args.JSONOutput, args.quiet = False, False, False, True
    ground_truth = sorted(str(p) for p in (root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    found = [official.getPrediction(args, gt) for gt in ground_truth]
    return official.evaluateImgLists(found, ground_truth, args)


@pytest.fixture
def oracle_checkpoint(tmp_path) -> Path:
    path = tmp_path / "oracle.ckpt"
    torch.save({"state_dict": {"net.sharpness": torch.tensor(10.0)}}, path)
    return path


@pytest.mark.parametrize(
    "inference", [[], ["inference=slide", "inference.crop_size=[16,24]", "inference.stride=[8,12]"]]
)
def test_our_miou_equals_the_official_cityscapes_evaluation(make_cfg, tmp_path, oracle_checkpoint, inference):
    root = tmp_path / "cityscapes"
    write_encoded_tree(root, {"frankfurt": 3, "lindau": 2, "munster": 2})
    out = tmp_path / "results"
    cfg = make_cfg(eval_overrides(root, oracle_checkpoint, out, *inference), name="eval")
    ours = evaluate(cfg)

    written = sorted(p.name for p in out.rglob("*.png"))
    assert len(written) == 7 and written[0] == "frankfurt_000000_000019.png"
    official = official_evaluation(root, out)
    assert 0.5 < official["averageScoreClasses"] < 0.95  # imperfect but informative predictions
    assert abs(float(ours["mIoU"]) - official["averageScoreClasses"]) < 1e-6
    for name, iou in zip(CLASS_NAMES, ours["IoU"].tolist()):
        theirs = official["classScores"][name]
        assert (math.isnan(iou) and math.isnan(theirs)) or abs(iou - theirs) < 1e-6, name


def test_result_files_hold_label_ids(tmp_path):
    pred = np.array([[0, 1, 2], [13, 18, 10]])
    path = CityscapesDataset.save_prediction(pred, tmp_path, "ulm_000001_000019")
    assert path == tmp_path / "ulm_000001_000019.png"
    with Image.open(path) as img:
        assert img.mode == "L"
        np.testing.assert_array_equal(np.asarray(img), [[7, 8, 11], [26, 33, 23]])
    with pytest.raises(ValueError, match="outside the 19 trainIds"):
        CityscapesDataset.save_prediction(np.array([[255]]), tmp_path, "x")


def test_test_split_without_labels_is_all_ignore_and_can_be_exported(tmp_path):
    root = tmp_path / "cityscapes"
    write_encoded_tree(root, {"berlin": 2}, split="test")
    for path in (root / "gtFine").rglob("*"):
        if path.is_file():
            path.unlink()
    (root / "gtFine" / "test" / "berlin").rmdir()
    (root / "gtFine" / "test").rmdir()
    dataset = CityscapesDataset(root, "test")
    item = dataset[1]
    assert item["name"] == "berlin_000001_000019"
    assert item["mask"].shape == (24, 40) and bool((item["mask"] == 255).all())
    assert dataset.image_size(0) == (24, 40)
