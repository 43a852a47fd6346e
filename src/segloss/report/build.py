"""Build the report of a sweep: load and group its runs as ``make compare`` does, draw, write, swap in.

:func:`build_report` reads the runs (:func:`segloss.comparison.runs.load_runs`), splits them into groups of
comparable runs (:func:`segloss.comparison.groups.group_runs`) and summarises each group with ``make compare``'s
functions (:func:`segloss.comparison.summary.summarise`, :func:`~segloss.comparison.summary.add_statistics`), so the
page's table holds the same numbers as ``compare.csv``. Everything is checked before anything is written (the
runs, ``--baseline``, ``--pair``, the output folder); the report is then written into a hidden folder beside
``OUT`` and renamed to ``OUT`` at the end, replacing an earlier report whole, so a failure leaves no half-written
report.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from segloss.comparison import significance
from segloss.comparison.groups import group_runs
from segloss.comparison.runs import Run, load_runs
from segloss.comparison.summary import add_statistics, summarise
from segloss.errors import ConfigError, SeglossError
from segloss.report import calibration, figures, provenance
from segloss.report.page import Disagreement, Section, render

IMAGES = 6  # disagreement panels per group by default
STEMS = {"forest": "forest_delta_miou", "heatmap": "iou_by_class_heatmap", "calibration": "reliability",
         "curves": "miou_curves"}  # fmt: skip


def split_pair(text: str, losses: list[str]) -> tuple[str, str] | None:
    """``"A,B"`` as two of ``losses`` (a loss variant's own name may hold commas: every split is tried), or None."""
    parts = text.split(",")
    for cut in range(1, len(parts)):
        a, b = ",".join(parts[:cut]).strip(), ",".join(parts[cut:]).strip()
        if a in losses and b in losses and a != b:
            return a, b
    return None


def default_pair(summary: dict) -> tuple[str, str] | None:
    """(the loss with the best mean mIoU other than the baseline, the baseline); None with a single loss."""
    baseline = summary["baseline"]
    others = [loss for loss in summary["losses"] if loss != baseline]
    if not others:
        return None
    mean = lambda loss: summary["stats"][loss]["mIoU"][0]  # noqa: E731
    return max(others, key=lambda loss: -math.inf if math.isnan(mean(loss)) else mean(loss)), baseline


def runs_text(summary: dict) -> str:
    """How many runs a group's figures come from: ``"120 runs (10 seeds × 12 losses)"`` or the seeds per loss."""
    seeds = summary["seeds"]
    total = sum(seeds.values())
    if len(set(seeds.values())) == 1:
        count = next(iter(seeds.values()))
        plural = lambda n, word, tail: f"{n} {word}{tail if n != 1 else ''}"  # noqa: E731
        return f"{total} runs ({plural(count, 'seed', 's')} × {plural(len(seeds), 'loss', 'es')})"
    return f"{total} runs (seeds per loss: " + ", ".join(f"{loss} {n}" for loss, n in seeds.items()) + ")"


def disagreement(runs: list[Run], summary: dict, pair: str | None, count: int, folder: Path) -> Disagreement:
    """The images on which two losses disagree most (:mod:`segloss.report.disagree`), rendered into ``folder``; a
    reason in place of what cannot be had (no second loss, no per-image counts, no checkpoints, no dataset)."""
    chosen = split_pair(pair, summary["losses"]) if pair else default_pair(summary)
    if chosen is None:
        why = f"--pair {pair} names no two losses of this group" if pair else "this group has a single loss"
        return Disagreement(reason=f"No pair of losses to compare: {why}.")
    a, b = chosen
    if count == 0:
        return Disagreement(a, b, reason="No images asked for (--images 0).")
    from segloss.report import disagree

    try:
        picks = disagree.select_pairs(runs, a, b, count)
    except SeglossError as err:
        return Disagreement(a, b, reason=f"No images picked: {err}")
    if not picks:
        return Disagreement(a, b, reason="No images picked: the two losses share no scored validation image.")
    try:
        rendered = disagree.render_pairs(runs, a, b, picks, folder)
    except SeglossError as err:
        return Disagreement(a, b, [dict(p) for p in picks], images_reason=str(err))
    for pick in rendered:
        png = pick.get("png")
        pick["png_bytes"] = Path(png).read_bytes() if png and Path(png).is_file() else None
    return Disagreement(a, b, rendered, legend=class_legend(next(run for run in runs if run.loss == a)))


def class_legend(run: Run) -> list[tuple[str, tuple[int, int, int]]]:
    """``[(class name, RGB)]`` of the colours the panels use (:func:`segloss.utils.visualize.class_palette` of the run's
    dataset class — imported only when it is one this project's configs name, as for the panels); [] when the
    run's config does not name its classes."""
    names, count = run.setting.get("data.class_names"), run.setting.get("data.num_classes")
    if not isinstance(names, list | tuple) or not isinstance(count, int) or len(names) != count:
        return []
    from omegaconf import OmegaConf

    from segloss.report.replay import allowed_targets
    from segloss.utils.visualize import class_palette

    target = run.setting.get("data.dataset._target_")
    target = target if isinstance(target, str) and target in allowed_targets() else None
    data = {"num_classes": count, **({"dataset": {"_target_": target}} if target else {})}
    return list(zip(map(str, names), class_palette(OmegaConf.create({"data": data})), strict=True))


def _figures(runs: list[Run], summary: dict, folder: Path, formats: tuple[str, ...]) -> tuple[dict, list[str]]:
    """The four figures of a group (or why each is missing) and notes on runs without calibration counts."""
    losses, baseline = summary["losses"], summary["baseline"]
    colours = figures.loss_colours(losses)
    text = runs_text(summary)
    found: dict[str, figures.Figure | str] = {}

    def keep(key: str, fig, title: str, caption: str) -> None:
        png, files = figures.save(fig, folder, STEMS[key], formats)
        found[key] = figures.Figure(STEMS[key], title, caption, png, files)

    fig = figures.forest_plot(summary)
    untested = "; ".join(f"{loss}: {why}" for loss, why in summary.get("untested", {}).items())
    if fig is None:
        found["forest"] = (
            "No forest plot: no loss could be tested against the baseline ("
            + (untested or "no per-image counts")
            + "). Tests need the per-image counts and ≥ 3 seeds of each loss."
        )
    else:
        m = len(summary["vs_baseline"])
        keep("forest", fig, f"Difference in mIoU to {baseline}",
             f"Δ mIoU (points): mean over seeds of each loss minus that of {baseline}, paired by seed. The interval "
             f"is make compare's, at the level of its Holm step over the {m} comparisons with the baseline: it "
             f"excludes 0 exactly when the difference is real (*, filled dot: Holm-adjusted p < {summary['alpha']:g})."
             f" Sorted by Δ. From {text}." + (f" Not tested: {untested}." if untested else ""))  # fmt: skip
    keep("heatmap", figures.heatmap_plot(summary), "IoU per class",
         "Mean over seeds of each run's IoU (%) at its best epoch: mIoU, then each class, as in the table; bold: "
         f"the best mean of a column; grey —: no IoU (the class was absent from validation and never predicted by "
         f"that loss). From {text}.")  # fmt: skip
    pooled, notes = calibration.pool(runs)
    fig = figures.reliability_plot(pooled, losses, colours)
    if fig is None:
        found["calibration"] = ("No reliability diagrams: the runs stored no calibration counts (calib_count … in "
                                "per_image_val.npz; trained with metrics.calibration=false, or before it was "
                                "stored: `make rescore DIR=…` adds them from the best checkpoints).")  # fmt: skip
    else:
        used = sum(p.runs for p in pooled.values())
        keep("calibration", fig, "Reliability diagrams",
             "Per loss, the pixels' accuracy (bars) and mean confidence (black ticks) in each of 15 equal-width "
             "confidence bins of the softmax's top probability, pooled over the validation images and seeds; pale "
             "bars hold < 0.1 % of the pixels; dashed: perfect calibration. The ECE in each title is that of the "
             f"pooled bins (the table's ECE is the mean of the runs' own ECEs). From {used} runs with calibration "
             "counts" + (f" ({len(notes)} runs without)" if notes else "") + ".")  # fmt: skip
    keep("curves", figures.curves_plot(runs, losses, baseline, colours), "Validation mIoU per epoch",
         "Per loss, validation mIoU (%) at each validated epoch: mean over seeds (line) ± one sample standard "
         f"deviation over seeds (band); grey dashed: {baseline}'s mean. From {text}.")  # fmt: skip
    return found, notes


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,-]+", "_", label)[:120] or "all"


def check_out(out: Path, directory: Path) -> None:
    """Refuse an output folder that is a file, holds the sweep, or holds anything but an earlier report."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the report")
    if directory.resolve().is_relative_to(out.resolve()):
        raise ConfigError(f"--out {out} holds the sweep {directory}; give a folder of its own (default DIR/report)")
    if out.is_dir() and any(out.iterdir()) and not (out / "report.html").is_file():
        raise ConfigError(f"--out {out} holds other files than a report, which writing the report would replace; "
                          "give a new or empty folder")  # fmt: skip


@contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A hidden folder beside ``out`` to write into; renamed to ``out`` (replacing an earlier report) when the
    block ends, removed if it fails. Such folders of killed reports (whose process no longer runs) are removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.partial-*-*"):  # left by a killed report (its process is gone)
        pid = stale.name.rsplit("-", 2)[-2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists() and Path("/proc/self").exists():
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _recorded(runs: list[Run]) -> list[str]:
    """What the runs recorded of their environment (:mod:`segloss.report.provenance`)."""
    versions = {}
    for run in runs:
        version = provenance.hydra_version(Path(run.path)) if Path(run.path).is_dir() else None
        if version:
            versions[version] = versions.get(version, 0) + 1
    found = [f"Hydra {v} (.hydra/hydra.yaml of {n} runs)" for v, n in versions.items()]
    stamped = sum(run.finished.startswith("COMPLETED 2") for run in runs)
    if stamped:
        found.append(f"when each run finished (COMPLETED of {stamped} runs)")
    if versions:
        found.append("each run's resolved config and command-line overrides (.hydra/)")
    else:
        found.append("each run's experiment settings (runs.json: the config without paths, loss and seed)")
    return found


def build_report(
    directory: str | Path, out: str | Path | None = None, baseline: str | None = None, pair: str | None = None,
    images: int = IMAGES, formats: tuple[str, ...] = figures.FORMATS, ignore: tuple[str, ...] = (),
    alpha: float = significance.ALPHA,
) -> Path:  # fmt: skip
    """Write the report of the sweep in ``directory`` into ``out`` (default ``directory/report``); return the path
    of its ``report.html``. Raises :class:`ConfigError` (nothing written) for no runs, an unknown baseline or
    pair, or an output folder that is not one."""
    directory = Path(directory).expanduser()
    runs, left_out = load_runs(directory)
    groups, repeated = group_runs(runs, tuple(ignore))
    left_out = left_out + repeated
    out = Path(out).expanduser() if out else directory / "report"
    check_out(out, directory)
    if pair is not None:
        losses = list(dict.fromkeys(run.loss for _, members in groups for run in members))
        named = [part.strip() for part in pair.split(",")]
        unknown = [name for name in named if name not in losses] if len(named) == 2 else []
        if not any(split_pair(pair, [run.loss for run in members]) for _, members in groups):
            why = f"{', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} no compared loss; "
            why = why if unknown else ""
            raise ConfigError(f"--pair {pair!r}: {why}give two different losses of one group as A,B, from {losses}")
    summaries = []
    for setting, members in groups:
        label = ", ".join(f"{k}={v}" for k, v in setting.items())
        summaries.append((label, members, add_statistics(summarise(members), members, baseline, alpha)))
    counted = sum(len(members) for _, members, _ in summaries)
    with staging(out) as tmp:
        sections = []
        for label, members, summary in summaries:
            folder = tmp / "figures" / (_slug(label) if len(summaries) > 1 else "")
            found, notes = _figures(members, summary, folder, tuple(formats))
            part = disagreement(members, summary, pair, images, folder / "disagree")
            sections.append(Section(label, summary, runs_text(summary), found, part,
                                    provenance.collect(members, directory), notes))  # fmt: skip
        date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        machine, versions = provenance.this_process()
        everyone = [r for _, m, _ in summaries for r in m]
        environments = provenance.recorded_environments(everyone)
        page = render(f"Loss comparison: {directory.resolve().name}", str(directory), date, counted,
                      [(x.path, x.reason) for x in left_out], sections,
                      (_recorded(everyone), environments, machine, versions))  # fmt: skip
        (tmp / "report.html").write_text(page, encoding="utf-8")
    return out / "report.html"
