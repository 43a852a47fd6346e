"""The comparison table as text: its cells, the Markdown table of ``compare.md`` and the CSV/W&B rows.

Undefined values print as such: a spread of one seed is ``n/a (1 seed)``, a test the runs cannot support
says why, and a p-value below what is printed shows as ``< 0.001``.
"""

from __future__ import annotations

import math

from segloss.comparison import significance


def cell(mean: float, std: float, interval: tuple[float, float] | None = None) -> str:
    """A score in %: ``mean [low, high]`` with a 95 % interval, else ``mean ± std`` (``n/a`` for one seed)."""
    if math.isnan(mean):
        return "—"
    if interval is not None and not any(math.isnan(v) for v in interval):
        return f"{100 * mean:.1f} [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"
    return f"{100 * mean:.1f} ± " + ("n/a (1 seed)" if math.isnan(std) else f"{100 * std:.1f}")


def p_text(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def paired_columns(summary: dict) -> list[str]:
    """The columns of the tests (none without per-image counts)."""
    if not summary.get("vs_baseline") and not summary.get("untested") and not summary.get("vs_best"):
        return []
    return [f"Δ mIoU vs {summary['baseline']}", "p (Holm)", "MDD", "vs best"]


def paired_cells(summary: dict, loss: str) -> list[str]:
    """Δ vs the baseline in points with its simultaneous interval and ``*`` when real, its Holm-adjusted p,
    the minimum detectable difference (80 % power at the table's corrected level) and the mark against the
    best (``best``, ``≈`` not shown worse than any loss, ``<`` worse than some loss)."""
    if not paired_columns(summary):
        return []
    found = summary["vs_baseline"].get(loss)
    if loss == summary["baseline"]:
        delta, p, mdd = "baseline", "", ""
    elif found is None:
        delta, p, mdd = f"n/a: {summary.get('untested', {}).get(loss, 'no test')}", "—", "—"
    else:
        low, high = found["adjusted"]
        mark = " *" if significance.is_real(found) else ""
        delta = f"{100 * found['delta']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]{mark}"
        p, mdd = p_text(found["p_holm"]), f"{100 * found['mdd']:.1f}"
    return [delta, p, mdd, summary["vs_best"].get(loss, "—")]


def score_cells(summary: dict, loss: str) -> list[tuple[str, bool]]:
    """(text, best of its column) for mIoU and each class."""
    intervals = summary.get("ci", {}).get(loss, {})
    return [
        (cell(*summary["stats"][loss][column], intervals.get(column)), summary["best"].get(column) == loss)
        for column in summary["columns"]
    ]


def extra_cells(summary: dict, loss: str) -> list[tuple[str, bool]]:
    """(text, best) for the other scores (Boundary IoU, recall, … in %; ECE in %, NLL as it is)."""
    cells = []
    intervals = summary.get("ci", {}).get(loss, {})
    for name in summary.get("extra", []):
        mean, std = summary["stats"][loss][name]
        interval = intervals.get(name)
        if name != "NLL" or math.isnan(mean):
            text = cell(mean, std, interval)
        elif interval is not None:
            text = f"{mean:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"
        else:
            text = f"{mean:.3f} ± " + ("n/a (1 seed)" if math.isnan(std) else f"{std:.3f}")
        cells.append((text, summary["best"].get(name) == loss))
    return cells


def header(summary: dict) -> list[str]:
    columns = summary["columns"]
    return ["loss", "seeds", columns[0], *paired_columns(summary), *summary.get("extra", []), *columns[1:]]


def row_cells(summary: dict, loss: str, bold: str = "**{}**", escape=lambda text: text) -> list[str]:
    """One row of the table; ``bold`` marks the best of a column, ``escape`` quotes text for a renderer."""
    scores = [bold.format(escape(text)) if best else escape(text) for text, best in score_cells(summary, loss)]
    others = [bold.format(escape(text)) if best else escape(text) for text, best in extra_cells(summary, loss)]
    tests = [escape(text) for text in paired_cells(summary, loss)]
    return [escape(loss), str(summary["seeds"][loss]), scores[0], *tests, *others, *scores[1:]]


def markdown_table(summary: dict) -> str:
    head = header(summary)
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    lines += ["| " + " | ".join(row_cells(summary, loss)) + " |" for loss in summary["losses"]]
    if summary.get("ci") or summary.get("vs_baseline"):
        lines += ["", table_note(summary)]
    lines += [f"Note: {note}" for note in summary.get("notes", [])]
    return "\n".join(lines) + "\n"


def table_note(summary: dict) -> str:
    m = len(summary.get("vs_baseline", {}))
    return (
        "Scores in %: mean over seeds [95 % interval over seeds × images: crossed random effects, t with "
        "Satterthwaite df]. Δ: difference in mean mIoU to the baseline (paired by seed where both losses have the "
        f"same seeds) [interval at the level of its Holm step over the {m} comparisons: it excludes 0 exactly when "
        f"the difference is real], * when real: Holm-adjusted p < {summary.get('alpha', significance.ALPHA):g} (the "
        "training run is the unit). MDD: the "
        "smallest |Δ| (points) this design detects with 80 % power at the corrected level. vs best: < when the "
        "loss is worse than some other loss (Holm over all pairs), ≈ when not shown worse than any."
    )


def csv_rows(summary: dict) -> tuple[list[str], list[list]]:
    """The CSV (and W&B) table: per loss and column mean, std and the 95 % interval; Δ to the baseline with its
    95 % and Holm-step intervals, SE, df, p, Holm-adjusted p, real, MDD, paired, and the mark vs the best."""
    columns, extra = summary["columns"], summary.get("extra", [])
    head = ["loss", "seeds"] + [f"{c}_{s}" for c in [*columns, *extra] for s in ("mean", "std", "ci_low", "ci_high")]
    head += ["delta_mIoU", "delta_low", "delta_high", "delta_adj_low", "delta_adj_high", "se", "df", "p", "p_holm",
             "real", "mdd80", "paired", "vs_best"]  # fmt: skip
    rows = []
    for loss in summary["losses"]:
        intervals = summary.get("ci", {}).get(loss, {})
        values = []
        for column in [*columns, *extra]:
            values += [*summary["stats"][loss][column], *intervals.get(column, (math.nan, math.nan))]
        test = summary.get("vs_baseline", {}).get(loss)
        if test is None:
            values += [math.nan] * 10
            flags = ["", ""]
        else:
            values += [test["delta"], *test["interval"], *test["adjusted"], test["se"], test["df"], test["p"],
                       test["p_holm"]]  # fmt: skip
            values.append(test["mdd"])
            flags = [str(significance.is_real(test)).lower(), str(test["paired"]).lower()]
        numbers = [None if math.isnan(v) else float(v) for v in values]
        rows.append([loss, summary["seeds"][loss], *numbers[:-1], flags[0], numbers[-1], flags[1],
                     summary.get("vs_best", {}).get(loss, "—")])  # fmt: skip
    return head, rows
