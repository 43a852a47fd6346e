"""Re-score a sweep's best checkpoints: ``python -m segloss.rescore DIR [--dry-run]`` (``make rescore``).

Runs trained before the per-image quality counts existed (Boundary IoU bands, calibration bins, small
objects: :mod:`segloss.metrics.quality`) stored only TP/FP/FN in ``per_image_val.npz``, so ``make compare``
can give intervals for mIoU but not for those scores. This evaluates each run's best checkpoint
(``checkpoints/epoch_<best epoch>.ckpt``) on the validation split with ``segloss.eval`` under the run's own
configuration (its experiment and command-line overrides, with ``metrics`` as the run had it) and writes
the new counts into ``per_image_val.npz`` — **only if** the re-scored TP/FP/FN equal the stored ones image
for image, which proves that the new numbers belong to the same predictions. A run whose counts differ
(another machine, another library version) is reported and left as it was; nothing is overwritten that is
not reproduced, and the stored file is replaced atomically. Runs that already hold every count are skipped.

**A run folder is data, not code.** Its ``.hydra/`` files are read with ``yaml.safe_load`` and its
command-line overrides are replayed only when they set values or pick config groups of this project:
an override that names an instantiation key (``_target_``, ``_partial_``, ``_args_``, …) anywhere —
``model.net={_target_: torch.load, …}`` would run any callable — or a config group path with ``..``, is
refused and the run left as it was (``REFUSED``). A folder that cannot be read is reported (``FAILED``,
naming the file) and the next run goes on (``docs/security.md``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import yaml

from segloss.comparison.runs import PER_IMAGE, Run, read_run
from segloss.errors import ConfigError

# Overrides of a training that an evaluation must not take (logging, callbacks and Hydra's own).
TRAINING_ONLY = ("logger", "callbacks", "hydra", "ckpt_path", "print_config", "trainer.max_epochs", "resume")
COUNTS = ("tp", "fp", "fn")
# Hydra's instantiation keys: an override that carries one could make segloss.eval call anything.
INSTANTIATION_KEYS = ("_target_", "_partial_", "_args_", "_recursive_", "_convert_")


class Refused(Exception):
    """A run folder asks for something rescore does not do on a stranger's say-so (the message says what)."""


def _read_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise Refused(
            f"FAILED: no {path.relative_to(path.parent.parent)} (not a run folder of segloss.train)"
        ) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise Refused(f"FAILED: cannot read {path}: {str(err).splitlines()[0]}") from None


def checked_overrides(overrides: object, source: Path) -> list[str]:
    """The overrides of a run folder that rescore may replay: plain strings that name no instantiation key
    and no config path outside the project's config groups; :class:`Refused` otherwise."""
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise Refused(f"FAILED: {source} is not a list of overrides")
    for override in overrides:
        if any(key in override for key in INSTANTIATION_KEYS):
            raise Refused(f"REFUSED: {source} has {override!r}, which names an instantiation key: replaying it "
                          "could run any code; re-score such a run by hand if you trust it")  # fmt: skip
        key, _, value = override.partition("=")
        group_choice = "." not in key.lstrip("+~").split("@")[0]  # model=…, +model/net@x.y=…: configs/<group>/
        if group_choice and (".." in value or value.startswith("/")):
            raise Refused(f"REFUSED: {source} has {override!r}, a config path outside this project's configs")
    return overrides


def eval_command(run_dir: Path, checkpoint: Path, out: Path) -> list[str]:
    """The ``segloss.eval`` command that scores ``checkpoint`` as the run in ``run_dir`` was configured;
    :class:`Refused` when the folder cannot be read or asks for code to run (module docstring)."""
    hydra = _read_yaml(run_dir / ".hydra" / "hydra.yaml")
    overrides = checked_overrides(_read_yaml(run_dir / ".hydra" / "overrides.yaml") or [],
                                  run_dir / ".hydra" / "overrides.yaml")  # fmt: skip
    kept = [o for o in overrides if not _training_only(o)]
    try:
        experiment = hydra["hydra"]["runtime"]["choices"].get("experiment")
    except (TypeError, KeyError, AttributeError):
        raise Refused(f"FAILED: {run_dir / '.hydra' / 'hydra.yaml'} holds no hydra.runtime.choices") from None
    if experiment is not None:
        checked_overrides([f"experiment={experiment}"], run_dir / ".hydra" / "hydra.yaml")
    args = [f"experiment={experiment}"] if experiment and not any(o.startswith("experiment=") for o in kept) else []
    return [sys.executable, "-m", "segloss.eval", *args, *kept, f"ckpt_path={checkpoint}", "split=val",
            "print_config=false", "callbacks.rich_progress_bar=null", f"hydra.run.dir={out}"]  # fmt: skip


def _training_only(override: str) -> bool:
    key = override.split("=", 1)[0].lstrip("+~")
    return any(key == name or key.startswith(f"{name}.") for name in TRAINING_ONLY)


def best_checkpoint(run_dir: Path) -> Path | None:
    try:
        run = read_run(run_dir)
    except ConfigError as err:  # an unreadable config.yaml or metrics.csv: named by the message
        raise Refused(f"FAILED: {err}") from None
    if not isinstance(run, Run):
        return None
    path = run_dir / "checkpoints" / f"epoch_{run.best_epoch:03d}.ckpt"
    return path if path.is_file() else None


def rescore_run(run_dir: Path, dry_run: bool = False) -> str:
    """Re-score one run; returns a one-line report."""
    stored_path = run_dir / PER_IMAGE
    if not stored_path.is_file():
        return f"skipped {run_dir}: no {PER_IMAGE} to complete"
    try:
        with np.load(stored_path, allow_pickle=False) as stored:
            stored = dict(stored)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        return f"FAILED {run_dir}: cannot read {stored_path}: {err}; left as it was"
    if "band_inter" in stored or "calib_count" in stored:
        return f"skipped {run_dir}: already holds the quality counts"
    try:
        checkpoint = best_checkpoint(run_dir)
    except Refused as why:
        return f"FAILED {run_dir}: {str(why).split(': ', 1)[1]}; left as it was"
    if checkpoint is None:
        return f"skipped {run_dir}: no checkpoint of its best epoch under checkpoints/"
    with tempfile.TemporaryDirectory(prefix="rescore-", dir=run_dir) as tmp:
        try:
            command = eval_command(run_dir, checkpoint, Path(tmp))
        except Refused as why:
            verdict, reason = str(why).split(": ", 1)
            return f"{verdict} {run_dir}: {reason}; left as it was"
        if dry_run:
            return " ".join(command)
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HYDRA_FULL_ERROR": "1"})
        fresh_path = Path(tmp) / "per_image_val.npz"
        if done.returncode != 0 or not fresh_path.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            return f"FAILED {run_dir}: segloss.eval exited {done.returncode} ({tail[0]}); left as it was"
        with np.load(fresh_path) as fresh:
            fresh = dict(fresh)
    order = {name: i for i, name in enumerate(fresh["names"].tolist())}
    if set(order) != set(stored["names"].tolist()):
        return f"MISMATCH {run_dir}: the re-scored images are not the stored ones; left as it was"
    rows = [order[name] for name in stored["names"].tolist()]
    for key in COUNTS:
        if not np.array_equal(fresh[key][rows], stored[key]):
            changed = int((fresh[key][rows] != stored[key]).any(1).sum())
            return f"MISMATCH {run_dir}: {key} differs on {changed} images (not the same predictions); left as it was"
    merged = dict(stored)
    merged.update({k: v[rows] for k, v in fresh.items() if k not in stored})
    partial = stored_path.with_name(stored_path.name + ".partial")
    with partial.open("wb") as handle:
        np.savez_compressed(handle, **merged)
    partial.replace(stored_path)
    added = sorted(k for k in merged if k not in stored)
    return f"rescored {run_dir}: TP/FP/FN reproduced on {len(rows)} images; added {', '.join(added)}"


def run_dirs(directory: Path) -> list[Path]:
    return sorted({p.parent for p in directory.rglob(PER_IMAGE)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="a sweep folder (searched recursively) or one run folder")
    parser.add_argument("--dry-run", action="store_true", help="print the eval commands, change nothing")
    args = parser.parse_args(argv)
    if not args.directory.is_dir():
        print(f"rescore: {args.directory} is not a folder; give DIR=logs/train/multiruns/<sweep>", file=sys.stderr)
        return 2
    dirs = run_dirs(args.directory)
    if not dirs:
        print(f"rescore: no runs with {PER_IMAGE} under {args.directory}", file=sys.stderr)
        return 2
    failed = 0
    for run_dir in dirs:
        line = rescore_run(run_dir, args.dry_run)
        failed += line.startswith(("FAILED", "MISMATCH", "REFUSED"))
        print(line, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
