"""The metrics loss papers report besides mIoU: boundary quality, calibration and small objects.

All count pixels whose target is a class (``ignore_index`` and other values count nowhere) and accumulate
over the whole split (summed over ranks under DDP), like the confusion matrix of
:mod:`segloss.metrics.confusion`.

* **Boundary IoU** (Cheng, Girshick, Dollár, Berg & Kirillov, CVPR 2021): per class c, with G and P the true
  and predicted masks and B_d(M) = M minus its erosion by a (2d+1)² square (the pixels of M within d of its
  contour in the chessboard metric; the authors erode with a 3×3 kernel d times, the same set; pixels
  outside the image and ignored pixels count as not-M, so a mask touching them has a contour there),
  BIoU_c = Σ|B_d(G) ∩ B_d(P)| / Σ|B_d(G) ∪ B_d(P)|
  over the split's images. d = ``dilation_ratio`` × the image diagonal, rounded, at least 1 (the paper's
  0.02 by default). Region losses and CE differ most here.
* **Calibration** of the softmax (Guo, Pleiss, Sun & Weinberger, ICML 2017): the top-label expected
  calibration error over 15 equal-width confidence bins, ECE = Σ_b |Σ_{i∈b} 1[ŷ_i = y_i] − Σ_{i∈b} conf_i| / N
  (= Σ_b (n_b/N)·|acc_b − conf_b|), and the mean negative log-likelihood −log p_{y_i}. Focal loss, label
  smoothing and KL change these more than they change mIoU. Pixels with non-finite logits are left out.
* **Small-object recall**: the connected components (8-connectivity) of each class's ground truth smaller
  than ``small_area`` pixels (COCO's "small" is 32² = 1024), and the share of them of which at least half
  the pixels are predicted as their class — per class and overall. Rare, thin classes live here. Runs on the
  CPU with ``scipy.ndimage.label`` (one component labelling per image and class present: the costliest of
  these metrics, ``make bench-metrics``).

On volumes (N×D×H×W) each item is a volume: small objects are 26-connected components counted in voxels, the
calibration bins count voxels, and Boundary IoU's bands are taken in each axial slice (the chessboard distance
within the H×W plane, d from the slice's diagonal) — a slice-wise version of the 2D metric, not a 3D surface band;
per-case HD95/ASSD (:mod:`segloss.metrics.surface`) measure boundaries in 3D.

Each metric also keeps its last batch's counts per image (``latest``: N×K arrays, int64 or float64) — the
band intersections and unions, the small objects and those found, the calibration bins and the NLL sum — which
:class:`segloss.metrics.per_image.PerImageCounts` stores with the TP/FP/FN, so that ``make compare`` can give
these scores intervals over images (:func:`per_image_fields`; every score is a function of the sums).
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F
from torchmetrics import Metric

from segloss.metrics.confusion import count_bins
from segloss.utils import consumer_rules
from segloss.utils.rules import Rule, require_all

ECE_BINS = 15


def per_image_fields(num_classes: int, bins: int = ECE_BINS) -> dict[str, dict[str, tuple[int, torch.dtype]]]:
    """Per metric, the per-image arrays it keeps in ``latest``: name → (width, dtype)."""
    return {
        "boundary": {"band_inter": (num_classes, torch.int64), "band_union": (num_classes, torch.int64)},
        "calibration": {
            "calib_count": (bins, torch.int64),
            "calib_correct": (bins, torch.int64),
            "calib_confidence": (bins, torch.float64),
            "nll_sum": (1, torch.float64),
        },
        "small": {"small_found": (num_classes, torch.int64), "small_objects": (num_classes, torch.int64)},
    }


def per_image_bins(index: Tensor, bins: int, weights: Tensor | None = None) -> Tensor:
    """N × bins: per image (the first axis of ``index``), how many of its entries (or how much ``weights``) fall
    in each bin; entries with index ≥ ``bins`` count nowhere."""
    n = index.shape[0]
    index = index.reshape(n, -1)
    flat = torch.where(index < bins, index + bins * torch.arange(n, device=index.device)[:, None], n * bins)
    if weights is None:
        return count_bins(flat.flatten(), n * bins).view(n, bins)
    sums = torch.zeros(n * bins + 1, dtype=weights.dtype, device=index.device)
    return sums.index_add_(0, flat.flatten(), weights.reshape(-1))[: n * bins].view(n, bins)


def label_edges(labels: Tensor) -> Tensor:
    """bool N×H×W: pixels with an 8-neighbour of another label (the outside of the image counts as one)."""
    padded = F.pad(labels, (1, 1, 1, 1), value=-1)
    h, w = labels.shape[-2:]
    edges = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    for dy, dx in ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)):
        edges |= padded[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] != labels
    return edges


def box_any(mask: Tensor, radius: int) -> Tensor:
    """bool N×H×W: whether the (2r+1)² square around each pixel holds a True pixel (an integral image: O(1)
    per pixel whatever the radius)."""
    if radius == 0:
        return mask
    k, (h, w) = 2 * radius + 1, mask.shape[-2:]
    sums = F.pad(mask.to(torch.int32), (radius + 1, radius, radius + 1, radius)).cumsum(-1).cumsum(-2)
    window = sums[..., k : k + h, k : k + w] - sums[..., :h, k : k + w] - sums[..., k : k + h, :w] + sums[..., :h, :w]
    return window > 0


def near_other_label(labels: Tensor, radius: int) -> Tensor:
    """bool N×H×W: pixels with another label (or the outside of the image) within ``radius`` ≥ 1 in the chessboard
    metric — for every class at once, the pixels of B_d(M_c) among those labelled c. Such a pixel exists exactly
    when an edge pixel (:func:`label_edges`) lies within radius − 1: walking from the pixel towards the other
    label, the last pixel of its own label is an edge; and an edge pixel and its differing neighbour, both within
    the radius, cannot both carry the pixel's label."""
    return box_any(label_edges(labels.to(torch.int16)), radius - 1)  # class ids and -1 fit int16: less to compare


class PerClassRatio(Metric):
    """Two per-class int64 counts summed over the split (and ranks), ``hits`` and ``total``; ``ratio()`` is
    hits / total per class, nan where total is 0."""

    full_state_update = False

    def __init__(self, num_classes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.add_state("hits", torch.zeros(num_classes, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(num_classes, dtype=torch.int64), dist_reduce_fx="sum")

    def ratio(self) -> Tensor:
        total = self.total.double()
        return torch.where(total > 0, self.hits.double() / total.clamp_min(1), math.nan).float()


def boundary_width(height: int, width: int, dilation_ratio: float) -> int:
    return max(1, round(dilation_ratio * math.hypot(height, width)))


class BoundaryIoU(PerClassRatio):
    """Per-class Boundary IoU over the split: ``compute()`` → ``{"BIoU": C, "mBIoU"}`` (module docstring).

    The bands of every class come from one pass over the label map (a pixel of class c is in B_d(M_c) exactly
    when a pixel within d is not c, ignored pixels and the outside included: :func:`near_other_label`), so the
    cost grows neither with the number of classes nor with d."""

    def __init__(self, num_classes: int, dilation_ratio: float = 0.02, **kwargs) -> None:
        super().__init__(num_classes, **kwargs)  # hits: band intersections, total: band unions
        self.dilation_ratio = dilation_ratio

    def update(self, preds: Tensor, target: Tensor) -> None:
        c = self.num_classes
        valid = (target >= 0) & (target < c)
        truth = torch.where(valid, target, c).long()  # ignored pixels: a label of their own, in no class's mask
        guess = torch.where(valid, preds, c).long()
        width = boundary_width(*target.shape[-2:], self.dilation_ratio)
        band_t = near_other_label(truth, width) & valid
        band_g = near_other_label(guess, width) & valid
        both = band_t & band_g & (truth == guess)
        inter = per_image_bins(torch.where(both, truth, c), c)
        union = per_image_bins(torch.where(band_t, truth, c), c) + per_image_bins(torch.where(band_g, guess, c), c)
        union -= inter
        self.latest = {"band_inter": inter, "band_union": union}
        self.hits += inter.sum(0)
        self.total += union.sum(0)

    def compute(self) -> dict[str, Tensor]:
        biou = self.ratio()
        return {"BIoU": biou, "mBIoU": torch.nanmean(biou)}


class Calibration(Metric):
    """Top-label ECE (15 bins) and NLL of the softmax: ``update(logits N×C×H×W, target)``, ``compute()`` →
    ``{"ECE", "NLL"}`` (C = 1: the sigmoid's two classes)."""

    full_state_update = False

    def __init__(self, num_classes: int, bins: int = ECE_BINS, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes, self.bins = num_classes, bins
        self.add_state("count", torch.zeros(bins, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("correct", torch.zeros(bins, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("confidence", torch.zeros(bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("nll", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor) -> None:
        logits = logits.float()
        if logits.shape[1] == 1:  # σ(z) = softmax of (0, z)
            logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
        valid = (target >= 0) & (target < logits.shape[1])
        safe = torch.where(valid, target, 0)
        log_norm = torch.logsumexp(logits, dim=1)  # log Σ_c e^{z_c}: no N×C×H×W log-softmax is written
        top, pred = logits.max(1)
        confidence = (top - log_norm).exp()
        valid &= confidence.isfinite()  # non-finite logits (a broken net) have no confidence to score
        index = torch.where(valid, (confidence * self.bins).long().clamp_(max=self.bins - 1), self.bins)
        count = per_image_bins(index, self.bins)
        correct = per_image_bins(torch.where(pred == safe, index, self.bins), self.bins)
        conf = per_image_bins(index, self.bins, confidence.double())
        nll = log_norm - logits.gather(1, safe.unsqueeze(1)).squeeze(1)  # −log p_y
        nll = torch.where(valid, nll, 0.0).double().flatten(1).sum(1, keepdim=True)
        self.latest = {"calib_count": count, "calib_correct": correct, "calib_confidence": conf, "nll_sum": nll}
        self.count += count.sum(0)
        self.correct += correct.sum(0)
        self.confidence += conf.sum(0)
        self.nll += nll.sum()

    def compute(self) -> dict[str, Tensor]:
        pixels = self.count.sum().double()
        ece = (self.correct.double() - self.confidence).abs().sum() / pixels
        return {"ECE": ece.float(), "NLL": (self.nll / pixels).float()}


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Fully connected components of a bool array — 8-connectivity for an H×W image, 26 for a D×H×W volume:
    (labels, count)."""
    from scipy.ndimage import label

    return label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))


class SmallObjectRecall(PerClassRatio):
    """Recall of ground-truth components under ``small_area`` pixels (module docstring): ``compute()`` →
    ``{"small_recall": C, "small_objects": C (how many there were), "mSmallRecall"}`` (nan-mean over classes)."""

    def __init__(self, num_classes: int, small_area: int = 1024, **kwargs) -> None:
        super().__init__(num_classes, **kwargs)  # hits: small objects found, total: small objects
        self.small_area = small_area

    def update(self, preds: Tensor, target: Tensor) -> None:
        preds, target = preds.cpu().numpy(), target.cpu().numpy()
        objects = np.zeros((len(preds), self.num_classes), dtype=np.int64)
        found = np.zeros((len(preds), self.num_classes), dtype=np.int64)
        for i, (image, truth) in enumerate(zip(preds, target, strict=True)):
            for c in np.unique(truth):
                if not 0 <= c < self.num_classes:
                    continue
                labels, count = components(truth == c)
                areas = np.bincount(labels.ravel(), minlength=count + 1)
                hits = np.bincount(labels.ravel(), weights=(image == c).ravel(), minlength=count + 1)
                small = (areas[1:] < self.small_area) & (areas[1:] > 0)
                objects[i, c] = int(small.sum())
                found[i, c] = int((small & (hits[1:] >= 0.5 * areas[1:])).sum())
        self.latest = {
            "small_found": torch.from_numpy(found).to(self.hits.device),
            "small_objects": torch.from_numpy(objects).to(self.total.device),
        }
        self.total += self.latest["small_objects"].sum(0)
        self.hits += self.latest["small_found"].sum(0)

    def compute(self) -> dict[str, Tensor]:
        recall = self.ratio()
        return {"small_recall": recall, "small_objects": self.total.clone(), "mSmallRecall": torch.nanmean(recall)}


class QualityMetrics(torch.nn.ModuleDict):
    """The metrics of this module that a run switches on (the ``metrics`` config node), updated and computed
    together: ``accumulate(preds, target, logits)``, ``compute()`` → one dict, ``reset()``. A ``ModuleDict`` of
    torchmetrics ``Metric`` objects, so the LightningModule moves them with itself.

    Raises:
        ConfigError: a switch or option breaks its rule in :attr:`RULES` (the message names the ``metrics`` key).
    """

    # The rules of the metrics config node's options: applied here, declared in utils.consumer_rules (read by checks).
    RULES: ClassVar[dict[str, Rule]] = consumer_rules.QUALITY

    def __init__(
        self,
        num_classes: int,
        boundary_iou: bool = True,
        boundary_dilation: float = 0.02,
        calibration: bool = True,
        small_objects: bool = False,
        small_object_area: int = 1024,
    ) -> None:
        super().__init__()
        require_all(self.RULES, dict(boundary_iou=boundary_iou, boundary_dilation=boundary_dilation,
                                     calibration=calibration, small_objects=small_objects,
                                     small_object_area=small_object_area))  # fmt: skip
        self.num_classes = num_classes
        if boundary_iou:
            self["boundary"] = BoundaryIoU(num_classes, boundary_dilation)
        if calibration:
            self["calibration"] = Calibration(num_classes)
        if small_objects:
            self["small"] = SmallObjectRecall(num_classes, small_object_area)

    def per_image_fields(self) -> dict[str, tuple[int, torch.dtype]]:
        """name → (width, dtype) of the per-image arrays that :meth:`accumulate` returns."""
        fields = per_image_fields(self.num_classes)
        return {k: v for name in self.keys() for k, v in fields[name].items()}

    def accumulate(self, preds: Tensor, target: Tensor, logits: Tensor) -> dict[str, Tensor]:
        """Update every metric with one batch; returns the batch's per-image arrays (:meth:`per_image_fields`)."""
        latest = {}
        for name, metric in self.items():
            metric.update(logits, target) if name == "calibration" else metric.update(preds, target)
            latest.update(metric.latest)
        return latest

    def compute(self) -> dict[str, Tensor]:
        return {k: v for metric in self.values() if metric.update_called for k, v in metric.compute().items()}

    def reset(self) -> None:
        for metric in self.values():
            metric.reset()
