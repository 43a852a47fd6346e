"""Per-loss summaries of one group of comparable runs: mean ± sample standard deviation (n − 1) over seeds of
the best mIoU and of each class's IoU at the best epoch, the best mean of each column marked; and, where the
runs stored their per-image counts, the intervals, tests and detectable differences of
:mod:`segloss.comparison.significance`."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from segloss.comparison import significance
from segloss.comparison.runs import SCORES, Run
from segloss.errors import ConfigError
from segloss.utils.metric_registry import LOWER_IS_BETTER


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample SD; the SD is nan (undefined, not 0) with one value."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def summarise(runs: list[Run]) -> dict:
    """``{"losses": [...], "columns": ["mIoU", classes…], "stats": {loss: {column: (mean, std)}}, "seeds":
    {loss: n}, "best": {column: loss}}`` with losses in first-seen order."""
    losses = list(dict.fromkeys(run.loss for run in runs))
    classes = list(dict.fromkeys(name for run in runs for name in run.iou))
    classes = [c for c in classes if any(not math.isnan(run.iou.get(c, math.nan)) for run in runs)]
    table, seeds = {}, {}
    for loss in losses:
        mine = [run for run in runs if run.loss == loss]
        seeds[loss] = len(mine)
        table[loss] = {"mIoU": _mean_std([run.best_miou for run in mine])}
        for name in classes:
            table[loss][name] = _mean_std([run.iou.get(name, math.nan) for run in mine])
    extra = [name for name in SCORES if any(name in run.scores for run in runs)]
    for loss in losses:
        for name in extra:
            table[loss][name] = _mean_std([run.scores.get(name, math.nan) for run in runs if run.loss == loss])
    columns = ["mIoU", *classes]
    best = {}
    for column in [*columns, *extra]:
        means = {loss: table[loss][column][0] for loss in losses if not math.isnan(table[loss][column][0])}
        if means:
            best[column] = (min if column in LOWER_IS_BETTER else max)(means, key=means.get)
    return {"losses": losses, "columns": columns, "extra": extra, "stats": table, "seeds": seeds, "best": best}


def _open_counts(run: Run) -> dict[str, np.ndarray]:
    """The arrays of a run's ``per_image_val.npz``; an unreadable or incomplete file is an error naming it."""
    try:
        with np.load(run.per_image, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ConfigError(
            f"cannot read {run.per_image}: {err}; re-run `make rescore` on that run or remove it"
        ) from None
    missing = [key for key in ("names", "class_names", "tp", "fp", "fn") if key not in arrays]
    rows = len(arrays.get("names", []))
    if missing or any(arrays[k].shape != (rows, len(arrays["class_names"])) for k in ("tp", "fp", "fn")):
        raise ConfigError(f"{run.per_image} is not a per-image count file (missing or misshapen: "
                          f"{missing or 'tp/fp/fn'}); re-run `make rescore` on that run or remove it")  # fmt: skip
    return arrays


def load_counts(runs: list[Run], classes: list[str]) -> tuple[dict[str, significance.Counts], list[str]]:
    """Per loss, the per-image counts of its runs (:class:`segloss.comparison.significance.Counts`) on the images that
    every run with counts scored (matched by name) and on ``classes``; and notes on what was left out."""
    stored = [(run, _open_counts(run)) for run in runs if run.per_image and Path(run.per_image).is_file()]
    has_counts = {id(run) for run, _ in stored}
    notes = [
        f"{run.loss} seed {run.seed}: no per-image counts ({run.path})" for run in runs if id(run) not in has_counts
    ]
    if not stored:
        return {}, notes
    names = sorted(set.intersection(*(set(data["names"].tolist()) for _, data in stored)))
    if not names:
        first = stored[0]
        other = next(run for run, data in stored if set(data["names"].tolist()) != set(first[1]["names"].tolist()))
        raise ConfigError(
            f"the runs scored no image in common (e.g. {first[0].path} and {other.path}): they were validated on "
            "different splits; compare runs of one dataset and split"
        )
    if any(len(data["names"]) != len(names) for _, data in stored):
        notes.append(f"only the {len(names)} images that every run scored are compared")
    grouped: dict[str, list] = {}
    part_names = _common_parts(stored, notes)
    for run, data in stored:
        rows = {name: i for i, name in enumerate(data["names"].tolist())}
        order = [rows[name] for name in names]
        known = data["class_names"].tolist()
        cols = [known.index(c) if c in known else -1 for c in classes]
        tp = np.where(np.array(cols) >= 0, data["tp"][order][:, cols], 0)
        union = np.where(np.array(cols) >= 0, (data["tp"] + data["fp"] + data["fn"])[order][:, cols], 0)
        parts = {key: data[key][order] for key in part_names}  # the runs' own class order (checked equal)
        grouped.setdefault(run.loss, []).append((run.seed, tp, union, parts))
    counts = {
        loss: significance.Counts(
            [item[0] for item in items],
            np.stack([item[1] for item in items]),
            np.stack([item[2] for item in items]),
            {key: np.stack([item[3][key] for item in items]) for key in part_names},
        )
        for loss, items in grouped.items()
    }
    return counts, notes


def _common_parts(stored: list, notes: list[str]) -> list[str]:
    """The per-image arrays (FN and the quality counts) that every stored run has, for the intervals of the
    other scores; none if the runs' classes differ."""
    if len({tuple(data["class_names"].tolist()) for _, data in stored}) > 1:
        notes.append("the runs' classes differ: no intervals for Boundary IoU, recall and calibration")
        return []
    wanted = {part for needs, _ in significance.SCORES.values() for part in needs} - {"iou_tp", "iou_union"}
    common = set.intersection(*(set(data) for _, data in stored)) & wanted
    missing = {part for _, data in stored for part in data if part in wanted} - common
    if missing:
        notes.append(
            "some runs stored no per-image quality counts (older runs: `make rescore DIR=…` adds them), so "
            f"{', '.join(sorted(missing))} give no interval"
        )
    return sorted(common)


def add_statistics(
    summary: dict, runs: list[Run], baseline: str | None = None, alpha: float = significance.ALPHA
) -> dict:
    """Add to ``summary``: ``"ci"`` {loss: {column: (low, high)}} (95 %, crossed seeds × images), ``"baseline"``
    and ``"vs_baseline"`` {loss: :func:`segloss.comparison.significance.adjust` ed difference} (Holm over the losses
    against the baseline), ``"vs_best"`` {loss: best | ≈ | < | —} (:func:`segloss.comparison.significance.best_marks`),
    ``"untested"`` {loss: why no test}, ``"alpha"`` and ``"notes"``."""
    losses, classes = summary["losses"], summary["columns"][1:]
    baseline = baseline or losses[0]
    if baseline not in losses:
        raise ConfigError(f"--baseline {baseline!r} is not among the compared losses {losses}")
    counts, notes = load_counts(runs, classes)
    ci = {loss: _intervals(c, classes, summary.get("extra", [])) for loss, c in counts.items()}
    family, untested = {}, {}
    for loss in losses:
        if loss == baseline:
            continue
        if loss not in counts or baseline not in counts:
            untested[loss] = "no per-image counts"
            continue
        found = significance.difference(counts[loss], counts[baseline])
        if found is None:
            untested[loss] = f"needs ≥ {significance.MIN_SEEDS} seeds of each loss"
        else:
            family[loss] = found
    few = [loss for loss in losses if summary["seeds"][loss] < significance.MIN_SEEDS]
    if few:
        notes.append(f"{', '.join(few)}: fewer than {significance.MIN_SEEDS} seeds, which no valid test of a "
                     "difference between trained losses can work with; train more seeds")  # fmt: skip
    vs_baseline = significance.adjust(family, alpha)
    vs_best = significance.best_marks(counts, alpha)
    return {**summary, "ci": ci, "baseline": baseline, "vs_baseline": vs_baseline, "vs_best": vs_best,
            "untested": untested, "alpha": alpha, "notes": notes}  # fmt: skip


def _intervals(counts: significance.Counts, classes: list[str], extra: list[str]) -> dict[str, tuple[float, float]]:
    """The 95 % intervals of one loss's mean scores (none with one seed), clipped to the scores' range (0–1;
    NLL ≥ 0): a t-interval may reach past it, the score cannot."""
    estimates = {"mIoU": significance.loss_estimate(counts, "mIoU")}
    estimates |= dict(zip(classes, significance.loss_estimate(counts, "IoU") or []))
    estimates |= {name: significance.loss_estimate(counts, name) for name in extra}
    out = {}
    for name, estimate in estimates.items():
        if estimate is not None:
            low, high = estimate.interval(significance.LEVEL)
            out[name] = (max(low, 0.0), high if name == "NLL" else min(high, 1.0))
    return out
