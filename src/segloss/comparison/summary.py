"""Per-loss summaries of a sweep's runs: mean ± sample standard deviation (n − 1) over seeds of the best
mIoU and of each class's IoU at the best epoch; the best mean of each column marked. Where the runs stored
their per-image counts: 95 % intervals, the paired difference to a baseline and whether each loss can be
told apart from the best (:mod:`segloss.comparison.stats`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from segloss.comparison import stats
from segloss.comparison.runs import LOWER_IS_BETTER, SCORES, Run


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
    extra = [name for name in SCORES if any(name in run.scores for run in runs)]
    for loss in losses:
        for name in extra:
            stats[loss][name] = _mean_std([run.scores.get(name, math.nan) for run in runs if run.loss == loss])
    columns = ["mIoU", *classes]
    best = {}
    for column in [*columns, *extra]:
        means = {loss: stats[loss][column][0] for loss in losses if not math.isnan(stats[loss][column][0])}
        if means:
            best[column] = (min if column in LOWER_IS_BETTER else max)(means, key=means.get)
    return {"losses": losses, "columns": columns, "extra": extra, "stats": stats, "seeds": seeds, "best": best}


def load_counts(runs: list[Run], classes: list[str]) -> tuple[dict[str, stats.Counts], list[str]]:
    """Per loss, the per-image counts of its runs (:class:`segloss.comparison.stats.Counts`) on the images that
    every run with counts scored (matched by name) and on ``classes``; and notes on what was left out."""
    stored = [(run, np.load(run.per_image)) for run in runs if run.per_image and Path(run.per_image).is_file()]
    has_counts = {id(run) for run, _ in stored}
    notes = [
        f"{run.loss} seed {run.seed}: no per-image counts ({run.path})" for run in runs if id(run) not in has_counts
    ]
    if not stored:
        return {}, notes
    names = sorted(set.intersection(*(set(data["names"].tolist()) for _, data in stored)))
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
        loss: stats.Counts(
            [item[0] for item in items],
            np.stack([item[1] for item in items]),
            np.stack([item[2] for item in items]),
            {key: np.stack([item[3][key] for item in items]) for key in part_names},
        )
        for loss, items in grouped.items()
    }
    return counts, notes


def _common_parts(stored: list, notes: list[str]) -> list[str]:
    """The per-image arrays (TP/FN and the quality counts) that every stored run has, for the intervals of the
    other scores; none if the runs' classes differ."""
    if len({tuple(data["class_names"].tolist()) for _, data in stored}) > 1:
        notes.append("the runs' classes differ: no intervals for Boundary IoU, recall and calibration")
        return []
    wanted = {part for needs, _ in stats.SCORES.values() for part in needs}
    common = set.intersection(*(set(data.files) for _, data in stored)) & wanted
    missing = {part for _, data in stored for part in data.files if part in wanted} - common
    if missing:
        notes.append(
            "some runs stored no per-image quality counts (older runs: `make rescore DIR=…` adds them), so "
            f"{', '.join(sorted(missing))} give no interval"
        )
    return sorted(common)


def add_statistics(
    summary: dict, runs: list[Run], baseline: str | None = None, seed: int = 0, draws: int = 2000
) -> dict:
    """Add to ``summary``: ``"ci"`` {loss: {column: (low, high)}} (95 % bootstrap over seeds × images),
    ``"baseline"`` and ``"vs_baseline"`` {loss: {delta, interval, p, p_holm}}, ``"vs_best"`` {loss: {p_holm,
    tied}} (Holm over each family; tied = not told apart from the best: not a real difference in the sense of
    :func:`segloss.comparison.stats.is_real`) and ``"notes"``."""
    losses, classes = summary["losses"], summary["columns"][1:]
    baseline = baseline or losses[0]
    if baseline not in losses:
        from segloss.errors import ConfigError

        raise ConfigError(f"--baseline {baseline!r} is not among the compared losses {losses}")
    counts, notes = load_counts(runs, classes)
    ci = {}
    for loss, c in counts.items():
        interval = stats.bootstrap_interval(c, replicates=draws, seed=seed)
        ci[loss] = {"mIoU": tuple(interval["mIoU"]), **{n: tuple(interval["IoU"][:, k]) for k, n in enumerate(classes)}}
        for name in summary.get("extra", []):
            found = stats.bootstrap_score(name, c, replicates=draws, seed=seed)
            if found is not None:
                ci[loss][name] = tuple(found)
    vs_baseline = _family(counts, baseline, [name for name in losses if name != baseline], seed, draws)
    best = summary["best"].get("mIoU")
    vs_best = _family(counts, best, [name for name in losses if name != best], seed, draws) if best in counts else {}
    tied = {loss: {"p_holm": r["p_holm"], "tied": not stats.is_real(r)} for loss, r in vs_best.items()}
    if best in counts:
        tied[best] = {"p_holm": math.nan, "tied": True}
    return {**summary, "ci": ci, "baseline": baseline, "vs_baseline": vs_baseline, "vs_best": tied, "notes": notes}


def _family(counts: dict, reference: str, others: list[str], seed: int, draws: int) -> dict:
    """Paired differences of ``others`` against ``reference``, Holm-adjusted together."""
    if reference not in counts:
        return {}
    results = {}
    for loss in others:
        if loss in counts:
            found = stats.paired_difference(counts[loss], counts[reference], draws, draws, seed=seed)
            if found is not None:
                results[loss] = found
    adjusted = stats.holm({loss: r["p"] for loss, r in results.items()})
    return {loss: {**r, "p_holm": adjusted[loss]} for loss, r in results.items()}


def cell(mean: float, std: float, interval: tuple[float, float] | None = None) -> str:
    """A score in %: ``mean [low, high]`` with a 95 % interval, else ``mean ± std``."""
    if math.isnan(mean):
        return "—"
    if interval is not None and not any(math.isnan(v) for v in interval):
        return f"{100 * mean:.1f} [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def paired_columns(summary: dict) -> list[str]:
    """The columns of the paired tests (none without per-image counts)."""
    if not summary.get("vs_baseline") and not summary.get("vs_best"):
        return []
    return [f"Δ mIoU vs {summary['baseline']}", "p (Holm)", "≈ best"]


def paired_cells(summary: dict, loss: str) -> list[str]:
    """Δ vs the baseline with its interval (points of mIoU), its Holm-adjusted p, and whether the loss can be
    told apart from the best (``best``, ``≈`` not told apart, ``<`` worse at α = 0.05)."""
    if not paired_columns(summary):
        return []
    found = summary["vs_baseline"].get(loss)
    if loss == summary["baseline"]:
        delta, p = "baseline", ""
    elif found is None:
        delta, p = "—", "—"
    else:
        low, high = found["interval"]
        mark = " *" if stats.is_real(found) else ""  # real: p_holm < α and the interval excludes 0
        delta = f"{100 * found['delta']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]{mark}"
        p = f"{found['p_holm']:.3f}"
    return [delta, p, best_mark(summary["vs_best"].get(loss))]


def best_mark(tie: dict | None) -> str:
    if tie is None:
        return "—"
    return "best" if math.isnan(tie["p_holm"]) else ("≈" if tie["tied"] else "<")


def score_cells(summary: dict, loss: str) -> list[tuple[str, bool]]:
    """(text, best of its column) for mIoU and each class."""
    intervals = summary.get("ci", {}).get(loss, {})
    return [
        (cell(*summary["stats"][loss][column], intervals.get(column)), summary["best"].get(column) == loss)
        for column in summary["columns"]
    ]


def extra_cells(summary: dict, loss: str) -> list[tuple[str, bool]]:
    """(text, best) for the other scores (Boundary IoU, recall, … in %; ECE in %, NLL as it is): mean with its
    95 % interval where the runs stored per-image counts for it, else mean ± std."""
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
            text = f"{mean:.3f} ± {std:.3f}"
        cells.append((text, summary["best"].get(name) == loss))
    return cells


def markdown_table(summary: dict) -> str:
    columns, tests, extra = summary["columns"], paired_columns(summary), summary.get("extra", [])
    header = ["loss", "seeds", columns[0], *tests, *extra, *columns[1:]]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for loss in summary["losses"]:
        scores = [f"**{text}**" if best else text for text, best in score_cells(summary, loss)]
        others = [f"**{text}**" if best else text for text, best in extra_cells(summary, loss)]
        row = [loss, str(summary["seeds"][loss]), scores[0], *paired_cells(summary, loss), *others, *scores[1:]]
        lines.append("| " + " | ".join(row) + " |")
    if summary.get("ci"):
        lines.append("")
        lines.append(INTERVAL_NOTE)
    return "\n".join(lines) + "\n"


INTERVAL_NOTE = (
    "Scores in %: mean over seeds [95 % bootstrap interval over seeds × images]; Δ: paired difference to the "
    "baseline on common seeds and images [95 % interval], * when real (p < 0.05 and the interval excludes 0); "
    "p: paired permutation test over images, Holm-corrected over the table's comparisons; ≈ best: not told "
    "apart from the best mean mIoU in that sense, < : worse."
)
