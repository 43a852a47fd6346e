"""Segmentation metrics, per pixel over a split and per case (3D volumes scored slice by slice).

* :mod:`segloss.metrics.confusion` — one confusion matrix per split: IoU, mIoU, Dice, accuracy.
* :mod:`segloss.metrics.per_case` — per-case (volume) Dice from slices, exact under DDP.

Both count without host syncs on accelerators (``count_bins``).
"""

from segloss.metrics.confusion import ConfusionScores, confusion_counts, count_bins, scores_from_confusion
from segloss.metrics.per_case import CaseDice

__all__ = ["CaseDice", "ConfusionScores", "confusion_counts", "count_bins", "scores_from_confusion"]
