"""Segmentation metrics from one confusion matrix per split (a torchmetrics ``Metric``).

* IoU_c = TP_c / (TP_c + FP_c + FN_c), accumulated over the whole split (a confusion matrix summed
  over images and, under DDP, over ranks) — not averaged per image.
* mIoU = nan-mean of IoU_c over the classes that occur in the ground truth or in the predictions of
  the split (0/0 classes are nan and skipped), as the official Cityscapes evaluation does.
* Dice_c = 2·TP_c / (2·TP_c + FP_c + FN_c) = 2·IoU_c / (1 + IoU_c) on the same split-level counts;
  mDice is their nan-mean (the ``val/mDice`` reported for medical data; per-case volume Dice is
  :mod:`segloss.metrics.per_case`).
* acc = pixel accuracy over non-ignored pixels = trace / sum of the same matrix.
* recall_c = TP_c / (TP_c + FN_c), the share of class c's pixels found (nan when c is absent from the ground
  truth); mRecall is their nan-mean (the mean class accuracy of the FCN paper).

The numbers equal torchmetrics' ``MulticlassJaccardIndex(average="none", zero_division=nan)`` and
``MulticlassAccuracy(average="micro")`` (tested), but the update is one pass over the pixels instead
of two (IoU and accuracy each built their own counts) and never waits for the device: torchmetrics
drops ``ignore_index`` pixels by boolean-mask indexing and counts with ``bincount``, both of which
read a size from the GPU. Here ignored pixels go to a spare bin that is cut off, and on an
accelerator the counts are a ``histc`` with fixed bounds (per-block histograms in shared memory, as
``bincount`` uses once it knows the size — the size is known here, so nothing is read back), or a
``scatter_add_`` into a fixed-size vector where deterministic algorithms are required.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


def confusion_counts(preds: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """int64 C×C matrix (rows: ground truth, columns: prediction) of ``preds``/``target`` (same shape;
    ``preds`` class indices as argmax gives them). Target pixels outside [0, C) — ``ignore_index``
    among them — count nowhere. No host sync."""
    c = num_classes
    target = target.reshape(-1)
    index = target * c + preds.reshape(-1)
    index.masked_fill_((target < 0) | (target >= c), c * c)  # one pass cheaper than torch.where
    return count_bins(index, c * c).view(c, c)


HISTC_CHUNK = 1 << 24  # float32 counts are exact integers up to 2^24: histc runs on chunks of at most that


def count_bins(index: Tensor, size: int, path: str | None = None) -> Tensor:
    """Counts of the values 0…size−1 in the int64 vector ``index``, whose values lie in [0, size]
    (``size`` = a spare bin, dropped). No host sync. ``path`` (None = by device): ``"bincount"`` on the
    CPU, the fastest there (a CPU has nothing to wait for); ``"histc"`` on accelerators: bins of width 1
    over [0, size + 1), so value v lands in bin ⌊v·(size+1)/(size+1)⌋ = v exactly (integers below 2^24
    in float32), chunked so that no float count passes 2^24; ``"scatter"`` (a ``scatter_add_`` of ones:
    every pixel an atomic add on one of a few addresses) where deterministic algorithms are on."""
    if path is None:
        if index.device.type == "cpu":
            path = "bincount"
        else:
            exact = size < HISTC_CHUNK  # bin values must be exact in float32 too
            path = "histc" if exact and not torch.are_deterministic_algorithms_enabled() else "scatter"
    if path == "bincount":
        counts = torch.bincount(index, minlength=size + 1)
    elif path == "histc":
        counts = torch.zeros(size + 1, dtype=torch.int64, device=index.device)
        for chunk in index.split(HISTC_CHUNK):
            counts += torch.histc(chunk.float(), bins=size + 1, min=0, max=size + 1).long()
    else:
        counts = torch.zeros(size + 1, dtype=torch.int64, device=index.device)
        counts.scatter_add_(0, index, torch.ones_like(index))
    return counts[:size]


def scores_from_confusion(confmat: Tensor) -> dict[str, Tensor]:
    """IoU, mIoU, Dice, mDice and acc (see the module docstring) of a C×C confusion matrix."""
    confmat = confmat.double()
    tp = confmat.diagonal()
    union = confmat.sum(0) + confmat.sum(1) - tp
    iou = (tp / union).float()  # 0/0 → nan: a class absent from truth and predictions
    dice = 2 * iou / (1 + iou)
    acc = (tp.sum() / confmat.sum()).float()  # nan before any non-ignored pixel
    recall = (tp / confmat.sum(1)).float()  # per class: TP / ground-truth pixels; nan for absent classes
    return {
        "IoU": iou, "mIoU": torch.nanmean(iou), "Dice": dice, "mDice": torch.nanmean(dice), "acc": acc,
        "recall": recall, "mRecall": torch.nanmean(recall),
    }  # fmt: skip


class ConfusionScores(Metric):
    """The confusion matrix of a split and the scores it gives (IoU/mIoU/Dice/accuracy/recall).
    ``update(preds N×H×W, target N×H×W)``; ``compute()`` → dict
    with ``"confmat"`` (int64 C×C, summed over ranks) and the scores of :func:`scores_from_confusion`."""

    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        super().__init__()
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index={ignore_index} is a class of num_classes={num_classes}; use e.g. 255")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.add_state("confmat", torch.zeros(num_classes, num_classes, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        self.confmat += confusion_counts(preds, target, self.num_classes)

    def compute(self) -> dict[str, Tensor]:
        return {**scores_from_confusion(self.confmat), "confmat": self.confmat.clone()}
