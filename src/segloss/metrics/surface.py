"""Per-case surface distances of 3-D volumes, evaluated slice by slice or volume by volume: HD95 and ASSD, in
the voxel spacing (mm).

``update`` takes 2-D slices (N×H×W, the 2-D MSD path: each named ``…_z<index>``) or whole volumes (N×D×H×W, one
case each: stored as its slices z = 0…D−1, so a volume scores exactly what its slices score). For case k and
class c, the slices of the case (from any batch and any rank) are stacked in z order into the predicted and
true volumes P and G. Their surfaces are ∂M = M minus its erosion (scipy's default 3-D cross),
and with d(x, ∂M) the Euclidean distance in millimetres (``scipy.ndimage.distance_transform_edt`` with the
case's spacing), A = {d(x, ∂G) : x ∈ ∂P} and B = {d(y, ∂P) : y ∈ ∂G}:

    HD95 = max(95th percentile of A, 95th percentile of B)       (the symmetric 95 % Hausdorff distance)
    ASSD = mean of A ∪ B                                          (average symmetric surface distance)

MONAI's ``compute_hausdorff_distance(percentile=95, spacing=…)`` and
``compute_average_surface_distance(symmetric=True, spacing=…)`` conventions (tested against them, anisotropic
spacing included; the percentile interpolates linearly as both ``np.percentile`` and ``torch.quantile`` do). A class
absent from the prediction or the ground truth of a case has no distance there: nan, left out of the class mean (its
Dice already scores the miss). MONAI gives nan when both are empty; when exactly one is, its ASSD (and its HD
without a percentile) is inf and its HD95 nan (``torch.quantile`` of inf distances). ``"HD95"``/``"ASSD"`` are the
per-class means over cases without the background (``mHD95``, ``mASSD`` their means over classes); lower is better.
Costs an EDT per case and class on the CPU at the end of the split (``make bench-metrics``-free: it runs once per
validation), so it is switched on per experiment (``metrics.surface_distance``).

Voxels whose target is ignored are background in the true volume (the predicted volume keeps what was predicted
there, as MONAI is given it in the tests). Under DDP each rank sends its slices to
every rank (``all_gather_object``) so all ranks compute the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    return mask & ~binary_erosion(mask)


def surface_distances(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> tuple[float, float]:
    """(HD95, ASSD) of two bool volumes with the voxel ``spacing``; (nan, nan) when either is empty."""
    from scipy.ndimage import distance_transform_edt

    if not pred.any() or not truth.any():
        return math.nan, math.nan
    edge_p, edge_t = _surface(pred), _surface(truth)
    to_truth = distance_transform_edt(~edge_t, sampling=spacing)[edge_p]
    to_pred = distance_transform_edt(~edge_p, sampling=spacing)[edge_t]
    hd95 = max(np.percentile(to_truth, 95), np.percentile(to_pred, 95))
    assd = float(np.concatenate([to_truth, to_pred]).mean())
    return float(hd95), assd


class CaseSurfaceDistance:
    """Collects slices (or volumes) per case (``update``), computes per-case and per-class HD95 and ASSD
    (``compute``)."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.slices: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
        self.spacing: dict[str, tuple[float, float, float]] = {}

    def reset(self) -> None:
        self.slices, self.spacing = {}, {}

    @property
    def update_called(self) -> bool:
        return bool(self.slices)

    def update(
        self,
        preds: Tensor,
        target: Tensor,
        cases: Sequence[str],
        names: Sequence[str] | None,
        spacing: Tensor | Sequence[Sequence[float]],
    ) -> None:
        """N items with their case ids and ``spacing`` N×3 (z, y, x) mm: 2-D slices (``preds``/``target``
        N×H×W) whose ``names`` end in ``_z<index>`` (the MSD loader's), or whole volumes (N×D×H×W; ``names``
        unused, may be None). A slice or volume seen again replaces the one stored (DDP samplers repeat items)."""
        if preds.shape != target.shape or preds.ndim not in (3, 4) or len(cases) != preds.shape[0]:
            raise ValueError(
                f"CaseSurfaceDistance.update needs preds and target of one shape N×H×W (slices) or N×D×H×W "
                f"(volumes) and N case ids; got {tuple(preds.shape)}, {tuple(target.shape)} and {len(cases)} ids"
            )
        volumes = preds.ndim == 4
        if names is None:
            if not volumes:
                raise ValueError("slices (N×H×W) need their names (…_z<index>) to be stacked in z order")
            names = [None] * len(cases)
        target = torch.where(target == self.ignore_index, 0, target)
        preds, target = preds.cpu().numpy().astype(np.uint8), target.cpu().numpy().astype(np.uint8)
        spacing = torch.as_tensor(spacing).cpu().double().numpy().reshape(len(cases), -1)
        for pred, truth, case, name, mm in zip(preds, target, cases, names, spacing, strict=True):
            stored = self.slices.setdefault(case, {})
            if volumes:
                stored.update({z: (pred[z], truth[z]) for z in range(len(pred))})
            else:
                stored[int(str(name).rsplit("_z", 1)[1])] = (pred, truth)
            self.spacing[case] = tuple(float(v) for v in mm)

    def _gathered(self) -> tuple[dict, dict]:
        slices, spacing = dict(self.slices), dict(self.spacing)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            parts: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, (self.slices, self.spacing))
            slices, spacing = {}, {}
            for part_slices, part_spacing in parts:
                for case, by_z in part_slices.items():
                    slices.setdefault(case, {}).update(by_z)
                spacing.update(part_spacing)
        return slices, spacing

    def compute(self) -> dict:
        slices, spacing = self._gathered()
        cases = sorted(slices)
        hd = np.full((len(cases), self.num_classes), np.nan)
        assd = np.full((len(cases), self.num_classes), np.nan)
        for k, case in enumerate(cases):
            order = sorted(slices[case])
            pred = np.stack([slices[case][z][0] for z in order])
            truth = np.stack([slices[case][z][1] for z in order])
            for c in range(1, self.num_classes):
                hd[k, c], assd[k, c] = surface_distances(pred == c, truth == c, spacing[case])
        per_class = {
            name: torch.from_numpy(_nanmean(values)).float() for name, values in (("HD95", hd), ("ASSD", assd))
        }
        return {
            "cases": cases,
            "hd95_per_case": torch.from_numpy(hd).float(),
            "assd_per_case": torch.from_numpy(assd).float(),
            **per_class,
            "mHD95": torch.nanmean(per_class["HD95"][1:]),
            "mASSD": torch.nanmean(per_class["ASSD"][1:]),
        }


def _nanmean(values: np.ndarray) -> np.ndarray:
    counted = (~np.isnan(values)).sum(0)
    return np.where(counted > 0, np.nansum(values, 0) / np.maximum(counted, 1), np.nan)
