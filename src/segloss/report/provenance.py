"""What produced the runs: their commands, config hashes, and the environment (what the runs recorded of it).

* **Command of a run**: ``python -m segloss.train`` with the overrides Hydra stored in the job's
  ``.hydra/overrides.yaml`` (what was typed, or what the sweep gave that job).
* **Command of a sweep**: ``python -m segloss.train --multirun`` with the overrides of the ``multirun.yaml`` that
  Hydra writes into the sweep folder (the nearest one above the job folder): its ``hydra.overrides.hydra``
  (``hydra.sweep.dir=…``; ``hydra.mode=MULTIRUN`` becomes ``--multirun``) and ``hydra.overrides.task``.
* **Config hash**: sha256 of the run's resolved config (``config.yaml``, flattened) without the loss, the seed and
  the keys that ``make compare`` does not count as part of the experiment — where files go, how fast and on what
  hardware it ran, what was logged (:data:`segloss.comparison.groups.IGNORED`) — written as sorted JSON. Runs of
  one setting share it, whatever their loss, seed or folder; it reads the same from a sweep and from
  ``runs.json``. The first :data:`HASH_CHARS` hex digits are shown.
* **Environment**: what each run recorded in ``environment.json`` (:mod:`segloss.utils.environment`: command,
  segloss commit, package versions, CPU, GPUs, precision, processes; one record per start of the training),
  grouped into the distinct environments with how many runs used each (:func:`recorded_environments`); runs
  trained before that file existed store only Hydra's version (``.hydra/hydra.yaml``) and when they finished
  (``COMPLETED``). :func:`this_process` describes the process that builds the report, labelled as such.

Run folders are data: YAML is read with ``yaml.safe_load`` and nothing in them is executed.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from segloss.comparison.groups import kept_setting
from segloss.comparison.runs import Run
from segloss.utils.environment import cpu_model, package_versions, read_environment

HASH_CHARS = 12
SHOWN_PACKAGES = ("segloss", "torch", "lightning", "torchmetrics", "segmentation-models-pytorch", "numpy")


@dataclass
class RunRecord:
    """One run's provenance: folder, loss, seed, the command that trained it (None if not stored), its config
    hash, Hydra version and when it finished."""

    path: str
    loss: str
    seed: int
    command: str | None
    config_hash: str
    hydra_version: str | None
    finished: str


@dataclass
class Provenance:
    """One group's provenance: its runs, the sweep commands (sweep folder, command, runs counted from it), the
    config hashes with how many runs share each, and the settings all its runs share."""

    runs: list[RunRecord]
    sweeps: list[tuple[str, str, int]] = field(default_factory=list)
    hashes: list[tuple[str, int]] = field(default_factory=list)
    shared: dict[str, object] = field(default_factory=dict)


def _yaml(path: Path) -> object:
    """The YAML at ``path``, or None if it is missing or unreadable (provenance is shown as far as it is stored)."""
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def _quoted(overrides: list) -> str:
    return " ".join(shlex.quote(str(item)) for item in overrides)


def run_command(run_dir: Path) -> str | None:
    """``python -m segloss.train <overrides>`` from the job's ``.hydra/overrides.yaml``; None without it."""
    overrides = _yaml(run_dir / ".hydra" / "overrides.yaml")
    if not isinstance(overrides, list):
        return None
    return ("python -m segloss.train " + _quoted(overrides)).strip()


def sweep_command(multirun: Path) -> str | None:
    """``python -m segloss.train --multirun <overrides>`` from a sweep's ``multirun.yaml``; None if unreadable."""
    found = _yaml(multirun)
    overrides = ((found or {}).get("hydra") or {}).get("overrides") if isinstance(found, dict) else None
    if not isinstance(overrides, dict):
        return None
    own = [str(o) for o in overrides.get("hydra") or [] if str(o) != "hydra.mode=MULTIRUN"]
    task = [str(o) for o in overrides.get("task") or []]
    return "python -m segloss.train --multirun " + _quoted([*own, *task])


def _multirun_file(run_dir: Path, root: Path) -> Path | None:
    """The nearest ``multirun.yaml`` in the job folder's parents, not above ``root`` (the report's folder)."""
    root = root.resolve()
    for folder in run_dir.resolve().parents:
        if (folder / "multirun.yaml").is_file():
            return folder / "multirun.yaml"
        if folder == root:
            return None
    return None


def config_hash(run: Run) -> str:
    """sha256 (hex) of the run's setting without loss, seed and the ignored keys (module docstring)."""
    text = json.dumps(kept_setting(run.setting), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def hydra_version(run_dir: Path) -> str | None:
    found = _yaml(run_dir / ".hydra" / "hydra.yaml")
    runtime = ((found.get("hydra") or {}).get("runtime") or {}) if isinstance(found, dict) else {}
    version = runtime.get("version") if isinstance(runtime, dict) else None
    return str(version) if version is not None else None


def _shown(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def collect(runs: list[Run], root: Path) -> Provenance:
    """The provenance of one group's runs (module docstring); ``root``: the folder the report was asked for."""
    records, sweeps = [], Counter()
    for run in runs:
        run_dir = Path(run.path)
        stored = run_dir.is_dir()
        records.append(RunRecord(
            path=_shown(run_dir, root), loss=run.loss, seed=run.seed,
            command=run_command(run_dir) if stored else None, config_hash=config_hash(run),
            hydra_version=hydra_version(run_dir) if stored else None, finished=run.finished,
        ))  # fmt: skip
        multirun = _multirun_file(run_dir, root) if stored else None
        if multirun is not None:
            sweeps[multirun] += 1
    sweep_rows = []
    for multirun, count in sorted(sweeps.items(), key=lambda item: str(item[0])):
        command = sweep_command(multirun)
        if command is not None:
            sweep_rows.append((_shown(multirun.parent, root), command, count))
    hashes = Counter(record.config_hash for record in records)
    settings = [kept_setting(run.setting) for run in runs]
    shared = {}
    if settings:
        first = settings[0]
        shared = {
            key: value
            for key, value in sorted(first.items())
            if all(json.dumps(s.get(key), default=str) == json.dumps(value, default=str) for s in settings)
        }
    return Provenance(records, sweep_rows, hashes.most_common(), shared)


def _memory() -> str | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gpus() -> str:
    """The NVIDIA GPUs ``nvidia-smi -L`` lists (without their UUIDs), or why none are given."""
    if shutil.which("nvidia-smi") is None:
        return "none found (no nvidia-smi)"
    try:
        found = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown (nvidia-smi failed)"
    names = [line.split(" (UUID")[0] for line in found.stdout.splitlines() if line.strip()]
    return "; ".join(names) or "none listed by nvidia-smi"


def this_process() -> tuple[dict[str, str], dict[str, str]]:
    """``(machine, package versions)`` of the process building the report: OS, CPU, cores, memory, GPUs, Python;
    the versions of :data:`PACKAGES` installed here."""
    machine = {
        "OS": platform.platform(),
        "CPU": cpu_model(),
        "logical cores": str(os.cpu_count()),
        "memory": _memory() or "unknown",
        "GPUs": _gpus(),
        "Python": f"{platform.python_version()} ({platform.python_implementation()})",
    }
    return machine, {name: version or "not installed" for name, version in package_versions().items()}


def environment_row(record: dict) -> tuple[str, ...]:
    """One ``environment.json`` record as the cells the page shows (what decides the numbers, not when)."""
    packages = record.get("packages") if isinstance(record.get("packages"), dict) else {}
    git = record.get("git") if isinstance(record.get("git"), dict) else None
    commit = f"{str(git.get('commit', ''))[:10]}{' (uncommitted changes)' if git.get('dirty') else ''}" if git else "—"
    gpus = record.get("gpus") if isinstance(record.get("gpus"), list) else []
    return (
        commit,
        "; ".join(f"{name} {packages.get(name) or '—'}" for name in SHOWN_PACKAGES),
        f"{record.get('cpu', '—')} ×{record.get('cpu_count', '?')}",
        ", ".join(map(str, gpus)) or "none",
        f"{record.get('precision', '—')}, {record.get('processes', '—')} process(es)",
    )


def recorded_environments(runs: list[Run]) -> tuple[list[tuple[tuple[str, ...], int]], int]:
    """``([(environment row, runs that used it)], runs without a record)``: the distinct environments of the
    runs' ``environment.json`` files (a resumed run counts once per distinct environment it ran in)."""
    counts: Counter = Counter()
    missing = 0
    for run in runs:
        records = read_environment(Path(run.path)) if Path(run.path).is_dir() else []
        if not records:
            missing += 1
        for row in dict.fromkeys(environment_row(record) for record in records):
            counts[row] += 1
    return counts.most_common(), missing
