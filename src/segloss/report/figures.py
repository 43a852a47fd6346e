"""The report's figures (matplotlib, Agg): forest plot, per-class IoU heatmap, reliability diagrams, mIoU curves.

Each is saved under ``OUT/figures/`` in the asked formats (PNG at :data:`FILE_DPI`, PDF with TrueType fonts for
LaTeX, SVG) and kept as PNG bytes at :data:`EMBED_DPI` for the page. PDF and SVG carry no date, so the same runs
give the same files. Every loss has one colour in all the figures (:func:`loss_colours`).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segloss.comparison import significance
from segloss.comparison.runs import Run
from segloss.comparison.table import paired_cells
from segloss.report.calibration import Pooled

FORMATS = ("png", "pdf", "svg")
EMBED_DPI = 100  # the page's copies: small enough for a page of a few hundred kB
FILE_DPI = 200  # the PNG files: sharp on slides
# TrueType fonts in PDFs (LaTeX and journals refuse Type 3), and SVG ids from a fixed salt, so that the same runs
# give the same files byte for byte (the PDF and SVG dates are left out when saving).
RC = {"pdf.fonttype": 42, "svg.hashsalt": "segloss-report"}
GOOD, BAD, NEUTRAL = "#1f5fa8", "#b2182b", "#6e6e6e"


@dataclass
class Figure:
    """A saved figure: its file stem, title, caption (the page's), PNG bytes for the page and files by format."""

    stem: str
    title: str
    caption: str
    png: bytes
    files: dict[str, Path] = field(default_factory=dict)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def label(text: str) -> str:
    """Text for matplotlib as it is: a ``$`` would start mathtext."""
    return str(text).replace("$", r"\$")


def loss_colours(losses: list[str]) -> dict[str, tuple]:
    """One colour per loss: tab10, or for more losses tab20's ten dark shades before its ten light ones (so that
    neighbours in the list do not get a dark and a light shade of one hue)."""
    plt = _pyplot()
    if len(losses) <= 10:
        cmap = plt.get_cmap("tab10")
        return {loss: cmap(i) for i, loss in enumerate(losses)}
    cmap, order = plt.get_cmap("tab20"), [*range(0, 20, 2), *range(1, 20, 2)]
    return {loss: cmap(order[i % 20]) for i, loss in enumerate(losses)}


def save(fig, folder: Path, stem: str, formats: tuple[str, ...]) -> tuple[bytes, dict[str, Path]]:
    """Write ``fig`` as ``folder/stem.<format>`` for each format; return the page's PNG bytes and the files."""
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=EMBED_DPI, bbox_inches="tight")
    files = {}
    folder.mkdir(parents=True, exist_ok=True)
    with plt.rc_context(RC):
        for fmt in formats:
            path = folder / f"{stem}.{fmt}"
            metadata = {"png": None, "pdf": {"CreationDate": None}, "svg": {"Date": None}}[fmt]
            fig.savefig(path, format=fmt, dpi=FILE_DPI if fmt == "png" else "figure", bbox_inches="tight",
                        metadata=metadata)  # fmt: skip
            files[fmt] = path
    plt.close(fig)
    return buffer.getvalue(), files


def forest_plot(summary: dict) -> object | None:
    """Each loss's Δ mIoU to the baseline (points; mean over seeds of the loss minus that of the baseline, paired by
    seed) with the interval of ``make compare`` (at the level of its Holm step: it excludes 0 exactly when the
    difference is real), sorted by Δ; filled dots and ``*`` mark real differences. None without any test."""
    family = summary.get("vs_baseline") or {}
    if not family:
        return None
    plt = _pyplot()
    losses = sorted(family, key=lambda loss: family[loss]["delta"])
    fig, ax = plt.subplots(figsize=(6.2, 0.9 + 0.34 * len(losses)))
    for y, loss in enumerate(losses):
        found = family[loss]
        low, high = (100 * v for v in found["adjusted"])
        delta, real = 100 * found["delta"], significance.is_real(found)
        colour = (GOOD if delta > 0 else BAD) if real else NEUTRAL
        ax.plot([low, high], [y, y], color=colour, lw=2.2, solid_capstyle="butt")
        ax.plot([delta], [y], "o", ms=6, color=colour, mfc=colour if real else "white", mew=1.6, zorder=3)
        text, p_holm = paired_cells(summary, loss)[:2]
        ax.annotate(f"{text}  p {p_holm}", (1.02, y), xycoords=("axes fraction", "data"), va="center", fontsize=8)
    ax.annotate("Δ [interval]  Holm p", (1.02, len(losses) - 0.4), xycoords=("axes fraction", "data"),
                va="bottom", fontsize=8, color=NEUTRAL)  # fmt: skip
    ax.axvline(0, color="black", lw=0.9)
    names = [label(loss) + (" *" if significance.is_real(family[loss]) else "") for loss in losses]
    ax.set_yticks(range(len(losses)), names)
    ax.set_ylim(-0.6, len(losses) - 0.4)
    ax.set_xlabel(f"Δ mIoU vs {label(summary['baseline'])} (points)")
    ax.grid(axis="x", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def heatmap_plot(summary: dict) -> object:
    """Mean over seeds of each loss's IoU (%) at its runs' best epochs: mIoU, then each class (the table's
    columns); grey "—" where no run of the loss has that class's IoU (absent from validation and never
    predicted); the best mean of each column in bold, as in the table."""
    plt = _pyplot()
    columns, losses = summary["columns"], summary["losses"]
    values = 100 * np.array([[summary["stats"][loss][c][0] for c in columns] for loss in losses], dtype=float)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.9 + 0.5 * len(columns)), 1.1 + 0.3 * len(losses)))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#e4e4e4")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    small = 7.5 if len(columns) > 12 else 8.5
    for i, loss in enumerate(losses):
        for j, column in enumerate(columns):
            value = values[i, j]
            text = "—" if math.isnan(value) else f"{value:.1f}"
            colour = "#555555" if math.isnan(value) else ("black" if value > 55 else "white")
            weight = "bold" if summary["best"].get(column) == loss else "normal"
            ax.text(j, i, text, ha="center", va="center", fontsize=small, color=colour, weight=weight)
    if len(columns) > 1:
        ax.axvline(0.5, color="white", lw=4)  # mIoU apart from the classes
    ax.set_xticks(range(len(columns)), [label(c) for c in columns], rotation=40, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(losses)), [label(loss) for loss in losses])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    bar = fig.colorbar(image, ax=ax, fraction=0.025, pad=0.015)
    bar.set_label("IoU % (mean over seeds)")
    return fig


def reliability_plot(pooled: dict[str, Pooled], losses: list[str], colours: dict) -> object | None:
    """Per loss (one panel each, in the table's order), its pixels' accuracy per confidence bin (bars) and their
    mean confidence (black ticks), pooled over images and seeds (:mod:`segloss.report.calibration`); the
    diagonal is perfect calibration, a bar below it over-confidence. Bins holding under 0.1 % of the pixels are
    pale. The title gives the pooled ECE. None if no loss stored the bins."""
    shown = [loss for loss in losses if loss in pooled]
    if not shown:
        return None
    plt = _pyplot()
    cols = min(4, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.35 * cols, 2.45 * rows), sharex=True, sharey=True,
                             squeeze=False)  # fmt: skip
    for ax, loss in zip(axes.flat, shown):
        bins = pooled[loss]
        edges, accuracy, share = bins.edges, bins.accuracy, bins.share
        alpha = np.where(share < 1e-3, 0.3, 0.9)
        for b in range(len(accuracy)):
            if not math.isnan(accuracy[b]):
                ax.bar(edges[b], accuracy[b], width=edges[b + 1] - edges[b], align="edge", color=colours[loss],
                       alpha=float(alpha[b]), edgecolor="white", lw=0.5)  # fmt: skip
        mids = bins.mean_confidence
        ok = ~np.isnan(mids) & ~np.isnan(accuracy)
        ax.plot(mids[ok], accuracy[ok], "_", color="black", ms=7, mew=1.3)
        ax.plot([0, 1], [0, 1], color="black", lw=0.8, ls="--")
        ax.set_title(f"{label(loss)}\nECE {100 * bins.ece:.1f} % · {bins.runs} runs", fontsize=8.5)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.grid(alpha=0.25)
    _finish_grid(axes, len(shown), "confidence", "accuracy")
    fig.tight_layout()
    return fig


def _finish_grid(axes, used: int, xlabel: str, ylabel: str) -> None:
    """A rows × cols panel grid: the panels after the first ``used`` hidden, x labels on the bottom row and y
    labels on the left column."""
    for ax in axes.flat[used:]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel(xlabel)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)


def _band(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column (epoch): mean and sample SD over the rows (seeds) that have a value; SD 0 with one."""
    counts = (~np.isnan(values)).sum(0)
    mean = np.nanmean(values, axis=0)
    squares = np.nansum((values - mean) ** 2, axis=0)
    return mean, np.sqrt(np.where(counts > 1, squares / np.maximum(counts - 1, 1), 0.0))


def curves_plot(runs: list[Run], losses: list[str], baseline: str, colours: dict) -> object:
    """Per loss (one panel each, in the table's order, axes shared): validation mIoU (%) per epoch, the mean over
    its seeds with a band of ± one sample standard deviation over seeds (at each epoch, over the seeds validated
    there), and the baseline's mean as a grey dashed line for reference."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    cols = min(4, len(losses))
    rows = math.ceil(len(losses) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.5 * cols, 1.95 * rows + 0.3), sharex=True, sharey=True,
                             squeeze=False)  # fmt: skip
    series = {}
    for loss in losses:
        curves = [dict(run.curve) for run in runs if run.loss == loss]
        epochs = sorted({epoch for curve in curves for epoch in curve})
        values = 100 * np.array([[curve.get(e, math.nan) for e in epochs] for curve in curves], dtype=float)
        series[loss] = (np.array(epochs), *_band(values.reshape(len(curves), len(epochs))), len(curves))
    for ax, loss in zip(axes.flat, losses):
        epochs, mean, sd, seeds = series[loss]
        if loss != baseline and baseline in series:
            ax.plot(series[baseline][0], series[baseline][1], color="0.55", lw=1, ls="--", label=label(baseline))
        ax.fill_between(epochs, mean - sd, mean + sd, color=colours[loss], alpha=0.25, lw=0)
        ax.plot(epochs, mean, color=colours[loss], lw=1.6, marker="o", ms=2.5)
        ax.set_title(f"{label(loss)} (n = {seeds})", fontsize=8.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.25)
    _finish_grid(axes, len(losses), "epoch", "val mIoU %")
    if len(losses) > 1 and baseline in series:
        fig.legend(*next(ax for ax in axes.flat if ax.get_legend_handles_labels()[0]).get_legend_handles_labels(),
                   loc="upper right", fontsize=8, frameon=False)  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1, 0.97) if len(losses) > 1 else None)
    return fig
