"""Overlap losses: Dice, Jaccard, Tversky, Focal-Tversky and Generalized Dice.

All share :mod:`segloss.losses._region` (I_c, P_c, G_c over non-ignored pixels, float32, batch or
per-image statistics, "all"/"present" class averaging). With ``classes="all"`` a class absent from
the ground truth still counts: its score is s / (P_c + s) ≈ 0 as soon as it is predicted, so false
positives on empty classes are punished (smp multiplies such classes by 0 and lets them go).
"""

from __future__ import annotations

import torch
from torch import Tensor

from segloss.losses._checks import TargetChecks, check_hard_target
from segloss.losses._distributed import active
from segloss.losses._region import RegionLossBase, class_probabilities, global_region_sums, region_sums


class DiceLoss(RegionLossBase):
    """Soft Dice loss (Milletari et al., V-Net, 2016; squared form from that paper).

    Dice_c = (2 I_c + s) / (P_c + G_c + s);  loss = mean_c (1 − Dice_c), or mean_c(−log Dice_c)
    with ``log=True`` (the "CE − log Dice" compound of the seed work). P_c = Σ p_c² when ``squared``.
    Defaults: s = 1e-5 (nnU-Net), batch statistics, all classes, background included.
    """

    def __init__(self, smooth: float = 1e-5, squared: bool = False, log: bool = False, **kwargs) -> None:
        super().__init__(smooth=smooth, **kwargs)
        self.squared, self.log = squared, log

    def per_class(self, inter: Tensor, p_sum: Tensor, ground: Tensor) -> Tensor:
        dice = (2 * inter + self.smooth) / (p_sum + ground + self.smooth)
        if self.log:
            return -torch.log(dice.clamp_min(torch.finfo(dice.dtype).tiny))
        return 1 - dice


class JaccardLoss(RegionLossBase):
    """Soft Jaccard (IoU) loss (Rahman & Wang 2016): J_c = (I_c + s) / (P_c + G_c − I_c + s) with
    linear P_c; loss = mean_c (1 − J_c)."""

    def per_class(self, inter: Tensor, p_sum: Tensor, ground: Tensor) -> Tensor:
        return 1 - (inter + self.smooth) / (p_sum + ground - inter + self.smooth)


class TverskyLoss(RegionLossBase):
    """Tversky loss (Salehi, Erdogmus & Gholipour 2017).

    TI_c = (I_c + s) / (I_c + α FP_c + β FN_c + s), FP_c = Σ p_c (1 − y_c) = P_c − I_c,
    FN_c = Σ (1 − p_c) y_c = G_c − I_c;  loss = mean_c (1 − TI_c).

    Convention: **α weighs false positives, β false negatives** (Salehi's paper; defaults α = 0.3,
    β = 0.7 favour recall). Abraham & Khan's code and some libraries swap the names; α = β = 0.5
    gives Dice and α = β = 1 gives Jaccard.
    """

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, smooth: float = 1e-5, **kwargs) -> None:
        super().__init__(smooth=smooth, **kwargs)
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be ≥ 0, got {alpha}, {beta}")
        self.alpha, self.beta = alpha, beta

    def tversky_index(self, inter: Tensor, p_sum: Tensor, ground: Tensor) -> Tensor:
        fp, fn = p_sum - inter, ground - inter
        return (inter + self.smooth) / (inter + self.alpha * fp + self.beta * fn + self.smooth)

    def per_class(self, inter: Tensor, p_sum: Tensor, ground: Tensor) -> Tensor:
        return 1 - self.tversky_index(inter, p_sum, ground)


class FocalTverskyLoss(TverskyLoss):
    """Focal Tversky loss (Abraham & Khan, ISBI 2019): loss = mean_c (1 − TI_c)^(1/γ).

    The exponent is applied **per class before the mean**, as in the paper (smp applies it after
    the class mean, smp issue #734). γ ∈ [1, 3], default 4/3 (the paper's best); TI_c as in
    :class:`TverskyLoss` with α on false positives and β on false negatives (Abraham's code names
    them the other way round: its α = 0.7 on false negatives is our β = 0.7). At TI_c = 1 the
    value is exactly 0 with a zero gradient (x^(3/4) has an infinite slope at 0, so that point is
    handled explicitly).
    """

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, gamma: float = 4 / 3, **kwargs) -> None:
        super().__init__(alpha=alpha, beta=beta, **kwargs)
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        self.gamma = gamma

    def per_class(self, inter: Tensor, p_sum: Tensor, ground: Tensor) -> Tensor:
        gap = 1 - self.tversky_index(inter, p_sum, ground)
        positive = gap > 0
        safe = torch.where(positive, gap, torch.ones_like(gap))
        return torch.where(positive, safe.pow(1 / self.gamma), torch.zeros_like(gap))


class GeneralizedDiceLoss(torch.nn.Module):
    """Generalized Dice loss (Sudre et al., DLMIA 2017).

    w_c = 1 / G_c²;  loss = 1 − (2 Σ_c w_c I_c + s) / (Σ_c w_c (P_c + G_c) + s).

    A class absent from the ground truth has an infinite weight; it is replaced by the largest
    finite weight (as MONAI does; a 1e-10 guard instead gives ~1e20 weights and collapses training).
    Note that with large images Σ w_c(P_c + G_c) is of order C / G_c and s = 1e-5 is not negligible
    there: the paper's formula, kept as is. ``per_image`` averages over images with valid pixels.
    """

    def __init__(
        self, smooth: float = 1e-5, per_image: bool = False, ignore_index: int = 255, check_values: bool = True
    ) -> None:
        super().__init__()
        self.smooth, self.per_image = smooth, per_image
        self.ignore_index = ignore_index
        self.check_values = TargetChecks(check_values)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        valid, safe = check_hard_target(logits, target, self.ignore_index, self.check_values)
        inter, p_sum, ground = region_sums(class_probabilities(logits), valid, safe, self.per_image)
        if not self.per_image and active(self):  # DDP: the statistics of the global batch
            inter, p_sum, ground = global_region_sums(inter, p_sum, ground)
        weight = 1 / (ground * ground)
        finite = torch.isfinite(weight)
        largest = torch.where(finite, weight, torch.zeros_like(weight)).amax(-1, keepdim=True)
        weight = torch.where(finite, weight, largest)
        num = 2 * (weight * inter).sum(-1) + self.smooth
        den = (weight * (p_sum + ground)).sum(-1) + self.smooth
        loss = 1 - num / den
        if not self.per_image:
            return loss
        counted = valid.flatten(1).any(1).to(loss.dtype)
        return (loss * counted).sum() / counted.sum().clamp_min(1.0)
