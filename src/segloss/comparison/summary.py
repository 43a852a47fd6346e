"""Per-loss summaries of a sweep's runs: mean ± sample standard deviation (n − 1) over seeds of the best
mIoU and of each class's IoU at the best epoch; the best mean of each column marked."""

from __future__ import annotations

import math

import numpy as np

from segloss.comparison.runs import Run


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarise(runs: list[Run]) -> dict:
    """``{"losses": [...], "columns": ["mIoU", classes…], "stats": {loss: {column: (mean, std)}}, "seeds":
    {loss: n}, "best": {column: loss}}`` with losses in first-seen order."""
    losses = list(dict.fromkeys(run.loss for run in runs))
    classes = list(dict.fromkeys(name for run in runs for name in run.iou))
    classes = [c for c in classes if any(not math.isnan(run.iou.get(c, math.nan)) for run in runs)]
    stats, seeds = {}, {}
    for loss in losses:
        mine = [run for run in runs if run.loss == loss]
        seeds[loss] = len(mine)
        stats[loss] = {"mIoU": _mean_std([run.best_miou for run in mine])}
        for name in classes:
            stats[loss][name] = _mean_std([run.iou.get(name, math.nan) for run in mine])
    columns = ["mIoU", *classes]
    best = {}
    for column in columns:
        means = {loss: stats[loss][column][0] for loss in losses if not math.isnan(stats[loss][column][0])}
        if means:
            best[column] = max(means, key=means.get)
    return {"losses": losses, "columns": columns, "stats": stats, "seeds": seeds, "best": best}


def cell(mean: float, std: float) -> str:
    return "—" if math.isnan(mean) else f"{100 * mean:.1f} ± {100 * std:.1f}"


def markdown_table(summary: dict) -> str:
    columns = summary["columns"]
    lines = ["| loss | seeds | " + " | ".join(columns) + " |", "|---|---:|" + "---:|" * len(columns)]
    for loss in summary["losses"]:
        cells = []
        for column in columns:
            text = cell(*summary["stats"][loss][column])
            cells.append(f"**{text}**" if summary["best"].get(column) == loss else text)
        lines.append(f"| {loss} | {summary['seeds'][loss]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
