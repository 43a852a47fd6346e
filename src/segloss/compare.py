"""Compare the runs of a sweep: ``python -m segloss.compare [DIR] [--out OUT]`` (``make compare DIR=…``).

Reads the run directories under ``DIR`` (each job of ``make sweep``; :mod:`segloss.comparison.runs`, no
W&B needed). Per loss it reports the mean ± sample standard deviation (n − 1) over seeds of the best mIoU
and of each class's IoU at the best epoch, and the number of seeds; the best mean of each column is
highlighted. Classes with no IoU in any run (absent from the validation split) are left out. Runs that
failed (a ``FAILED`` file) or never validated are listed and skipped.

Outputs in ``OUT`` (default ``DIR/compare``): ``compare.md``, ``compare.csv``, ``runs.json`` (the per-run
numbers, which :func:`segloss.comparison.runs.load_runs` reads back in place of a sweep),
``iou_by_class.png`` (per-class IoU grouped by loss, error bars = std over seeds) and ``miou_curves.png``
(validation mIoU per epoch, mean with the min–max band over seeds).
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import asdict
from pathlib import Path

from segloss.comparison.runs import Run, latest_sweep, load_runs
from segloss.comparison.summary import markdown_table, summarise


def write_outputs(runs: list[Run], summary: dict, out: Path) -> dict[str, Path]:
    """Write the Markdown and CSV tables, ``runs.json`` and the two plots into ``out``."""
    from segloss.comparison.render import plot_curves, plot_iou_by_class

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


def main(argv: list[str] | None = None) -> dict:
    from segloss.comparison.render import print_table
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
