import math

import pytest
import torch

from segloss.metrics import ConfusionScores


def test_miou_is_nanmean_over_classes_in_gt_or_predictions():
    m = ConfusionScores(num_classes=4)
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
    m = ConfusionScores(num_classes=2)
    m.update(torch.tensor([[0, 0, 0, 1]]), torch.tensor([[0, 0, 0, 0]]))  # image IoU_0 = 3/4
    m.update(torch.tensor([[1, 1]]), torch.tensor([[0, 1]]))  # image IoU_0 = 0
    out = m.compute()
    # over the split, class 0 has TP 3, FN 2, FP 0 → 3/5 (a per-image mean would give (3/4 + 0)/2)
    assert out["IoU"][0].item() == pytest.approx(3 / 5)


def test_equals_torchmetrics_jaccard_and_accuracy_on_random_labels_with_ignore():
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

    g = torch.Generator().manual_seed(0)
    ours = ConfusionScores(num_classes=7, ignore_index=255)
    iou = MulticlassJaccardIndex(7, average="none", ignore_index=255, zero_division=float("nan"))
    acc = MulticlassAccuracy(7, average="micro", ignore_index=255)
    for _ in range(3):
        preds = torch.randint(0, 6, (2, 9, 11), generator=g)  # class 6 never predicted …
        target = torch.randint(0, 6, (2, 9, 11), generator=g)  # … nor present: nan
        target[:, :2] = 255
        for metric in (ours, iou, acc):
            metric.update(preds, target)
    out = ours.compute()
    assert torch.allclose(out["IoU"], iou.compute(), equal_nan=True)
    assert out["acc"].item() == pytest.approx(acc.compute().item())
    assert math.isnan(out["IoU"][6]) and out["confmat"].sum() == 3 * 2 * 7 * 11


def test_update_never_waits_for_the_device():
    from segloss.metrics import confusion_counts
    from segloss.utils.host_sync import HostSyncRecorder

    preds, target = torch.randint(0, 19, (8, 64, 128)), torch.randint(0, 19, (8, 64, 128))
    target[:, :5] = 255
    metric = ConfusionScores(19)
    with HostSyncRecorder() as rec:
        metric.update(preds, target)
    # on the CPU the counting is a bincount (nothing to wait for there); everything else is sync-free
    assert rec.calls == ["aten::bincount"]
    meta = confusion_counts(preds.to("meta"), target.to("meta"), 19)  # the accelerator path
    assert meta.shape == (19, 19)
    with HostSyncRecorder() as rec:
        confusion_counts(preds.to("meta"), target.to("meta"), 19)
    assert rec.calls == []


@pytest.mark.parametrize("path", ["histc", "scatter"])
def test_every_counting_path_gives_bincounts_counts(path, monkeypatch):
    """Accelerators count with histc (or scatter_add_ under deterministic algorithms): the CPU's numbers."""
    from segloss.metrics import confusion

    torch.manual_seed(0)
    size = 19 * 19
    index = torch.randint(0, size + 1, (50_000,))  # the spare bin `size` included
    index[:5000] = 7  # a crowded bin, as the diagonal is
    monkeypatch.setattr(confusion, "HISTC_CHUNK", 4096)  # many chunks
    expected = confusion.count_bins(index, size, path="bincount")
    got = confusion.count_bins(index, size, path=path)
    assert got.dtype == torch.int64 and torch.equal(got, expected)
    assert int(expected.sum()) == int((index < size).sum()) and int(expected[7]) >= 5000
