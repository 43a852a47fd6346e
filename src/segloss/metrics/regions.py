"""Per-region scores of region-based (multi-label) segmentation: Dice and IoU over a split and per case, HD95.

Inputs are binary region predictions ``preds`` N×R×S… (bool, or integers where nonzero = inside; e.g.
``Regions.region_masks(logits)`` or, as the BraTS evaluation scores the written segmentation,
``Regions.to_multi_hot(Regions.to_label_map(logits))``) and multi-hot targets N×R×S… (0, 1, or ``ignore_index``,
:meth:`segloss.utils.regions.Regions.to_multi_hot`). Elements whose target is ``ignore_index`` count nowhere, not
even as false positives. For region r, with TP/FP/FN counted over the non-ignored elements:

    Dice_r = 2·TP / (2·TP + FP + FN),     IoU_r = TP / (TP + FP + FN)

**Empty regions** (the BraTS convention, Bakas et al. 2018 and the BraTS evaluation platforms; also MONAI's
``compute_dice(ignore_empty=False)``): a region empty in both the truth and the prediction scores 1 (0/0 is a
perfect agreement, not a missing value); a prediction in a region empty in the truth scores 0 (TP = 0, FP > 0),
as does a missed region. ``empty_score=nan`` instead leaves 0/0 out of the means (nnU-Net's and
:mod:`segloss.metrics.per_case`'s convention for absent classes). Because of it, split-level and per-case scores
differ much for a small region such as BraTS's enhancing tumour: per case every case counts (a case without ET
predicted empty scores 1, one false-positive voxel makes it 0); over the split the counts are pooled first.

* :class:`RegionScores`: TP/FP/FN per region summed over the split (and over ranks: ``dist_reduce_fx="sum"``);
  the update is three masked sums, no host sync (as :mod:`segloss.metrics.confusion`).
* :class:`CaseRegionDice`: Dice and IoU per case (a 3D volume scored slice by slice: the counts of the case's
  slices are summed, so the score is the volume's whatever the batching) and their means over cases — the
  official BraTS ranking uses the per-case mean. Rows travel as :class:`segloss.metrics.rows.RowsMetric` rows,
  exact under DDP, like :class:`segloss.metrics.per_case.CaseDice`.
* :class:`CaseRegionSurfaceDistance`: per case and region HD95/ASSD in mm, by
  :func:`segloss.metrics.surface.surface_distances` on each region channel (MONAI's conventions); a region empty
  in both volumes has distance ``both_empty`` (0, BraTS), a region empty in one of them ``one_empty`` (nan by
  default: left out of the mean as :mod:`segloss.metrics.surface` does; BraTS 2021 scores it 373.13 mm).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from segloss.metrics.per_case import NAME_BYTES, case_key, counts_per_case, encode_names
from segloss.metrics.rows import RowsMetric
from segloss.metrics.surface import surface_distances


def _check_pair(preds: Tensor, target: Tensor, regions: int | None = None) -> None:
    if preds.shape != target.shape or preds.dim() < 3:
        raise ValueError(
            f"region preds and multi-hot target must both be N×R×spatial… of one shape, got "
            f"{tuple(preds.shape)} and {tuple(target.shape)}"
        )
    if regions is not None and preds.shape[1] != regions:
        raise ValueError(f"expected R={regions} region channels, got {preds.shape[1]} (shape {tuple(preds.shape)})")
    if preds.is_floating_point() or target.is_floating_point():
        raise ValueError(
            f"region preds and target must be binary masks (bool or integer), got {preds.dtype} and {target.dtype}; "
            "threshold logits first (Regions.region_masks)"
        )


def region_counts(preds: Tensor, target: Tensor, ignore_index: int = 255) -> tuple[Tensor, Tensor, Tensor]:
    """int64 ``(TP, FP, FN)`` of shape (N, R) — per image and region, summed over space — of binary ``preds``
    (nonzero = inside) and a multi-hot ``target`` (1 inside, ``ignore_index`` ignored, anything else outside).
    No host sync."""
    _check_pair(preds, target)
    valid = target != ignore_index if target.dtype != torch.bool else torch.ones_like(target)
    truth = (target == 1) & valid
    pred = preds.bool() & valid
    dims = tuple(range(2, preds.dim()))
    tp = (pred & truth).sum(dims)
    return tp, pred.sum(dims) - tp, truth.sum(dims) - tp


def scores_from_counts(tp: Tensor, fp: Tensor, fn: Tensor, empty_score: float = 1.0) -> tuple[Tensor, Tensor]:
    """float32 ``(Dice, IoU)`` of counts of any shape; where TP + FP + FN = 0 (region empty in truth and
    prediction) both are ``empty_score`` (1: BraTS)."""
    tp, fp, fn = tp.double(), fp.double(), fn.double()
    union = tp + fp + fn
    empty = union == 0
    safe = torch.where(empty, torch.ones_like(union), union)
    dice = torch.where(empty, empty_score, 2 * tp / (safe + tp))
    iou = torch.where(empty, empty_score, tp / safe)
    return dice.float(), iou.float()


def _mean(values: Tensor, dim: int | None = None) -> Tensor:
    return torch.nanmean(values, dim=dim) if dim is not None else torch.nanmean(values)


class RegionScores(Metric):
    """Dice and IoU per region from the TP/FP/FN of the whole split: ``update(preds, target)``, ``compute()``.

    ``compute()`` returns ``{"Dice": float32 (R,), "IoU": (R,), "mDice", "mIoU" (means over regions, nan-means
    with ``empty_score=nan``), "tp"/"fp"/"fn": int64 (R,)}``; entry r is region r (``names[r]`` if given).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(
        self, num_regions: int, ignore_index: int = 255, empty_score: float = 1.0, names: Sequence[str] | None = None
    ) -> None:
        super().__init__()
        if num_regions < 1:
            raise ValueError(f"RegionScores needs num_regions >= 1, got {num_regions}")
        if names is not None and len(names) != num_regions:
            raise ValueError(f"{len(names)} region names for {num_regions} regions")
        self.num_regions, self.ignore_index, self.empty_score = num_regions, ignore_index, float(empty_score)
        self.names = list(names) if names is not None else [str(r) for r in range(num_regions)]
        for state in ("tp", "fp", "fn"):
            self.add_state(state, torch.zeros(num_regions, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch: ``preds`` binary N×R×S…, ``target`` multi-hot N×R×S… (module docstring)."""
        _check_pair(preds, target, self.num_regions)
        tp, fp, fn = region_counts(preds, target, self.ignore_index)
        self.tp += tp.sum(0)
        self.fp += fp.sum(0)
        self.fn += fn.sum(0)

    def compute(self) -> dict[str, Tensor]:
        dice, iou = scores_from_counts(self.tp, self.fp, self.fn, self.empty_score)
        return {"Dice": dice, "IoU": iou, "mDice": _mean(dice), "mIoU": _mean(iou),
                "tp": self.tp.clone(), "fp": self.fp.clone(), "fn": self.fn.clone()}  # fmt: skip


class CaseRegionDice(RowsMetric):
    """Dice and IoU per case and region from slices (or whole volumes): ``update(preds, target, cases)``.

    Each update appends one row per item ``[key, TP_0…TP_{R−1}, FP…, FN…, name bytes]`` (int64; the key and name
    encoding of :mod:`segloss.metrics.per_case`), gathered over ranks with ``dist_reduce_fx="cat"``; ``compute()``
    sums the rows by case on the CPU. With ``cases`` None every item is its own case (named by its position in
    the updates, ``"#k"``; a single process only).

    ``compute()`` returns CPU tensors ``{"dice_per_case": float32 K×R (rows: cases sorted by id), "iou_per_case",
    "cases": [K ids], "Dice": (R,) mean over cases, "IoU": (R,), "mDice": mean of "Dice" over regions, "mIoU"}``;
    with the default ``empty_score=1`` no value is nan (module docstring), with nan the means skip 0/0 cases.
    """

    is_differentiable = False
    higher_is_better = True

    def __init__(self, num_regions: int, ignore_index: int = 255, empty_score: float = 1.0, **kwargs) -> None:
        super().__init__(1 + 3 * num_regions + NAME_BYTES // 8, **kwargs)
        if num_regions < 1:
            raise ValueError(f"CaseRegionDice needs num_regions >= 1, got {num_regions}")
        self.num_regions, self.ignore_index, self.empty_score = num_regions, ignore_index, float(empty_score)
        self.names: dict[int, str] = {}  # local key -> full case id (display only; never reduced)
        self.seen = 0  # items numbered so far when updates carry no case ids

    def reset(self) -> None:
        super().reset()
        self.seen = 0

    def _key(self, case: str) -> int:
        key = case_key(case)
        if self.names.setdefault(key, case) != case:
            raise ValueError(f"case ids {self.names[key]!r} and {case!r} share the key {key}; rename one")
        return key

    def update(self, preds: Tensor, target: Tensor, cases: Sequence[str] | None = None) -> None:
        """Add N items: ``preds`` binary N×R×S…, ``target`` multi-hot N×R×S…, ``cases[i]`` the case of item i."""
        _check_pair(preds, target, self.num_regions)
        if cases is None:
            cases = [f"#{self.seen + i}" for i in range(len(preds))]
        if len(cases) != len(preds):
            raise ValueError(f"{len(preds)} items but {len(cases)} case ids")
        self.seen += len(preds)
        if not len(cases):
            return
        tp, fp, fn = region_counts(preds, target, self.ignore_index)
        keys = torch.tensor([self._key(c) for c in cases], dtype=torch.int64, device=tp.device)
        names = encode_names(list(cases)).to(tp.device)
        self.rows.append(torch.cat([keys[:, None], tp, fp, fn, names], dim=1))

    def compute(self) -> dict:
        r = self.num_regions
        cases, counts = counts_per_case(self.all_rows(), 3 * r, self.names)
        tp, fp, fn = counts.split(r, dim=1)
        dice, iou = scores_from_counts(tp, fp, fn, self.empty_score)
        nothing = torch.full((r,), math.nan)
        per_region_dice = _mean(dice, 0) if cases else nothing
        per_region_iou = _mean(iou, 0) if cases else nothing
        return {
            "dice_per_case": dice,
            "iou_per_case": iou,
            "cases": cases,
            "Dice": per_region_dice,
            "IoU": per_region_iou,
            "mDice": _mean(per_region_dice),
            "mIoU": _mean(per_region_iou),
        }


class CaseRegionSurfaceDistance:
    """HD95 and ASSD (mm) per case and region from slices: ``update(preds, target, cases, names, spacing)`` with
    ``preds``/``target`` N×R×H×W (binary / multi-hot), ``names`` ending in ``_z<index>`` (the MSD loader's) and
    ``spacing`` N×3 (z, y, x) mm; ``compute()`` stacks each case's slices in z order and calls
    :func:`segloss.metrics.surface.surface_distances` on each region channel.

    Ignored target voxels count as outside the region in the truth (as :mod:`segloss.metrics.surface` treats
    them as background); predictions are taken as they are. Empty regions: module docstring (``both_empty``,
    ``one_empty``). ``compute()`` → ``{"cases", "hd95_per_case": float32 K×R, "assd_per_case", "HD95": (R,)
    nan-mean over cases, "ASSD", "mHD95", "mASSD"}``. Single process (the integrator gathers slices under DDP as
    :class:`segloss.metrics.surface.CaseSurfaceDistance` does).
    """

    def __init__(
        self, num_regions: int, ignore_index: int = 255, both_empty: float = 0.0, one_empty: float = math.nan
    ) -> None:
        self.num_regions, self.ignore_index = num_regions, ignore_index
        self.both_empty, self.one_empty = float(both_empty), float(one_empty)
        self.reset()

    def reset(self) -> None:
        self.slices: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
        self.spacing: dict[str, tuple[float, float, float]] = {}

    @property
    def update_called(self) -> bool:
        return bool(self.slices)

    def update(
        self, preds: Tensor, target: Tensor, cases: Sequence[str], names: Sequence[str], spacing: Tensor
    ) -> None:
        _check_pair(preds, target, self.num_regions)
        truth = ((target == 1) & (target != self.ignore_index)).cpu().numpy()
        pred = preds.bool().cpu().numpy()
        spacing = spacing.cpu().double().numpy()
        for p, t, case, name, mm in zip(pred, truth, cases, names, spacing, strict=True):
            z = int(str(name).rsplit("_z", 1)[1])
            self.slices.setdefault(case, {})[z] = (p, t)
            self.spacing[case] = tuple(float(v) for v in mm)

    def distances(self, pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> tuple[float, float]:
        """(HD95, ASSD) of one region's bool volumes with the empty-region conventions."""
        has_pred, has_truth = bool(pred.any()), bool(truth.any())
        if not has_pred and not has_truth:
            return self.both_empty, self.both_empty
        if not has_pred or not has_truth:
            return self.one_empty, self.one_empty
        return surface_distances(pred, truth, spacing)

    def compute(self) -> dict:
        cases = sorted(self.slices)
        hd = np.full((len(cases), self.num_regions), np.nan)
        assd = np.full((len(cases), self.num_regions), np.nan)
        for k, case in enumerate(cases):
            order = sorted(self.slices[case])
            pred = np.stack([self.slices[case][z][0] for z in order], axis=1)  # R×Z×H×W
            truth = np.stack([self.slices[case][z][1] for z in order], axis=1)
            for r in range(self.num_regions):
                hd[k, r], assd[k, r] = self.distances(pred[r], truth[r], self.spacing[case])
        hd95, mean_assd = (torch.from_numpy(_nanmean(values)).float() for values in (hd, assd))
        return {
            "cases": cases,
            "hd95_per_case": torch.from_numpy(hd).float(),
            "assd_per_case": torch.from_numpy(assd).float(),
            "HD95": hd95,
            "ASSD": mean_assd,
            "mHD95": torch.nanmean(hd95),
            "mASSD": torch.nanmean(mean_assd),
        }


def _nanmean(values: np.ndarray) -> np.ndarray:
    counted = (~np.isnan(values)).sum(0)
    return np.where(counted > 0, np.nansum(values, 0) / np.maximum(counted, 1), np.nan)
