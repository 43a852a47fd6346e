import math

import pytest
import torch

from segloss.metrics import SegmentationMetrics


def test_miou_is_nanmean_over_classes_in_gt_or_predictions():
    m = SegmentationMetrics(num_classes=4)
    target = torch.tensor([[0, 0, 1, 1, 255, 255]])
    preds = torch.tensor([[0, 1, 1, 2, 0, 3]])  # predictions on ignored pixels count nowhere
    m.update(preds, target)
    out = m.compute()
    # class 0: TP 1, FN 1 → 1/2; class 1: TP 1, FP 1, FN 1 → 1/3; class 2: FP only → 0; class 3: absent → nan
    assert torch.allclose(out["IoU"][:3], torch.tensor([1 / 2, 1 / 3, 0.0]))
    assert math.isnan(out["IoU"][3])
    assert out["mIoU"].item() == pytest.approx((1 / 2 + 1 / 3 + 0) / 3)
    assert out["acc"].item() == pytest.approx(2 / 4)


def test_accumulates_over_batches_not_per_image_mean():
    m = SegmentationMetrics(num_classes=2)
    m.update(torch.tensor([[0, 0, 0, 1]]), torch.tensor([[0, 0, 0, 0]]))  # image IoU_0 = 3/4
    m.update(torch.tensor([[1, 1]]), torch.tensor([[0, 1]]))  # image IoU_0 = 0
    out = m.compute()
    # over the split, class 0 has TP 3, FN 2, FP 0 → 3/5 (a per-image mean would give (3/4 + 0)/2)
    assert out["IoU"][0].item() == pytest.approx(3 / 5)
