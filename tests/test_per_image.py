"""Per-image TP/FP/FN: they sum to the split's confusion counts, and a training stores those of its best epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segloss.comparison.significance import SCORES
from segloss.metrics import ConfusionScores
from segloss.metrics.per_image import PerImageCounts
from segloss.metrics.quality import Calibration, QualityMetrics
from tests.conftest import QUIET_RUN, TINY_SYNTHETIC, fit


def test_counts_per_image_sum_to_the_split_counts_and_follow_the_positions():
    torch.manual_seed(0)
    preds, target = torch.randint(0, 4, (5, 6, 7)), torch.randint(0, 4, (5, 6, 7))
    target[1, :2] = 255
    images, split = PerImageCounts(4), ConfusionScores(4)
    images.update(preds[:3], target[:3], ["a", "b", "c"], torch.tensor([0, 2, 4]))  # rank 0 of 2: 0, 2, 4
    images.update(preds[3:], target[3:], ["d", "e"], torch.tensor([1, 3]))  # rank 1: 1, 3
    split.update(preds, target)
    out = images.compute()
    assert out["index"].tolist() == [0, 1, 2, 3, 4] and out["names"] == ["a", "d", "b", "e", "c"]
    confmat = split.compute()["confmat"]
    tp = confmat.diagonal()
    assert torch.equal(out["tp"].sum(0), tp)
    assert torch.equal(out["fp"].sum(0), confmat.sum(0) - tp) and torch.equal(out["fn"].sum(0), confmat.sum(1) - tp)
    one = (preds[0] == 2) & (target[0] == 2)
    assert out["tp"][0, 2] == one.sum() and out["fp"][0, 2] == ((preds[0] == 2) & (target[0] != 2)).sum()
    assert int(out["tp"][2].sum() + out["fn"][2].sum()) == int((target[1] != 255).sum())  # image "b" = row 2


@pytest.mark.slow
def test_a_training_stores_the_per_image_counts_of_its_best_epoch(tmp_path):
    run = fit([*TINY_SYNTHETIC, *QUIET_RUN, f"paths.data_dir={tmp_path / 'data'}", "trainer.max_epochs=2"], tmp_path)
    stored = np.load(tmp_path / "per_image_val.npz")
    assert len(stored["index"]) == 12 and list(stored["index"]) == list(range(12))
    assert all(name for name in stored["names"]) and len(set(stored["names"])) == 12
    tp, fp, fn = (stored[k].sum(0).astype(float) for k in ("tp", "fp", "fn"))
    union = tp + fp + fn
    iou = np.divide(tp, union, out=np.full_like(tp, np.nan), where=union > 0)
    assert np.nanmean(iou) == pytest.approx(float(run["best_value"]), abs=1e-6)
    assert str(stored["metric"]) == "val/mIoU" and float(stored["value"]) == pytest.approx(run["best_value"])
    assert torch.allclose(run["results"]["IoU"].double(), torch.from_numpy(iou), equal_nan=True, atol=1e-6)
    # the quality counts (default metrics: Boundary IoU and calibration) give the logged scores back
    sums = {k: stored[k].sum(0) for k in stored.files if k not in ("index", "names", "class_names", "metric", "value")}
    for name in ("mBIoU", "ECE", "NLL", "mRecall"):
        needs, score = SCORES[name]
        assert float(score({k: sums[k] for k in needs})) == pytest.approx(float(run["results"][name]), abs=1e-6), name
    assert "small_found" not in stored  # off by default: no column for it


def test_extra_per_image_arrays_travel_with_the_rows_bit_for_bit():
    """The quality metrics' per-image arrays (float64 too) come back as given, in split order, and sum to the
    split-level metric."""
    torch.manual_seed(1)
    logits = torch.randn(4, 3, 16, 20)
    target = torch.randint(0, 3, (4, 16, 20))
    target[2, :5] = 255
    quality = QualityMetrics(3, small_objects=True, small_object_area=64)
    images = PerImageCounts(3, extras=quality.per_image_fields())
    for part, first in ((slice(0, 2), 0), (slice(2, 4), 1)):  # two ranks of a 2-rank pass
        preds = logits[part].argmax(1)
        extras = quality.accumulate(preds, target[part], logits[part])
        assert extras["calib_confidence"].dtype == torch.float64 and extras["band_inter"].shape == (2, 3)
        index = torch.tensor([first, first + 2])  # the positions the batches carry
        images.update(preds, target[part], ["p", "q"] if first == 0 else ["r", "s"], index, extras)
    out, split = images.compute(), quality.compute()
    assert out["names"] == ["p", "r", "q", "s"]
    sums = {k: v.numpy().sum(0) for k, v in out.items() if k not in ("index", "names")}
    for name, key in (("mBIoU", "mBIoU"), ("ECE", "ECE"), ("NLL", "NLL"), ("mSmallRecall", "mSmallRecall")):
        needs, score = SCORES[name]
        assert float(score({k: sums[k] for k in needs})) == pytest.approx(float(split[key]), rel=1e-6), name
    single = Calibration(3)
    single.update(logits[1:2], target[1:2])
    assert torch.equal(out["calib_confidence"][2], single.latest["calib_confidence"][0])  # image q, float64 exact
    with pytest.raises(ValueError, match="'band_inter' is missing"):
        images.update(preds, target[2:], ["x", "y"], torch.tensor([8, 10]), {})
