"""Compare the runs of a sweep: ``python -m segloss.compare [DIR] [--out OUT]`` (``make compare DIR=…``).

Reads the run directories under ``DIR`` (each job of ``make sweep``: ``config.yaml``,
``.hydra/hydra.yaml`` and the CSV logger's ``csv/metrics.csv``; no W&B needed). Per run it takes the
best validation epoch (highest ``val/mIoU``) and that epoch's per-class IoU, plus the ``val/mIoU`` curve.
Per loss it reports the mean ± sample standard deviation (n − 1) over seeds of the best mIoU and of each
class's IoU at the best epoch, and the number of seeds; the best mean of each column is highlighted.
Classes with no IoU in any run (absent from the validation split) are left out. Runs that failed
(a ``FAILED`` file) or never validated are listed and skipped.

Outputs in ``OUT`` (default ``DIR/compare``): ``compare.md``, ``compare.csv``, ``runs.json`` (the per-run
numbers, which :func:`load_runs` reads back in place of a sweep), ``iou_by_class.png`` (per-class IoU
grouped by loss, error bars = std over seeds) and ``miou_curves.png`` (validation mIoU per epoch, mean
with the min–max band over seeds).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml

from segloss.errors import ConfigError


@dataclass
class Run:
    """The numbers of one finished run."""

    loss: str
    seed: int
    model: str
    data: str
    best_miou: float
    best_epoch: int
    iou: dict[str, float]  # per class, at the best epoch
    curve: list[tuple[int, float]] = field(default_factory=list)  # (epoch, val/mIoU)
    path: str = ""


def _float(value: str | None) -> float:
    return float(value) if value not in (None, "") else math.nan


def read_run(run_dir: Path) -> Run | None:
    """The :class:`Run` of one job directory, or None if it has no validation results."""
    metrics = run_dir / "csv" / "metrics.csv"
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    if not metrics.is_file() or (run_dir / "FAILED").exists():
        return None
    with metrics.open() as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("val/mIoU") not in (None, "")]
    if not rows:
        return None
    choices = {}
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    if hydra_file.is_file():
        choices = yaml.safe_load(hydra_file.read_text())["hydra"]["runtime"]["choices"]
    loss, model, data, *_ = (config.get("run_name", "?-?-?").split("-") + ["?"] * 3)[:3]
    best = max(rows, key=lambda row: _float(row["val/mIoU"]))
    iou = {key[len("val/IoU/") :]: _float(value) for key, value in best.items() if key.startswith("val/IoU/")}
    return Run(
        loss=choices.get("loss", loss),
        seed=int(config.get("seed", -1)),
        model=choices.get("model", model),
        data=choices.get("data", data),
        best_miou=_float(best["val/mIoU"]),
        best_epoch=int(float(best["epoch"])),
        iou=iou,
        curve=[(int(float(row["epoch"])), _float(row["val/mIoU"])) for row in rows],
        path=str(run_dir),
    )


def load_runs(directory: str | Path) -> tuple[list[Run], list[str]]:
    """``(runs, skipped)`` of a sweep directory (searched recursively for ``csv/metrics.csv``), or of a
    folder holding the ``runs.json`` written by :func:`write_outputs`."""
    directory = Path(directory).expanduser()
    if (directory / "runs.json").is_file() and not any(directory.rglob("csv/metrics.csv")):
        return [
            Run(**{**r, "curve": [tuple(p) for p in r["curve"]]})
            for r in json.loads((directory / "runs.json").read_text())
        ], []
    if not directory.is_dir():
        raise ConfigError(f"sweep directory {directory} does not exist; give DIR=logs/train/multiruns/<sweep>")
    runs, skipped = [], []
    for metrics in sorted(directory.rglob("csv/metrics.csv"), key=_job_order):
        run = read_run(metrics.parent.parent)
        (runs.append(run) if run is not None else skipped.append(str(metrics.parent.parent)))
    skipped += [str(p.parent) for p in sorted(directory.rglob("FAILED")) if str(p.parent) not in skipped]
    if not runs:
        raise ConfigError(
            f"no finished runs under {directory}: expected job folders with csv/metrics.csv holding val/mIoU "
            "(made by `make sweep`; the csv logger must be on)"
        )
    return runs, skipped


def _job_order(metrics: Path) -> tuple[int, str]:
    """Jobs in launch order: Hydra names them ``<job number>_<run name>``."""
    prefix = metrics.parent.parent.name.split("_", 1)[0]
    return (int(prefix) if prefix.isdigit() else 1 << 30, str(metrics))


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


def write_outputs(runs: list[Run], summary: dict, out: Path) -> dict[str, Path]:
    """Write the Markdown and CSV tables, ``runs.json`` and the two plots into ``out``."""
    from segloss.compare_plots import plot_curves, plot_iou_by_class

    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("compare.md", "compare.csv", "runs.json")}
    paths["compare.md"].write_text(markdown_table(summary))
    with paths["compare.csv"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["loss", "seeds"] + [f"{c}_{s}" for c in summary["columns"] for s in ("mean", "std")])
        for loss in summary["losses"]:
            values = [v for c in summary["columns"] for v in summary["stats"][loss][c]]
            writer.writerow([loss, summary["seeds"][loss], *(f"{v:.6f}" for v in values)])
    paths["runs.json"].write_text(json.dumps([asdict(run) for run in runs], indent=1))
    paths["iou_by_class.png"] = plot_iou_by_class(summary, out / "iou_by_class.png")
    paths["miou_curves.png"] = plot_curves(runs, out / "miou_curves.png")
    return paths


def latest_sweep(root: Path) -> Path:
    sweeps = sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []
    if not sweeps:
        raise ConfigError(f"no sweeps under {root}; run `make sweep` first or give DIR=…")
    return max(sweeps, key=lambda p: p.stat().st_mtime)


def main(argv: list[str] | None = None) -> dict:
    from segloss.compare_plots import print_table
    from segloss.utils.config import PROJECT_ROOT, report_user_errors

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", nargs="?", help="sweep directory (default: the newest under logs/train/multiruns)")
    parser.add_argument("--out", help="output folder (default: DIR/compare)")
    args = parser.parse_args(argv)
    with report_user_errors():
        directory = Path(args.dir) if args.dir else latest_sweep(Path(PROJECT_ROOT) / "logs" / "train" / "multiruns")
        runs, skipped = load_runs(directory)
        summary = summarise(runs)
        print_table(summary, f"{directory.name}: {len(runs)} runs")
        for path in skipped:
            print(f"skipped (failed or no validation): {path}")
        paths = write_outputs(runs, summary, Path(args.out) if args.out else directory / "compare")
        print("written: " + ", ".join(str(p) for p in paths.values()))
        return summary


if __name__ == "__main__":
    main()
