"""Compare the runs of a sweep: ``python -m segloss.compare [DIR] [--out OUT] [--baseline LOSS]`` (``make compare``).

Reads the run directories under ``DIR`` (each job of ``make sweep``; :mod:`segloss.comparison.runs`, no
W&B needed). Per loss it reports the number of seeds and the mean over seeds of the best mIoU and of each
class's IoU at the best epoch; the best mean of each column is highlighted. Where the runs stored their
per-image counts (``per_image_val.npz``, written by every training) each mean gets its 95 % bootstrap
interval over seeds × images, and three columns test the differences (:mod:`segloss.comparison.stats`):
the paired difference in mIoU to the baseline (``--baseline``, default the first loss) with its interval,
its p-value (paired permutation test, Holm-corrected over the table) and whether each loss can be told
apart from the best one. Boundary IoU, recall, small-object recall, ECE and NLL get the same intervals from
the per-image quality counts stored beside TP/FP/FN (older runs: ``make rescore``). Without counts the table
falls back to mean ± standard deviation over seeds.
Classes with no IoU in any run (absent from the validation split) are left out. Runs that failed (a
``FAILED`` file) or never validated are listed and skipped.

Outputs in ``OUT`` (default ``DIR/compare``): ``compare.md``, ``compare.csv``, ``runs.json`` (the per-run
numbers, which :func:`segloss.comparison.runs.load_runs` reads back in place of a sweep, with the per-image
counts copied to ``per_image/``), ``iou_by_class.png`` (per-class IoU grouped by loss, error bars = the
intervals) and ``miou_curves.png`` (validation mIoU per epoch, mean with the min–max band over seeds).
``--wandb`` also logs the table to a W&B run (offline unless ``WANDB_MODE`` says otherwise).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
from dataclasses import asdict
from pathlib import Path

from segloss.comparison.runs import Run, latest_sweep, load_runs
from segloss.comparison.summary import add_statistics, best_mark, markdown_table, summarise


def write_outputs(runs: list[Run], summary: dict, out: Path) -> dict[str, Path]:
    """Write the Markdown and CSV tables, ``runs.json`` (+ ``per_image/``) and the two plots into ``out``."""
    from segloss.comparison.render import plot_curves, plot_iou_by_class

    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("compare.md", "compare.csv", "runs.json")}
    paths["compare.md"].write_text(markdown_table(summary))
    header, rows = table_rows(summary)
    with paths["compare.csv"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(
            [["" if v is None else f"{v:.6f}" if isinstance(v, float) else v for v in row] for row in rows]
        )
    records = []
    for i, run in enumerate(runs):
        record = asdict(run)
        if run.per_image and Path(run.per_image).is_file():  # copied, so the folder stands on its own
            name = f"per_image/{i:03d}_{run.loss}_s{run.seed}.npz"
            (out / "per_image").mkdir(exist_ok=True)
            if Path(run.per_image).resolve() != (out / name).resolve():
                shutil.copyfile(run.per_image, out / name)
            record["per_image"] = name
        records.append(record)
    paths["runs.json"].write_text(json.dumps(records, indent=1))
    paths["iou_by_class.png"] = plot_iou_by_class(summary, out / "iou_by_class.png")
    paths["miou_curves.png"] = plot_curves(runs, out / "miou_curves.png")
    return paths


def table_rows(summary: dict) -> tuple[list[str], list[list]]:
    """The CSV (and W&B) table: per loss and column mean, std and the interval; Δ to the baseline with its
    interval, p, Holm-adjusted p, and whether it is told apart from the best (None where not computed)."""
    columns = summary["columns"]
    header = ["loss", "seeds"] + [f"{c}_{s}" for c in columns for s in ("mean", "std", "ci_low", "ci_high")]
    header += [f"{name}_{s}" for name in summary.get("extra", []) for s in ("mean", "std", "ci_low", "ci_high")]
    header += ["delta_mIoU", "delta_low", "delta_high", "p", "p_holm", "vs_best"]
    rows = []
    for loss in summary["losses"]:
        intervals = summary.get("ci", {}).get(loss, {})
        values = []
        for column in columns:
            low, high = intervals.get(column, (math.nan, math.nan))
            values += [*summary["stats"][loss][column], low, high]
        for name in summary.get("extra", []):
            values += [*summary["stats"][loss][name], *intervals.get(name, (math.nan, math.nan))]
        test = summary.get("vs_baseline", {}).get(loss)
        if test is None:
            values += [math.nan] * 5
        else:
            values += [test["delta"], *test["interval"], test["p"], test["p_holm"]]
        mark = best_mark(summary.get("vs_best", {}).get(loss))
        rows.append([loss, summary["seeds"][loss], *(None if math.isnan(v) else float(v) for v in values), mark])
    return header, rows


def log_to_wandb(summary: dict, name: str, out: Path) -> None:
    """The comparison table as a ``wandb.Table`` in a run of its own (job_type ``compare``)."""
    import wandb

    header, rows = table_rows(summary)
    run = wandb.init(project="segloss", job_type="compare", name=f"compare-{name}", dir=str(out), reinit=True)
    run.log({"compare": wandb.Table(columns=header, data=rows)})
    run.finish()


def main(argv: list[str] | None = None) -> dict:
    from segloss.comparison.render import print_table
    from segloss.utils.config import PROJECT_ROOT, report_user_errors

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", nargs="?", help="sweep directory (default: the newest under logs/train/multiruns)")
    parser.add_argument("--out", help="output folder (default: DIR/compare)")
    parser.add_argument("--baseline", help="the loss the others are tested against (default: the first)")
    parser.add_argument("--draws", type=int, default=2000, help="bootstrap replicates and permutations")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resampling (same numbers every time)")
    parser.add_argument("--wandb", action="store_true", help="also log the table to W&B")
    args = parser.parse_args(argv)
    with report_user_errors():
        directory = Path(args.dir) if args.dir else latest_sweep(Path(PROJECT_ROOT) / "logs" / "train" / "multiruns")
        runs, skipped = load_runs(directory)
        summary = add_statistics(summarise(runs), runs, args.baseline, seed=args.seed, draws=args.draws)
        print_table(summary, f"{directory.name}: {len(runs)} runs")
        for path in skipped:
            print(f"skipped (failed or no validation): {path}")
        out = Path(args.out) if args.out else directory / "compare"
        paths = write_outputs(runs, summary, out)
        if args.wandb:
            log_to_wandb(summary, directory.name, out)
        print("written: " + ", ".join(str(p) for p in paths.values()))
        return summary


if __name__ == "__main__":
    main()
