"""Our val mIoU equals the official Cityscapes pixel-level evaluation (cityscapesscripts) on the same
predictions, written by ``segloss.eval save_predictions=true`` in the official result layout."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from segloss.data import CityscapesDataset
from segloss.data.cityscapes_labels import CLASS_NAMES, label_to_train_lut
from segloss.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from segloss.eval import evaluate

OFFSET, STEP = 6, 13  # the red channel of a test image encodes a trainId t as OFFSET + STEP·t


class OracleNet(nn.Module):
    """Reads the trainId that the test images encode in their red channel; knows nothing else."""

    def __init__(self, num_classes: int = 19, **_ignored) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.sharpness = nn.Parameter(torch.tensor(10.0))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        red = (image[:, 0].float() * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255
        train_id = ((red - OFFSET) / STEP).round().clamp(0, self.num_classes - 1).long()
        return nn.functional.one_hot(train_id, self.num_classes).permute(0, 3, 1, 2).float() * self.sharpness


def write_encoded_tree(root: Path, cities: dict[str, int], split: str = "val", size=(24, 40), seed=0) -> None:
    """Official layout; label ids from every id 0–33 in blocks; the image encodes a noisy copy of the
    trainIds (15 % of pixels and every ignored pixel encode a random class), so predictions are imperfect."""
    rng = np.random.default_rng(seed)
    lut = label_to_train_lut()
    for city, count in cities.items():
        (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
        (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            stem = f"{city}_{i:06d}_000019"
            blocks = rng.integers(0, 34, (size[0] // 4, size[1] // 4), dtype=np.uint8)
            label_ids = np.kron(blocks, np.ones((4, 4), dtype=np.uint8))
            train_ids = lut[label_ids].astype(np.int64)
            noisy = np.where((train_ids == 255) | (rng.random(size) < 0.15), rng.integers(0, 19, size), train_ids)
            rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            rgb[..., 0] = OFFSET + STEP * noisy
            Image.fromarray(rgb).save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
            Image.fromarray(label_ids).save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")


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


def eval_overrides(root: Path, ckpt: Path, out: Path, *extra: str) -> list[str]:
    return [
        "data=cityscapes",
        f"data.root={root}",
        "data.num_workers=0",
        "data.val_batch_size=2",
        "data.persistent_workers=false",
        "data.pin_memory=false",
        "model=unet",
        "model.net._target_=tests.test_cityscapes_official.OracleNet",
        f"ckpt_path={ckpt}",
        "save_predictions=true",
        f"predictions_dir={out}",
        "trainer=cpu",
        *extra,
    ]


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
