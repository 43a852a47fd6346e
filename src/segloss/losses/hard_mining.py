"""Cross-entropy restricted to the hardest pixels: OHEM (MMSegmentation/HRNet) and TopK (nnU-Net).

Both pick pixels by sorting, with no host synchronisation: the selection is a mask computed from a
k-th order statistic, so the data-dependent pixel count never has to reach Python.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from segloss.losses._checks import (
    TargetChecks,
    as_class_tensor,
    at_least_float32,
    check_class_vector,
    check_hard_target,
)
from segloss.losses._distributed import active, gather_last_dim, sum_over_ranks, sum_over_ranks_detached


def _pixel_ce(logits: Tensor, valid: Tensor, safe: Tensor, weight: Tensor | None) -> tuple[Tensor, Tensor]:
    """Unweighted per-pixel CE (0 on ignored pixels) and the pixel weights w_t (0 on ignored)."""
    logits = at_least_float32(logits)
    ce = F.cross_entropy(logits, safe, reduction="none") * valid
    w = valid.to(logits.dtype) if weight is None else weight.to(logits.device, logits.dtype)[safe] * valid
    return ce, w


class OhemCrossEntropyLoss(torch.nn.Module):
    """Online hard example mining CE (Shrivastava et al. 2016; the HRNet/MMSegmentation pixel form).

    Keeps the non-ignored pixels whose true-class probability p_t < ``thresh``; if fewer than
    ``min_kept`` pixels qualify, keeps the ``min_kept`` pixels of lowest p_t instead (all of V if V
    is smaller). L = Σ_kept w_t·CE / Σ_kept w_t. Defaults thresh = 0.7, min_kept = 100 000 (MMSeg). On
    N×C×D×H×W volumes the pixels are voxels and ``min_kept`` counts voxels of the batch (100 000 is 2.4 % of a
    2×128³ batch, as it is of an 8×512×1024 Cityscapes batch).
    Pixel selection is over the whole batch — the global one when training under DDP (:mod:`._distributed`).
    """

    def __init__(
        self,
        thresh: float = 0.7,
        min_kept: int = 100_000,
        weight: Sequence[float] | Tensor | None = None,
        ignore_index: int = 255,
        check_values: bool = True,
    ) -> None:
        super().__init__()
        if not 0 < thresh <= 1 or min_kept < 1:
            raise ValueError(f"need 0 < thresh ≤ 1 and min_kept ≥ 1, got {thresh}, {min_kept}")
        self.thresh, self.min_kept, self.ignore_index, self.check_values = (
            thresh,
            min_kept,
            ignore_index,
            TargetChecks(check_values),
        )
        self.register_buffer("weight", as_class_tensor(weight), persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        valid, safe = check_hard_target(logits, target, self.ignore_index, self.check_values)
        check_class_vector("weight", self.weight, logits.shape[1])
        ce, w = _pixel_ce(logits, valid, safe, self.weight)
        distributed = active(self)  # DDP: the k-th lowest p_t of the global batch, and its global mean
        with torch.no_grad():
            p_true = at_least_float32(logits).softmax(1).gather(1, safe.unsqueeze(1)).squeeze(1)
            p_true = torch.where(valid, p_true, torch.full_like(p_true, float("inf"))).flatten()
            candidates = gather_last_dim(p_true)[0] if distributed else p_true
            k = min(self.min_kept, candidates.numel())
            kth_lowest = torch.topk(candidates, k, largest=False, sorted=True).values[-1]  # inf if |V| < k
            keep = valid & ((p_true.view_as(valid) < self.thresh) | (p_true.view_as(valid) <= kth_lowest))
        w = w * keep
        total, weights = (ce * w).sum(), w.sum()
        if distributed:
            total, weights = sum_over_ranks(total), sum_over_ranks_detached(weights)
        return total / weights.clamp_min(torch.finfo(torch.float32).tiny)


class TopKCrossEntropyLoss(torch.nn.Module):
    """TopK loss (nnU-Net; Wu et al. 2016 "bootstrapped CE"): the mean of the largest k % of the
    per-pixel (weighted) CE values over the non-ignored pixels V. k = 10 by default (nnU-Net).
    The count is ⌈k/100 · |V|⌉ of the non-ignored pixels or voxels (nnU-Net takes k % of all pixels,
    ignored ones included); selection is over the whole batch — the global one when training under DDP.
    """

    def __init__(
        self,
        k: float = 10.0,
        weight: Sequence[float] | Tensor | None = None,
        ignore_index: int = 255,
        check_values: bool = True,
    ) -> None:
        super().__init__()
        if not 0 < k <= 100:
            raise ValueError(f"k is a percentage in (0, 100], got {k}")
        self.k, self.ignore_index = k, ignore_index
        self.check_values = TargetChecks(check_values)
        self.register_buffer("weight", as_class_tensor(weight), persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        valid, safe = check_hard_target(logits, target, self.ignore_index, self.check_values)
        check_class_vector("weight", self.weight, logits.shape[1])
        ce, w = _pixel_ce(logits, valid, safe, self.weight)
        weighted = ce * w if self.weight is not None else ce
        values = torch.where(valid, weighted, torch.full_like(weighted, -1.0)).flatten()  # CE ≥ 0 > −1
        if active(self):  # DDP: the largest k % of the global batch
            return self._global_top(values)
        ordered = values.sort(descending=True).values
        count = torch.ceil(valid.sum() * (self.k / 100.0))
        rank = torch.arange(ordered.numel(), device=ordered.device)
        return (ordered * (rank < count)).sum() / count.clamp_min(1)

    def _global_top(self, values: Tensor) -> Tensor:
        """The mean of the largest ⌈k % · |V|⌉ values of every rank's pixels: each rank sorts the joined
        values the same way, keeps its own selected pixels, and their sum is summed over ranks."""
        everyone, mine = gather_last_dim(values)
        count = torch.ceil((everyone >= 0).sum() * (self.k / 100.0))
        position = torch.empty_like(everyone, dtype=torch.long)
        order = everyone.argsort(descending=True, stable=True)
        position[order] = torch.arange(everyone.numel(), device=everyone.device)
        selected = (position < count)[mine]
        return sum_over_ranks((values * selected).sum()) / count.clamp_min(1)
