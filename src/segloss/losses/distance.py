"""Distance-based losses: Boundary loss and the distance-transform Hausdorff loss, on N-D data.

Both weigh each voxel's probability by how far it lies from a ground-truth (or predicted) boundary, so they
care about *where* the errors are, which overlap losses do not. Distance maps are computed on the loss's
device from the integer target, without gradients, over every spatial dimension of the logits
(``N×C×H×W`` images or ``N×C×D×H×W`` volumes, as both papers train): exact Euclidean distance transforms
in voxels, or in the units of ``spacing`` (e.g. mm) when a loss is given one. Ignored voxels count as
"not class c" when the maps are made (their label is unknown) and are left out of every sum and mean.

Distance maps (:func:`distance_map`):

* on the CPU, scipy's linear-time ``distance_transform_edt`` (Maurer et al. 2003) over the whole
  H×W or D×H×W map, with ``sampling=spacing``;
* on an accelerator, the exact separable transform where the tensors are (Saito & Toriwaki 1994;
  Meijster et al. 2000): g = distance along the last axis (two ``cummax`` scans), then for each further
  axis a, D_a(x)² = min over x'_a of ((x_a − x'_a)·s_a)² + D_{a−1}(x')² — a dense minimum in chunks,
  O(n_a) per voxel and axis, without host syncs;
* 2-D maps without ``spacing`` go to :mod:`segloss.losses._distance` as before (the same numbers).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from segloss.losses import _distance
from segloss.losses._checks import TargetChecks, at_least_float32, check_hard_target
from segloss.losses._region import class_probabilities, one_hot

CHUNK_ELEMENTS = 1 << 24  # bound on the temporary of the dense minimum along one axis


def _spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...] | None:
    """``spacing`` checked against the number of spatial dims (None: voxel units)."""
    if spacing is None:
        return None
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or min(spacing) <= 0:
        raise ValueError(f"spacing {spacing} needs one positive value per spatial dimension ({ndim} here)")
    return spacing


@torch.no_grad()
def distance_map(features: Tensor, ndim: int, spacing: Sequence[float] | None = None) -> Tensor:
    """float32 Euclidean distance from each voxel of the last ``ndim`` dims of ``features`` (bool …×S) to the
    nearest True voxel of the same map, in voxels or in the units of ``spacing`` (one value per spatial
    dim); ``inf`` everywhere in a map without a True voxel."""
    spacing = _spacing(spacing, ndim)
    if ndim == 2 and spacing is None:
        return _distance.distance_to(features)
    if features.device.type == "cpu":
        return _distance_map_scipy(features, ndim, spacing)
    return _distance_map_dense(features, ndim, spacing)


def _distance_map_scipy(features: Tensor, ndim: int, spacing: tuple[float, ...] | None) -> Tensor:
    from scipy.ndimage import distance_transform_edt

    maps = features.reshape(-1, *features.shape[features.dim() - ndim :]).numpy()
    out = np.full(maps.shape, np.inf, dtype=np.float32)
    for i, feature in enumerate(maps):
        if feature.any():
            out[i] = distance_transform_edt(~feature, sampling=spacing)
    return torch.from_numpy(out).view(features.shape)


def _min_plus(g2: Tensor, step: float) -> Tensor:
    """out[…, i] = min over j of ((i − j)·step)² + g2[…, j], along the last axis."""
    n = g2.shape[-1]
    position = torch.arange(n, device=g2.device, dtype=torch.float32) * step
    out = torch.empty_like(g2)
    chunk = max(1, min(n, CHUNK_ELEMENTS // max(g2.numel(), 1)))  # the temporary is g2.numel() × chunk
    for start in range(0, n, chunk):
        here = position[start : start + chunk]
        d2 = (here[:, None] - position[None, :]).square()  # chunk × n
        out[..., start : start + len(here)] = (g2.unsqueeze(-2) + d2).amin(-1)
    return out


def _distance_map_dense(features: Tensor, ndim: int, spacing: tuple[float, ...] | None) -> Tensor:
    spacing = spacing or (1.0,) * ndim
    g2 = (_distance._row_distance(features) * spacing[-1]).square()  # along the last axis; inf: no feature
    for axis in range(2, ndim + 1):  # then each further spatial axis, from the last but one
        g2 = _min_plus(g2.movedim(-axis, -1), spacing[-axis]).movedim(-1, -axis)
    return g2.sqrt_()


def _defined(region: Tensor, ndim: int) -> Tensor:
    """Maps (…) whose region is neither empty nor full, broadcastable against ``region``."""
    flat = region.flatten(-ndim)
    return (flat.any(-1) & (~flat).any(-1)).view(*region.shape[:-ndim], *(1,) * ndim)


def signed_distance(region: Tensor, ndim: int, spacing: Sequence[float] | None = None) -> Tensor:
    """Kervadec et al.'s signed distance of a region G (bool …×S, ``ndim`` spatial dims) as the authors' code
    (``one_hot2dist``) makes it: φ(x) = d(x, G) outside G and −(d(x, ∁G) − 1) inside, so φ ≤ 0 inside with the
    inner boundary at 0 in voxel units (with ``spacing`` the distances are in its units and the 1 is kept, as
    the authors' code does with its ``resolution``); 0 everywhere for an empty or full region."""
    if ndim == 2 and spacing is None:
        return _distance.signed_distance(region)
    outside = distance_map(region, ndim, spacing)
    inside = distance_map(~region, ndim, spacing) - 1
    phi = torch.where(region, -inside, outside)
    return torch.where(_defined(region, ndim), phi, 0.0)


def boundary_distance(region: Tensor, ndim: int, spacing: Sequence[float] | None = None) -> Tensor:
    """Unsigned distance to the region's boundary as Karimi & Salcudean (and MONAI) use it: distance to the
    nearest outside voxel inside, to the nearest inside voxel outside; 0 for an empty or full region."""
    if ndim == 2 and spacing is None:
        return _distance.boundary_distance(region)
    field = torch.where(region, distance_map(~region, ndim, spacing), distance_map(region, ndim, spacing))
    return torch.where(_defined(region, ndim), field, 0.0)


def _probabilities_and_regions(logits: Tensor, safe: Tensor) -> tuple[Tensor, Tensor]:
    """Class probabilities N×C×S… (C = 1: background and foreground) and the one-hot target regions."""
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

    over the non-ignored voxels V of the batch (pixels of N×C×H×W images or voxels of N×C×D×H×W volumes), with
    φ_c the signed distance map of class c's ground-truth region G_c in each image or volume
    (:func:`signed_distance`: distance to G_c outside it, −(distance to the outside − 1) inside, so the inner
    boundary is 0; an empty or full region gives φ = 0), p the softmax (C = 1: the foreground sigmoid,
    background 1 − p) and K the classes without the background (``include_background=False``, the paper's
    foreground-only form). It is minimal (negative) when the probability mass sits exactly on the regions, and
    it is meant to be combined with a region loss whose weight decays (the paper: α·L_GDL + (1 − α)·L_B, α
    from 1 down by 0.01 per epoch) — see the ``boundary_gdl`` preset, which does it with
    :class:`segloss.losses.CompoundLoss` schedules. ``spacing`` (one value per spatial dim, e.g. (z, y, x) mm
    of resampled volumes) gives the distances in those units; None: voxels. An all-ignored batch gives 0.
    """

    def __init__(
        self,
        include_background: bool = False,
        ignore_index: int = 255,
        check_values: bool = True,
        spacing: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.include_background, self.ignore_index, self.check_values = (
            include_background,
            ignore_index,
            TargetChecks(check_values),
        )
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        valid, safe = check_hard_target(logits, target, self.ignore_index, self.check_values)
        ndim = logits.dim() - 2
        spacing = _spacing(self.spacing, ndim)
        probs, regions = _probabilities_and_regions(logits, safe)
        regions &= valid.unsqueeze(1)  # ignored voxels belong to no class's region
        keep = _classes(probs.shape[1], self.include_background, logits.device)
        phi = signed_distance(regions.index_select(1, keep), ndim, spacing)
        per_voxel = (phi * probs.index_select(1, keep)).sum(1)
        v = valid.to(per_voxel.dtype)
        return (per_voxel * v).sum() / v.sum().clamp_min(1.0)


class HausdorffDTLoss(nn.Module):
    """Hausdorff-distance loss, distance-transform form (Karimi & Salcudean, "Reducing the Hausdorff Distance
    in Medical Image Segmentation with Convolutional Neural Networks", IEEE TMI 39(2), 2020, eq. 8):

        L_DT = mean over classes c ∈ K and voxels x ∈ V of (p_c(x) − q_c(x))² · (d_p,c(x)^α + d_q,c(x)^α)

    with q the one-hot target, d_q,c the distance of each voxel to the boundary of the ground-truth region of
    class c in its image or volume and d_p,c that of the predicted region {p_c > 0.5}
    (:func:`boundary_distance`: distance to the nearest outside voxel inside a region, to the nearest inside
    voxel outside it; 0 for an empty or full region — MONAI's ``HausdorffDTLoss`` convention, against which it
    is tested), α = 2. K excludes the background unless ``include_background``. The mean divides by the valid
    voxels |V| (MONAI by all voxels: the same without ignored voxels). The maps carry no gradient: the loss is
    a distance-weighted squared error. The paper trains on 3-D volumes; N×C×D×H×W logits give 3-D maps.
    ``spacing`` (one value per spatial dim) gives the distances in its units (the loss then scales by
    spacing^α); None: voxels.
    """

    def __init__(
        self,
        alpha: float = 2.0,
        include_background: bool = False,
        ignore_index: int = 255,
        check_values: bool = True,
        spacing: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.alpha, self.include_background = alpha, include_background
        self.ignore_index = ignore_index
        self.check_values = TargetChecks(check_values)
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        valid, safe = check_hard_target(logits, target, self.ignore_index, self.check_values)
        ndim = logits.dim() - 2
        spacing = _spacing(self.spacing, ndim)
        probs, regions = _probabilities_and_regions(logits, safe)
        regions &= valid.unsqueeze(1)
        keep = _classes(probs.shape[1], self.include_background, logits.device)
        probs, truth = probs.index_select(1, keep), regions.index_select(1, keep)
        predicted = boundary_distance(probs.detach() > 0.5, ndim, spacing)
        weight = predicted.pow(self.alpha) + boundary_distance(truth, ndim, spacing).pow(self.alpha)
        error = (probs - truth.to(probs.dtype)).square() * weight
        v = valid.unsqueeze(1).to(error.dtype)
        return (error * v).sum() / (v.sum() * error.shape[1]).clamp_min(1.0)
