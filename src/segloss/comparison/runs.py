"""The runs of a sweep: one :class:`Run` per job directory of ``make sweep``, and only the ones that count.

A job directory holds ``config.yaml``, ``.hydra/hydra.yaml``, the CSV logger's ``csv/metrics.csv`` and, when
the training ran to its end, ``COMPLETED`` (written last by ``segloss.train``). Per run the best validation
epoch (by the run's ``optimized_metric``, ``val/mIoU`` by default — the epoch of its checkpoint) and that
epoch's mIoU and per-class IoU are taken, plus the ``val/mIoU`` curve and the path of ``per_image_val.npz``
(that epoch's per-image counts, for :mod:`segloss.comparison.significance`).

**What counts** (:func:`read_run`): a run that says it finished — its ``COMPLETED`` marker, or, for runs
older than the marker, a finished last epoch (a ``train/loss_epoch`` row) equal to the planned
``trainer.max_epochs`` — and that validated. A job that failed (``FAILED``), was killed (SIGKILL, OOM,
pre-emption: no marker, fewer epochs than planned), never validated, or repeats a (loss, seed) already
counted is a :class:`LeftOut` with the reason. A file that cannot be read is an error naming it.

Which runs are compared with which: :mod:`segloss.comparison.groups`.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from segloss.errors import ConfigError
from segloss.utils.markers import COMPLETED, FAILED
from segloss.utils.metric_registry import COMPARED

TAGS = ("loss.family",)  # loss config keys that describe the preset, not its settings (segloss.utils.loss_family)
PER_IMAGE = "per_image_val.npz"  # written by segloss.train for the best epoch
# Scalar validation scores read at the best epoch besides mIoU (segloss.metrics.quality; lower is better for
# the calibration errors).
SCORES = COMPARED  # the columns beside mIoU, from the one metric registry


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
    setting: dict[str, object] = field(default_factory=dict)  # the config but loss and seed, flattened
    loss_setting: dict[str, object] = field(default_factory=dict)  # the loss config, flattened
    finished: str = ""  # how it is known to have finished: "COMPLETED …" or "last epoch = planned"


@dataclass
class LeftOut:
    """A job directory that does not count, and why."""

    path: str
    reason: str


def _float(value: str | None) -> float:
    return float(value) if value not in (None, "") else math.nan


def _read_yaml(path: Path) -> dict:
    try:
        found = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read {path}: {str(err).splitlines()[0]}; repair or remove that run") from None
    if not isinstance(found, dict):
        raise ConfigError(f"{path} is not a YAML mapping (a run's config); repair or remove that run")
    return found


def _read_metrics(path: Path) -> list[dict]:
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        for row in rows:  # every epoch must be a number
            int(float(row.get("epoch") or 0))
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as err:
        raise ConfigError(f"cannot read {path}: {str(err).splitlines()[0]}; repair or remove that run") from None
    return rows


def flatten(tree: object, prefix: str = "") -> dict[str, object]:
    """``{"a.b.c": value}`` of a nested config (lists as tuples, so they compare and hash)."""
    if isinstance(tree, dict):
        out: dict[str, object] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(tree, list):
        return {prefix[:-1]: tuple(json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v for v in tree)}
    return {prefix[:-1]: tree}


def finished_epochs(rows: list[dict]) -> int:
    """Epochs that ended (a ``train/loss_epoch`` row is logged when an epoch ends), 0 if none."""
    ended = [int(float(row["epoch"])) for row in rows if row.get("train/loss_epoch") not in (None, "")]
    return max(ended) + 1 if ended else 0


def completion(run_dir: Path, config: dict, rows: list[dict]) -> tuple[str, str]:
    """``(how it finished, "")`` for a run that counts as finished, else ``("", why not)``."""
    marker = run_dir / COMPLETED
    if marker.is_file():
        try:
            record = json.loads(marker.read_text())
            stamp = str(record.get("finished", "")) if isinstance(record, dict) else ""
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise ConfigError(f"cannot read {marker}: {err}; segloss.train writes it as JSON when a training "
                              "finishes: remove it if that run did not finish") from None  # fmt: skip
        return f"COMPLETED {stamp}".strip(), ""
    planned = (config.get("trainer") or {}).get("max_epochs")
    done = finished_epochs(rows)
    if isinstance(planned, int) and planned > 0 and done >= planned:
        return "last epoch = planned (no COMPLETED marker: an older run)", ""
    planned_text = f"of {planned} planned" if isinstance(planned, int) and planned > 0 else "(no planned epoch count)"
    return "", f"incomplete: no {COMPLETED} marker and {done} epochs finished {planned_text} (killed, or still running)"


def read_run(run_dir: Path) -> Run | LeftOut:
    """The :class:`Run` of one job directory, or why it does not count (module docstring)."""
    metrics = run_dir / "csv" / "metrics.csv"
    if (run_dir / FAILED).exists():
        return LeftOut(str(run_dir), f"failed (traceback in {run_dir / FAILED})")
    if not metrics.is_file():
        return LeftOut(str(run_dir), "no csv/metrics.csv (killed before its first log, or logger without csv)")
    config = _read_yaml(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else {}
    all_rows = _read_metrics(metrics)
    finished, why = completion(run_dir, config, all_rows)
    if not finished:
        return LeftOut(str(run_dir), why)
    rows = [row for row in all_rows if row.get("val/mIoU") not in (None, "")]
    if not rows:
        return LeftOut(str(run_dir), "never validated (no val/mIoU in csv/metrics.csv)")
    choices = {}
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    if hydra_file.is_file():
        choices = ((_read_yaml(hydra_file).get("hydra") or {}).get("runtime") or {}).get("choices") or {}
    loss, model, data, *_ = (str(config.get("run_name", "?-?-?")).split("-") + ["?"] * 3)[:3]
    metric = str(config.get("optimized_metric", "val/mIoU"))  # the run's best epoch, as its checkpoint
    scored = [row for row in rows if not math.isnan(_float(row.get(metric)))] or rows
    best = max(scored, key=lambda row: _float(row.get(metric)) if metric in row else _float(row["val/mIoU"]))
    iou = {key[len("val/IoU/") :]: _float(value) for key, value in best.items() if key.startswith("val/IoU/")}
    flat = flatten(config)
    return Run(
        loss=str(choices.get("loss", loss)),
        seed=int(config.get("seed", -1)),
        model=str(choices.get("model", model)),
        data=str(choices.get("data", data)),
        best_miou=_float(best["val/mIoU"]),
        best_epoch=int(float(best["epoch"])),
        iou=iou,
        curve=[(int(float(row["epoch"])), _float(row["val/mIoU"])) for row in rows],
        path=str(run_dir),
        per_image=str(run_dir / PER_IMAGE) if (run_dir / PER_IMAGE).is_file() else "",
        scores={name: _float(best[f"val/{name}"]) for name in SCORES if best.get(f"val/{name}") not in (None, "")},
        setting={key: value for key, value in flat.items() if not key.startswith("loss.") and key != "loss"},
        loss_setting={key[5:]: value for key, value in flat.items() if key.startswith("loss.") and key not in TAGS},
        finished=finished,
    )


def load_runs(directory: str | Path) -> tuple[list[Run], list[LeftOut]]:
    """``(runs, left out)`` of a sweep directory (searched recursively for job folders: a ``csv/metrics.csv``,
    ``config.yaml`` or ``FAILED``), or of a folder holding the ``runs.json`` written by ``make compare``."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        what = "is not a folder" if directory.exists() else "does not exist"
        raise ConfigError(f"sweep directory {directory} {what}; give DIR=logs/train/multiruns/<sweep>")
    jobs = {p.parent.parent for p in directory.rglob("csv/metrics.csv")}
    jobs |= {p.parent for p in directory.rglob(FAILED)} | {p.parent for p in directory.rglob("config.yaml")}
    jobs = {job for job in jobs if (job / ".hydra").is_dir() or (job / "csv").is_dir() or (job / FAILED).exists()}
    if (directory / "runs.json").is_file() and not jobs:
        return _from_json(directory), []
    runs, left_out = [], []
    for job in sorted(jobs, key=_job_order):
        found = read_run(job)
        (runs if isinstance(found, Run) else left_out).append(found)
    if not runs:
        reasons = "; ".join(f"{Path(x.path).name}: {x.reason}" for x in left_out[:3])
        raise ConfigError(
            f"no finished runs under {directory}: expected job folders with csv/metrics.csv holding val/mIoU and "
            f"a {COMPLETED} marker (made by `make sweep`; the csv logger must be on)"
            + (f" — {reasons}" if reasons else "")
        )
    return runs, left_out


def _from_json(directory: Path) -> list[Run]:
    path = directory / "runs.json"
    try:
        records = json.loads(path.read_text())
        runs = [Run(**{**r, "curve": [tuple(p) for p in r["curve"]]}) for r in records]
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ConfigError(f"cannot read {path}: {err}; write it again with `make compare … --out`") from None
    for run in runs:  # per-image counts copied next to runs.json (relative names)
        if run.per_image and not Path(run.per_image).is_absolute():
            run.per_image = str(directory / run.per_image)
    return runs


def _job_order(job: Path) -> tuple[str, int, str]:
    """Jobs in launch order within each folder: Hydra names them ``<job number>_<run name>``."""
    prefix = job.name.split("_", 1)[0]
    return (str(job.parent), int(prefix) if prefix.isdigit() else 1 << 30, job.name)


def latest_sweep(root: Path) -> Path:
    sweeps = sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []
    if not sweeps:
        raise ConfigError(f"no sweeps under {root}; run `make sweep` first or give DIR=…")
    return max(sweeps, key=lambda p: p.stat().st_mtime)
