"""What a run was made with: ``environment.json`` in the run directory (read by ``make report``).

One record per start of the training (a resumed run appends one, since it may continue on another machine):
the command line, the segloss version and git commit (with whether the work tree had uncommitted changes), the
versions of Python and the packages that decide the numbers, the platform, CPU model and count, the GPUs, and
the Trainer's precision and number of processes. Written by rank 0, atomically; an unreadable old file is
kept aside as ``environment.json.unreadable`` rather than overwritten.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

ENVIRONMENT = "environment.json"
PACKAGES = ("segloss", "torch", "torchvision", "lightning", "torchmetrics", "segmentation-models-pytorch",
            "timm", "hydra-core", "numpy", "scipy", "pillow", "monai")  # fmt: skip


def package_versions() -> dict[str, str | None]:
    """Installed version of each of :data:`PACKAGES` (None where absent)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_state(folder: Path) -> dict[str, object] | None:
    """``{"commit", "dirty"}`` of the git work tree holding ``folder`` (a clone), None outside one."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                                capture_output=True, text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def describe(trainer=None) -> dict:
    """This process's environment as plain data (see the module docstring)."""
    import torch

    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    record = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": [Path(sys.orig_argv[0]).name, *sys.orig_argv[1:]],  # as typed: python -m segloss.train …
        "python": platform.python_version(),
        "packages": package_versions(),
        "git": git_state(Path(__file__).resolve().parent),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpus": gpus,
    }
    if trainer is not None:
        record.update(precision=str(trainer.precision), processes=int(trainer.world_size))
    return record


def record_environment(run_dir: Path, trainer=None) -> Path:
    """Append this start's :func:`describe` to ``run_dir/environment.json`` (atomic replace)."""
    path = Path(run_dir) / ENVIRONMENT
    records = []
    if path.exists():
        try:
            records = json.loads(path.read_text())
            if not isinstance(records, list):
                raise ValueError("not a list")
        except (OSError, ValueError):
            os.replace(path, path.with_name(f"{ENVIRONMENT}.unreadable"))
            records = []
    records.append(describe(trainer))
    partial = path.with_name(f".{ENVIRONMENT}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(records, indent=1) + "\n")
    os.replace(partial, path)
    return path


def read_environment(run_dir: Path) -> list[dict]:
    """The records of ``run_dir/environment.json``; [] where there is none or it cannot be read."""
    try:
        records = json.loads((Path(run_dir) / ENVIRONMENT).read_text())
    except (OSError, ValueError):
        return []
    return [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []
