"""Segmentation metrics: torchmetrics wiring only.

* IoU_c = TP_c / (TP_c + FP_c + FN_c), accumulated over the whole split (a confusion matrix summed
  over images and, under DDP, over ranks) — not averaged per image.
* mIoU = nan-mean of IoU_c over the classes that occur in the ground truth or in the predictions of
  the split (0/0 classes are nan and skipped), as the official Cityscapes evaluation does.
* Dice_c = 2·TP_c / (2·TP_c + FP_c + FN_c) = 2·IoU_c / (1 + IoU_c) on the same split-level counts;
  mDice is their nan-mean (the ``val/mDice`` reported for medical data; per-case volume Dice is
  :mod:`segloss.case_metrics`).
* acc = pixel accuracy over non-ignored pixels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex


class SegmentationMetrics(nn.Module):
    """Per-split IoU/mIoU/accuracy. ``update(preds N×H×W, target N×H×W)``; ``compute()`` → dict."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        super().__init__()
        self.iou = MulticlassJaccardIndex(
            num_classes, average="none", ignore_index=ignore_index, zero_division=float("nan"), validate_args=False
        )
        self.acc = MulticlassAccuracy(num_classes, average="micro", ignore_index=ignore_index, validate_args=False)

    def update(self, preds: Tensor, target: Tensor) -> None:
        self.iou.update(preds, target)
        self.acc.update(preds, target)

    def compute(self) -> dict[str, Tensor]:
        iou = self.iou.compute()
        dice = 2 * iou / (1 + iou)
        return {
            "IoU": iou,
            "mIoU": torch.nanmean(iou),
            "Dice": dice,
            "mDice": torch.nanmean(dice),
            "acc": self.acc.compute(),
        }

    def reset(self) -> None:
        self.iou.reset()
        self.acc.reset()
