"""Distance-based losses: Boundary loss and the distance-transform Hausdorff loss.

Both weigh each pixel's probability by how far it lies from a ground-truth (or predicted) boundary, so they
care about *where* the errors are, which overlap losses do not. Distance maps are computed on the loss's
device from the integer target, without gradients (:mod:`segloss.losses._distance`). Ignored pixels count
as "not class c" when the maps are made (their label is unknown) and are left out of every sum and mean.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from segloss.losses._checks import TargetChecks, at_least_float32, check_hard_target
from segloss.losses._distance import boundary_distance, signed_distance
from segloss.losses._region import class_probabilities, one_hot


def _probabilities_and_regions(logits: Tensor, safe: Tensor) -> tuple[Tensor, Tensor]:
    """Class probabilities N×C×H×W (C = 1: background and foreground) and the one-hot target regions."""
    probs = class_probabilities(at_least_float32(logits))
    if probs.shape[1] == 1:
        probs = torch.cat([1 - probs, probs], dim=1)
    regions = one_hot(safe, probs.shape[1])
    return probs, regions


def _classes(c: int, include_background: bool, device) -> Tensor:
    return torch.arange(0 if include_background else 1, c, device=device)


class BoundaryLoss(nn.Module):
    """Boundary loss (Kervadec, Bouchtiba, Desrosiers, Granger, Dolz & Ben Ayed, "Boundary loss for highly
    unbalanced segmentation", MIDL 2019 / Medical Image Analysis 67, 2021):

        L_B = (1/|V|) Σ_{x∈V} Σ_{c∈K} φ_c(x) · p_c(x)

    with φ_c the signed distance map of class c's ground-truth region G_c (Kervadec et al.'s convention:
    distance to G_c outside it, −(distance to the outside − 1) inside, so the inner boundary is 0; an empty
    or full region gives φ = 0), p the softmax (C = 1: the foreground sigmoid, background 1 − p) and K the
    classes without the background (``include_background=False``, the paper's foreground-only form). It is
    minimal (negative) when the probability mass sits exactly on the regions, and it is meant to be combined
    with a region loss whose weight decays (the paper: α·L_GDL + (1 − α)·L_B, α from 1 down by 0.01 per
    epoch) — see the ``boundary_gdl`` preset, which does it with :class:`segloss.losses.CompoundLoss`
    schedules. 2-D only. An all-ignored batch gives 0.
    """

    def __init__(self, include_background: bool = False, ignore_index: int = 255, check_values: bool = True) -> None:
        super().__init__()
        self.include_background, self.ignore_index, self.check_values = (
            include_background,
            ignore_index,
            TargetChecks(check_values),
        )

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.dim() != 4:
            raise ValueError(f"BoundaryLoss is 2-D: logits must be N×C×H×W, got {tuple(logits.shape)}")
        valid, safe = check_hard_target(logits, target, self.ignore_index, self.check_values)
        probs, regions = _probabilities_and_regions(logits, safe)
        regions &= valid.unsqueeze(1)  # ignored pixels belong to no class's region
        keep = _classes(probs.shape[1], self.include_background, logits.device)
        phi = signed_distance(regions.index_select(1, keep))
        per_pixel = (phi * probs.index_select(1, keep)).sum(1)
        v = valid.to(per_pixel.dtype)
        return (per_pixel * v).sum() / v.sum().clamp_min(1.0)


class HausdorffDTLoss(nn.Module):
    """Hausdorff-distance loss, distance-transform form (Karimi & Salcudean, "Reducing the Hausdorff Distance
    in Medical Image Segmentation with Convolutional Neural Networks", IEEE TMI 39(2), 2020, eq. 8):

        L_DT = mean over classes c ∈ K and pixels x ∈ V of (p_c(x) − q_c(x))² · (d_p,c(x)^α + d_q,c(x)^α)

    with q the one-hot target, d_q,c the distance of each pixel to the boundary of the ground-truth region of
    class c and d_p,c that of the predicted region {p_c > 0.5} (distance to the nearest outside pixel inside a
    region, to the nearest inside pixel outside it; 0 for an empty or full region — MONAI's
    ``HausdorffDTLoss`` convention, against which it is tested), α = 2. K excludes the background unless
    ``include_background``. The mean divides by the valid pixels |V| (MONAI by all pixels: the same without
    ignored pixels). The maps carry no gradient: the loss is a distance-weighted squared error. 2-D only.
    """

    def __init__(
        self, alpha: float = 2.0, include_background: bool = False, ignore_index: int = 255, check_values: bool = True
    ) -> None:
        super().__init__()
        self.alpha, self.include_background = alpha, include_background
        self.ignore_index = ignore_index
        self.check_values = TargetChecks(check_values)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.dim() != 4:
            raise ValueError(f"HausdorffDTLoss is 2-D: logits must be N×C×H×W, got {tuple(logits.shape)}")
        valid, safe = check_hard_target(logits, target, self.ignore_index, self.check_values)
        probs, regions = _probabilities_and_regions(logits, safe)
        regions &= valid.unsqueeze(1)
        keep = _classes(probs.shape[1], self.include_background, logits.device)
        probs, truth = probs.index_select(1, keep), regions.index_select(1, keep)
        weight = boundary_distance(probs.detach() > 0.5).pow(self.alpha) + boundary_distance(truth).pow(self.alpha)
        error = (probs - truth.to(probs.dtype)).square() * weight
        v = valid.unsqueeze(1).to(error.dtype)
        return (error * v).sum() / (v.sum() * error.shape[1]).clamp_min(1.0)
