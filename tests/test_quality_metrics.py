"""Boundary IoU, calibration, recall and small-object recall against their definitions (scipy / numpy loops)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import binary_erosion

from segloss.metrics import ConfusionScores
from segloss.metrics.quality import BoundaryIoU, Calibration, SmallObjectRecall, boundary_width
from tests.conftest import QUIET_RUN, TINY_SYNTHETIC, fit


def _scene(seed: int = 0, c: int = 4):
    g = torch.Generator().manual_seed(seed)
    target = torch.zeros(3, 40, 56, dtype=torch.int64)
    target[:, 8:30, 10:40] = 1
    target[:, 15:20, 20:26] = 2
    target[1, :, 45:] = 3  # touches the image border
    target[2, :4] = 255
    preds = target.clone()
    preds[preds == 255] = 0
    noise = torch.rand(target.shape, generator=g) < 0.1
    preds[noise] = torch.randint(0, c, (int(noise.sum()),), generator=g)
    return preds, target


def test_boundary_iou_is_the_papers_band_overlap():
    preds, target = _scene()
    metric = BoundaryIoU(4, dilation_ratio=0.05)
    metric.update(preds, target)
    d = boundary_width(40, 56, 0.05)
    assert d == round(0.05 * math.hypot(40, 56))

    def band(mask):  # the authors' way: pad with background, erode with a 3×3 kernel d times
        padded = np.pad(mask, 1)
        eroded = binary_erosion(padded, np.ones((3, 3)), iterations=d)[1:-1, 1:-1]
        return mask & ~eroded

    inter, union = np.zeros(4), np.zeros(4)
    valid = (target >= 0) & (target < 4)
    for p, t, v in zip(preds.numpy(), target.numpy(), valid.numpy(), strict=True):
        for c in range(4):
            bt, bp = band((t == c) & v), band((p == c) & v)
            inter[c] += (bt & bp).sum()
            union[c] += (bt | bp).sum()
    out = metric.compute()
    np.testing.assert_allclose(out["BIoU"].numpy(), inter / union, rtol=1e-6)
    assert out["mBIoU"].item() == pytest.approx(float(np.mean(inter / union)), rel=1e-6)
    perfect = BoundaryIoU(4, 0.05)
    perfect.update(torch.where(target == 255, 0, target), target)
    assert torch.allclose(perfect.compute()["BIoU"], torch.ones(4))


def test_expected_calibration_error_and_nll_follow_their_definitions():
    g = torch.Generator().manual_seed(2)
    logits = 3 * torch.randn(2, 5, 12, 9, generator=g)
    target = torch.randint(0, 5, (2, 12, 9), generator=g)
    target[0, :2] = 255
    metric = Calibration(5)
    metric.update(logits[:1], target[:1])
    metric.update(logits[1:], target[1:])
    out = metric.compute()
    probs = logits.softmax(1).permute(0, 2, 3, 1).reshape(-1, 5).double()
    t = target.reshape(-1)
    keep = t != 255
    probs, t = probs[keep], t[keep]
    conf, pred = probs.max(1)
    ece = 0.0
    for b in range(15):
        inside = (conf > b / 15) & (conf <= (b + 1) / 15) if b else conf <= 1 / 15
        if inside.any():
            ece += inside.double().mean() * abs((pred[inside] == t[inside]).double().mean() - conf[inside].mean())
    assert out["ECE"].item() == pytest.approx(float(ece), abs=1e-5)
    nll = F.cross_entropy(logits.double(), target, ignore_index=255)
    assert out["NLL"].item() == pytest.approx(nll.item(), rel=1e-5)


def test_recall_comes_from_the_confusion_matrix():
    preds, target = _scene(1)
    metric = ConfusionScores(4)
    metric.update(preds, target)
    out = metric.compute()
    valid = target != 255
    for c in range(4):
        truth = (target == c) & valid
        assert out["recall"][c].item() == pytest.approx(float(((preds == c) & truth).sum() / truth.sum()))
    assert out["mRecall"].item() == pytest.approx(float(out["recall"].mean()))


def test_small_object_recall_counts_components_found_by_half_their_pixels():
    target = torch.zeros(1, 30, 30, dtype=torch.int64)
    target[0, 2:5, 2:5] = 1  # 9 px: found (all predicted)
    target[0, 10:14, 10:14] = 1  # 16 px: 6 predicted → missed
    target[0, 20:22, 20:30] = 2  # 20 px: 10 predicted → found (half)
    target[0, 25:30, 0:8] = 1  # 40 px: not small at small_area=30
    preds = torch.zeros_like(target)
    preds[0, 2:5, 2:5] = 1
    preds[0, 10:12, 10:13] = 1
    preds[0, 20:22, 20:25] = 2
    metric = SmallObjectRecall(3, small_area=30)
    metric.update(preds, target)
    out = metric.compute()
    assert out["small_objects"].tolist() == [0, 2, 1]
    assert out["small_recall"][1].item() == 0.5 and out["small_recall"][2].item() == 1.0
    assert math.isnan(out["small_recall"][0].item()) and out["mSmallRecall"].item() == 0.75


@pytest.mark.slow
def test_a_training_logs_the_quality_metrics_and_the_study_preset_adds_small_objects(tmp_path):
    run = fit([*TINY_SYNTHETIC, *QUIET_RUN, f"paths.data_dir={tmp_path / 'data'}", "trainer.max_epochs=1",
               "metrics=study"], tmp_path)  # fmt: skip
    logged = run["trainer"].callback_metrics
    for key in ("val/mBIoU", "val/ECE", "val/NLL", "val/mRecall", "val/mSmallRecall", "val/BIoU/road"):
        assert key in logged and torch.isfinite(logged[key]), key
    assert 0 <= logged["val/ECE"] <= 1 and logged["val/NLL"] > 0
    assert 0 <= logged["val/mBIoU"] <= logged["val/mIoU"] + 0.2  # boundaries are the hard part


def test_calibration_leaves_out_pixels_with_non_finite_logits():
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, :, 0, 0] = float("nan")
    target = torch.zeros(1, 2, 2, dtype=torch.int64)
    metric = Calibration(3)
    metric.update(logits, target)
    out = metric.compute()
    assert int(metric.count.sum()) == 3  # the NaN pixel counts nowhere
    assert out["NLL"].item() == pytest.approx(math.log(3)) and out["ECE"].item() == pytest.approx(2 / 3)
