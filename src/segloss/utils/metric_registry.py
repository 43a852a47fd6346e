"""Every validation metric segloss logs, decided once: its name, direction, per-class companion, what turns
it on, whether it may be the ``optimized_metric``, and how ``make compare`` recomputes it from the per-image
counts a training stores.

Read by the optimised-metric check and the callbacks' ``monitor`` check (``segloss.checks``), by the best
epoch (``segloss.models.best``) and by ``make compare`` (``segloss.comparison``). The module that computes a
metric (``segloss.metrics``) logs it as ``val/<name>`` and its per-class values as ``val/<per_class>/<class>``.
Only numpy here: the comparison, which never imports torch, reads it too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# What turns a metric on: always, a switch of the `metrics` config node, data whose items are 3D cases, or a
# label space trained as overlapping regions (data.regions: one sigmoid per region, segloss.utils.regions).
ALWAYS, CASES, REGIONS = "always", "cases", "regions"


def iou(tp: np.ndarray, union: np.ndarray) -> np.ndarray:
    """TP / union with nan where the union is 0 (a class absent from truth and prediction)."""
    tp, union = np.asarray(tp, dtype=np.float64), np.asarray(union, dtype=np.float64)
    return np.divide(tp, union, out=np.full(np.broadcast(tp, union).shape, np.nan), where=union > 0)


def nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    """Mean over ``axis`` ignoring nan; nan where every value is nan (no warning)."""
    counted = (~np.isnan(values)).sum(axis)
    total = np.nansum(values, axis)
    return np.divide(total, counted, out=np.full(total.shape, np.nan), where=counted > 0)


def class_mean(hits: np.ndarray, total: np.ndarray) -> np.ndarray:
    return nanmean(iou(hits, total), axis=-1)


@dataclass(frozen=True)
class Metric:
    """One logged metric, ``val/<name>``.

    ``recompute`` takes the per-image arrays of ``per_image`` summed over images (… × K each) and returns the
    score (…); ``None`` where ``make compare`` has no per-image counts for it."""

    name: str
    higher_is_better: bool
    per_class: str | None = None  # also logged per class: val/<per_class>/<class>
    enabled_by: str = ALWAYS  # ALWAYS, CASES or a switch of the `metrics` node (metrics.boundary_iou …)
    optimizable: bool = False  # may be optimized_metric (then its per-class values may be too)
    compared: bool = False  # a column of `make compare` beside mIoU
    per_image: tuple[str, ...] = ()
    recompute: Callable[[dict], np.ndarray] | None = None
    first_class: int = 0  # 1: no per-class value for the background (surface distances)
    also_needs: str | None = None  # a second switch (per-case surface distances: cases and metrics.surface_distance)

    def logged(self, per_case: bool, switches: dict | None = None, regions: bool = False) -> bool:
        """Whether a validation logs it: with cases or regions where it needs them, and its switches of the
        ``metrics`` node on (``switches`` None: whatever they are)."""
        if (self.enabled_by == CASES or self.also_needs == CASES) and not per_case:
            return False
        if self.enabled_by == REGIONS and not regions:
            return False
        needs = [s for s in (self.enabled_by, self.also_needs) if s and s.startswith("metrics.")]
        return switches is None or all(switches.get(s.removeprefix("metrics."), False) for s in needs)


METRICS = (
    Metric("mIoU", True, "IoU", optimizable=True, per_image=("iou_tp", "iou_union"),
           recompute=lambda s: class_mean(s["iou_tp"], s["iou_union"])),
    Metric("mDice", True, "Dice", optimizable=True),
    Metric("acc", True, optimizable=True),
    Metric("mBIoU", True, "BIoU", "metrics.boundary_iou", optimizable=True, compared=True,
           per_image=("band_inter", "band_union"), recompute=lambda s: class_mean(s["band_inter"], s["band_union"])),
    Metric("mRecall", True, "recall", optimizable=True, compared=True, per_image=("tp", "fn"),
           recompute=lambda s: class_mean(s["tp"], s["tp"] + s["fn"])),
    Metric("mSmallRecall", True, "small_recall", "metrics.small_objects", compared=True,
           per_image=("small_found", "small_objects"),
           recompute=lambda s: class_mean(s["small_found"], s["small_objects"])),
    Metric("ECE", False, None, "metrics.calibration", compared=True,
           per_image=("calib_count", "calib_correct", "calib_confidence"),
           recompute=lambda s: np.abs(s["calib_correct"] - s["calib_confidence"]).sum(-1) / s["calib_count"].sum(-1)),
    Metric("NLL", False, None, "metrics.calibration", compared=True, per_image=("nll_sum", "calib_count"),
           recompute=lambda s: s["nll_sum"][..., 0] / s["calib_count"].sum(-1)),
    Metric("case_mDice", True, "case_Dice", CASES, optimizable=True),
    Metric("case_mHD95", False, "case_HD95", CASES, first_class=1, also_needs="metrics.surface_distance"),
    Metric("case_mASSD", False, "case_ASSD", CASES, first_class=1, also_needs="metrics.surface_distance"),
    # Overlapping regions (data.regions), scored on the written label map as BraTS does (segloss.metrics.regions);
    # per region: val/region_Dice/<region>.
    Metric("region_mDice", True, "region_Dice", REGIONS, optimizable=True),
    Metric("region_case_mDice", True, "region_case_Dice", REGIONS, optimizable=True, also_needs=CASES),
)  # fmt: skip
BY_NAME = {metric.name: metric for metric in METRICS}
COMPARED = tuple(m.name for m in METRICS if m.compared)  # make compare's columns beyond mIoU, in this order
LOWER_IS_BETTER = tuple(m.name for m in METRICS if not m.higher_is_better)


def _per_class_names(metric: Metric, class_names: list[str], region_names: list[str]) -> list[str]:
    return list(region_names) if metric.enabled_by == REGIONS else class_names[metric.first_class :]


def optimizable_metrics(class_names: list[str], per_case: bool, region_names: list[str] = ()) -> list[str]:
    """Every name ``optimized_metric`` may take for this label space (data with cases or not; the names of its
    overlapping regions, if it is trained as regions)."""
    chosen = [m for m in METRICS if m.optimizable and m.logged(per_case, None, bool(region_names))]
    return [f"val/{m.name}" for m in chosen] + [f"val/{m.per_class}/{c}" for m in chosen if m.per_class
                                                 for c in _per_class_names(m, class_names, region_names)]  # fmt: skip


def logged_metrics(
    class_names: list[str], per_case: bool, switches: dict | None = None, region_names: list[str] = ()
) -> set[str]:
    """Every ``val/…`` metric name a validation logs for this label space and the ``metrics`` node's switches
    (``switches`` None: whatever they are)."""
    chosen = [m for m in METRICS if m.logged(per_case, switches, bool(region_names))]
    names = {f"val/{m.name}" for m in chosen}
    return names | {f"val/{m.per_class}/{c}" for m in chosen if m.per_class
                    for c in _per_class_names(m, class_names, region_names)}  # fmt: skip
