"""Rendering of a comparison: the rich table and the two PNG plots (matplotlib, Agg)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from segloss.comparison.runs import Run
from segloss.comparison.table import header, row_cells, table_note


def print_table(summary: dict, title: str) -> Table:
    """Per loss: seeds, mIoU, the tests (when the runs stored per-image counts) and each class's IoU, in %;
    best mean per column in green (:func:`segloss.comparison.table.markdown_table`'s layout)."""
    note = table_note(summary) if summary.get("ci") or summary.get("vs_baseline") else None
    table = Table(title=escape(title), caption=escape(note) if note else None)
    head = header(summary)
    table.add_column(escape(head[0]), style="bold")
    for name in head[1:]:
        table.add_column(escape(name), justify="right")
    for loss in summary["losses"]:
        table.add_row(*row_cells(summary, loss, "[bold green]{}[/]", escape))
    console = Console()
    if not console.is_terminal:  # files and pipes get the whole table, not 80 columns
        console = Console(width=max(120, 16 * len(head)))
    console.print(table)
    for note in summary.get("notes", []):
        console.print(f"note: {escape(note)}")
    return table


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_iou_by_class(summary: dict, path: Path) -> Path:
    """Grouped bars: one group per column (mIoU, then each class), one bar per loss; error bars = the 95 %
    intervals (the std over seeds for losses without per-image counts)."""
    plt = _pyplot()
    columns, losses = summary["columns"], summary["losses"]
    width = 0.8 / max(len(losses), 1)
    x = np.arange(len(columns))
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(columns) + 2), 4.5))
    colours = plt.get_cmap("tab10" if len(losses) <= 10 else "tab20")
    intervals = summary.get("ci", {})
    for i, loss in enumerate(losses):
        means = np.array([summary["stats"][loss][c][0] for c in columns])
        if loss in intervals:  # asymmetric bars: the 95 % interval
            bounds = np.array([intervals[loss].get(c, (math.nan, math.nan)) for c in columns]).T
            errors = np.clip(np.abs(bounds - means), 0, None)
        else:  # the std over seeds (none for one seed)
            errors = np.nan_to_num(np.array([summary["stats"][loss][c][1] for c in columns]))
        ax.bar(x + (i - (len(losses) - 1) / 2) * width, 100 * means, width, yerr=100 * np.nan_to_num(errors),
               capsize=1.5, label=loss, color=colours(i))  # fmt: skip
    ax.set_xticks(x, columns, rotation=30, ha="right")
    spread = "95 % interval over seeds × images" if intervals else "± std over seeds"
    ax.set_ylabel(f"IoU % at the best epoch (mean, {spread})")
    ax.set_ylim(0, 100)
    ax.legend(ncol=min(len(losses), 5), fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(runs: list[Run], path: Path) -> Path:
    """Validation mIoU per epoch for each loss: the mean over seeds, shaded between min and max."""
    plt = _pyplot()
    losses = list(dict.fromkeys(run.loss for run in runs))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = plt.get_cmap("tab10" if len(losses) <= 10 else "tab20")
    for i, loss in enumerate(losses):
        curves = [dict(run.curve) for run in runs if run.loss == loss]
        epochs = sorted({epoch for curve in curves for epoch in curve})
        values = np.array([[curve.get(e, math.nan) for e in epochs] for curve in curves], dtype=float) * 100
        mean = np.nanmean(values, axis=0)
        ax.plot(epochs, mean, label=f"{loss} (n={len(curves)})", color=colours(i))
        ax.fill_between(epochs, np.nanmin(values, axis=0), np.nanmax(values, axis=0), color=colours(i), alpha=0.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val mIoU %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
