"""Compare the runs of a sweep: ``python -m segloss.compare [DIR] [--baseline LOSS] [--plan POINTS]`` (make compare).

Reads the job directories under ``DIR`` (:mod:`segloss.comparison.runs`, no W&B needed) and counts only
finished runs (a ``COMPLETED`` marker, or a last epoch equal to the planned one); failed, killed, never
validated and repeated runs are listed per folder with the reason. Runs whose configs differ in anything
but the loss and the seed are compared in separate groups. Per loss: the number of seeds, the mean over
seeds of the best mIoU and of each class's IoU at the best epoch (best mean in bold). Where the runs stored
their per-image counts (``per_image_val.npz``, written by every training): each mean's 95 % interval over
seeds × images, the difference in mIoU to the baseline (``--baseline``, default the first loss) with its
simultaneous interval, Holm-adjusted p and ``*`` when real, the minimum detectable difference, and whether
each loss is shown worse than another (:mod:`segloss.comparison.significance`). The training run is the unit: a
test needs at least three seeds of each loss. Boundary IoU, recall, small-object recall, ECE and NLL get the
same intervals from the per-image quality counts (older runs: ``make rescore``).

``--plan POINTS`` adds, per comparison, how many seeds per loss would detect a difference of POINTS mIoU
points with 80 % power at the table's corrected level, from the variance components of these runs.

Outputs in ``OUT`` (default ``DIR/compare``; one subfolder per group when there are several):
``compare.md``, ``compare.csv``, ``runs.json`` (the counted runs, which
:func:`segloss.comparison.runs.load_runs` reads back in place of a sweep, with the per-image counts copied to
``per_image/``), ``left_out.txt``, ``plan.md`` (with ``--plan``), ``iou_by_class.png`` and ``miou_curves.png``.
``--wandb`` also logs the table to a W&B run (offline unless ``WANDB_MODE`` says otherwise).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from segloss.comparison import significance
from segloss.comparison.groups import group_runs, kept_setting
from segloss.comparison.runs import LeftOut, Run, latest_sweep, load_runs
from segloss.comparison.summary import add_statistics, summarise
from segloss.comparison.table import csv_rows, markdown_table
from segloss.utils.arguments import OneLineParser, significance_level


def write_outputs(runs: list[Run], summary: dict, out: Path, left_out: list[LeftOut] = ()) -> dict[str, Path]:
    """Write the Markdown and CSV tables, ``runs.json`` (+ ``per_image/``), ``left_out.txt`` and the plots."""
    from segloss.comparison.render import plot_curves, plot_iou_by_class

    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("compare.md", "compare.csv", "runs.json")}
    paths["compare.md"].write_text(markdown_table(summary))
    head, rows = csv_rows(summary)
    with paths["compare.csv"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(head)
        writer.writerows(
            [["" if v is None else f"{v:.6f}" if isinstance(v, float) else v for v in row] for row in rows]
        )
    records = []
    for i, run in enumerate(runs):
        record = {**asdict(run), "setting": kept_setting(run.setting)}  # not where files were, nor how fast
        if run.per_image and Path(run.per_image).is_file():  # copied, so the folder stands on its own
            name = f"per_image/{i:03d}_{re.sub(r'[^A-Za-z0-9_.=-]+', '_', run.loss)}_s{run.seed}.npz"
            (out / "per_image").mkdir(exist_ok=True)
            if Path(run.per_image).resolve() != (out / name).resolve():
                shutil.copyfile(run.per_image, out / name)
            record["per_image"] = name
        records.append(record)
    paths["runs.json"].write_text(json.dumps(records, indent=1, default=str))
    (out / "left_out.txt").unlink(missing_ok=True)
    if left_out:
        paths["left_out.txt"] = out / "left_out.txt"
        paths["left_out.txt"].write_text("".join(f"{x.path}\t{x.reason}\n" for x in left_out))
    paths["iou_by_class.png"] = plot_iou_by_class(summary, out / "iou_by_class.png")
    paths["miou_curves.png"] = plot_curves(runs, out / "miou_curves.png")
    return paths


def plan_table(summary: dict, points: float) -> str:
    """Markdown: per comparison with the baseline, the seeds per loss that detect ``points`` of mIoU with 80 %
    power at the table's corrected level, from these runs' variance components."""
    family = summary["vs_baseline"]
    level = summary["alpha"] / max(len(family), 1)
    lines = [f"Seeds per loss to detect a difference of {points:g} mIoU points vs {summary['baseline']} with 80 % "
             f"power at α = {level:.4f} ({summary['alpha']:g} over {len(family)} comparisons, Holm's first step), "
             f"from these runs' variance components:", "",
             "| loss | Δ now | seeds now | MDD now | seeds needed | MDD with unlimited seeds |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for loss, result in family.items():
        found = significance.plan(result, points / 100, level)
        seeds_now = result["seeds"] if isinstance(result["seeds"], int) else "/".join(map(str, result["seeds"]))
        needed = str(found["seeds"]) if found["seeds"] is not None else "not reachable with these images"
        lines.append(f"| {loss} | {100 * result['delta']:+.1f} | {seeds_now} | {100 * found['mdd_now']:.1f} | "
                     f"{needed} | {100 * found['floor']:.1f} |")  # fmt: skip
    for loss, why in summary.get("untested", {}).items():
        lines.append(f"| {loss} | — | — | — | n/a: {why} | — |")
    lines += ["", "The image × loss variance does not shrink with seeds: below the last column only more "
              "validation images help."]  # fmt: skip
    return "\n".join(lines) + "\n"


def log_to_wandb(summary: dict, name: str, out: Path) -> None:
    """The comparison table as a ``wandb.Table`` in a run of its own (job_type ``compare``)."""
    import wandb

    head, rows = csv_rows(summary)
    run = wandb.init(project="segloss", job_type="compare", name=f"compare-{name}", dir=str(out), reinit=True)
    run.log({"compare": wandb.Table(columns=head, data=rows)})
    run.finish()


def report_folders(directory: Path, runs: list[Run], left_out: list[LeftOut]) -> list[str]:
    """Per folder of job directories: how many runs count, how many are left out, and why."""

    def folder(path: str) -> str:
        parent = Path(path).parent
        return str(parent.relative_to(directory)) if parent.is_relative_to(directory) else str(parent)

    counted, dropped = Counter(folder(run.path) for run in runs), Counter(folder(x.path) for x in left_out)
    lines = []
    for name in sorted(set(counted) | set(dropped)):
        lines.append(f"{name}: {counted[name]} runs counted, {dropped[name]} left out")
        lines += [f"  left out {Path(x.path).name}: {x.reason}" for x in left_out if folder(x.path) == name]
    return lines


def _points(text: str) -> float:
    value = float(text)
    if not 0 < value < 100:
        raise argparse.ArgumentTypeError(f"{text} is not a difference in mIoU points in (0, 100)")
    return value


def main(argv: list[str] | None = None) -> dict:
    from segloss.comparison.render import print_table
    from segloss.utils.config import PROJECT_ROOT, report_user_errors

    parser = OneLineParser(prog="segloss compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", nargs="?", help="sweep directory (default: the newest under logs/train/multiruns)")
    parser.add_argument("--out", help="output folder (default: DIR/compare)")
    parser.add_argument("--baseline", help="the loss the others are tested against (default: the first)")
    parser.add_argument(
        "--alpha", type=significance_level, default=significance.ALPHA, help="family-wise error rate (default 0.05)"
    )
    parser.add_argument("--plan", type=_points, metavar="POINTS", help="seeds needed to detect POINTS of mIoU")
    parser.add_argument("--ignore", action="append", default=[], metavar="KEY",
                        help="a config key whose values do not split the runs into groups (repeatable)")  # fmt: skip
    parser.add_argument("--wandb", action="store_true", help="also log the table to W&B")
    args = parser.parse_args(argv)
    with report_user_errors():
        directory = Path(args.dir) if args.dir else latest_sweep(Path(PROJECT_ROOT) / "logs" / "train" / "multiruns")
        runs, left_out = load_runs(directory)
        groups, repeated = group_runs(runs, tuple(args.ignore))
        left_out = left_out + repeated
        counted = [run for _, members in groups for run in members]
        for line in report_folders(directory, counted, left_out):
            print(line)
        out_root = Path(args.out) if args.out else directory / "compare"
        summaries = {}
        for setting, members in groups:
            label = ", ".join(f"{k}={v}" for k, v in setting.items())
            summary = add_statistics(summarise(members), members, args.baseline, args.alpha)
            print_table(summary, f"{directory.name}{' — ' + label if label else ''}: {len(members)} runs")
            out = out_root / _slug(label) if len(groups) > 1 else out_root
            paths = write_outputs(members, summary, out, [] if len(groups) > 1 else left_out)
            if args.plan is not None and summary["vs_baseline"]:
                paths["plan.md"] = out / "plan.md"
                paths["plan.md"].write_text(plan_table(summary, args.plan))
                print(paths["plan.md"].read_text())
            elif args.plan is not None:
                why = "; ".join(sorted(set(summary["untested"].values()))) or "no per-image counts"
                print(f"--plan: no comparison here can be planned ({why})")
            if args.wandb:
                log_to_wandb(summary, directory.name, out)
            print("written: " + ", ".join(str(p) for p in paths.values()))
            summaries[label] = summary
        if len(groups) > 1:
            (out_root / "left_out.txt").write_text("".join(f"{x.path}\t{x.reason}\n" for x in left_out))
        return summaries[""] if len(groups) == 1 else summaries


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,-]+", "_", label)[:120] or "all"


if __name__ == "__main__":
    main()
