"""The runs of a sweep: one :class:`Run` per job directory of ``make sweep``.

A job directory holds ``config.yaml``, ``.hydra/hydra.yaml`` and the CSV logger's ``csv/metrics.csv``. Per
run the best validation epoch (by the run's ``optimized_metric``, ``val/mIoU`` by default — the epoch of its
checkpoint) and that epoch's mIoU and per-class IoU are taken, plus the ``val/mIoU`` curve and the path of
``per_image_val.npz`` (that epoch's per-image counts, for the intervals and paired tests of
:mod:`segloss.comparison.stats`). Runs that failed (a ``FAILED`` file) or never validated are skipped and
listed.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from segloss.errors import ConfigError

PER_IMAGE = "per_image_val.npz"  # written by segloss.train for the best epoch
# Scalar validation scores read at the best epoch besides mIoU (segloss.metrics.quality; lower is better for
# the calibration errors).
SCORES = ("mBIoU", "mRecall", "mSmallRecall", "ECE", "NLL")
LOWER_IS_BETTER = ("ECE", "NLL")


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
    per_image: str = ""  # per_image_val.npz of the best epoch (segloss.metrics.per_image), "" if none
    scores: dict[str, float] = field(default_factory=dict)  # SCORES at the best epoch that the run logged


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
    metric = str(config.get("optimized_metric", "val/mIoU"))  # the run's best epoch, as its checkpoint
    scored = [row for row in rows if not math.isnan(_float(row.get(metric)))] or rows
    best = max(scored, key=lambda row: _float(row.get(metric)) if metric in row else _float(row["val/mIoU"]))
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
        per_image=str(run_dir / PER_IMAGE) if (run_dir / PER_IMAGE).is_file() else "",
        scores={name: _float(best[f"val/{name}"]) for name in SCORES if best.get(f"val/{name}") not in (None, "")},
    )


def load_runs(directory: str | Path) -> tuple[list[Run], list[str]]:
    """``(runs, skipped)`` of a sweep directory (searched recursively for ``csv/metrics.csv``), or of a
    folder holding the ``runs.json`` written by :func:`write_outputs`."""
    directory = Path(directory).expanduser()
    if (directory / "runs.json").is_file() and not any(directory.rglob("csv/metrics.csv")):
        runs = [
            Run(**{**r, "curve": [tuple(p) for p in r["curve"]]})
            for r in json.loads((directory / "runs.json").read_text())
        ]
        for run in runs:  # per-image counts copied next to runs.json (relative names)
            if run.per_image and not Path(run.per_image).is_absolute():
                run.per_image = str(directory / run.per_image)
        return runs, []
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


def latest_sweep(root: Path) -> Path:
    sweeps = sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []
    if not sweeps:
        raise ConfigError(f"no sweeps under {root}; run `make sweep` first or give DIR=…")
    return max(sweeps, key=lambda p: p.stat().st_mtime)
