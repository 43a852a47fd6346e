"""Resuming: ``resume=auto`` finds the checkpoint a training continues from; ``save_every_n_steps``
adds mid-epoch checkpoints; a resumed run's ``metrics.csv`` is rewound to its checkpoint.

Order of search, newest file first within each place:

1. the run's own ``<output_dir>`` — a requeued SLURM job or a re-run of the same sweep job keeps its
   run directory, so it finds its ``checkpoints/last.ckpt`` or the ``hpc_ckpt_<n>.ckpt`` Lightning
   saved on the requeue signal;
2. the latest earlier run of the same ``run_name`` under ``<log_dir>/<task_name>/runs`` (a plain
   ``make train EXP=… resume=auto`` after a crash gets a fresh time-stamped directory).

No checkpoint anywhere: the training starts from scratch (so ``resume=auto`` is safe to put in a job
that may or may not have run before).
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from segloss.errors import ConfigError
from segloss.utils.csv_logger import ResumableCSVLogger

PATTERNS = ("checkpoints/last*.ckpt", "hpc_ckpt_*.ckpt")


def _newest(run_dir: Path) -> Path | None:
    found = [path for pattern in PATTERNS for path in run_dir.glob(pattern) if path.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def find_resume_checkpoint(output_dir: Path, runs_dir: Path, run_name: str) -> Path | None:
    """The checkpoint to resume from (see the module docstring), or None."""
    own = _newest(output_dir)
    if own is not None:
        return own
    if not runs_dir.is_dir():
        return None
    earlier = [d for d in runs_dir.glob(f"*_{run_name}") if d.is_dir() and d.resolve() != output_dir.resolve()]
    candidates = [ckpt for d in earlier if (ckpt := _newest(d)) is not None]
    return max(candidates, key=lambda p: p.stat().st_mtime_ns) if candidates else None


def resolve_resume(resume, ckpt_path, output_dir: Path, runs_dir: Path, run_name: str) -> str | None:
    """The ``ckpt_path`` to give ``Trainer.fit``: the explicit one, the one ``resume=auto`` finds, or None."""
    if resume in (None, False, "none", "false"):
        return str(ckpt_path) if ckpt_path else None
    if resume != "auto":
        raise ConfigError(f"resume={resume!r}: use resume=auto, or ckpt_path=…/last.ckpt for a given checkpoint")
    if ckpt_path:
        raise ConfigError("give either resume=auto or ckpt_path=…, not both")
    found = find_resume_checkpoint(output_dir, runs_dir, run_name)
    return str(found) if found is not None else None


def step_checkpoint(cfg: DictConfig, output_dir: Path) -> list[ModelCheckpoint]:
    """With ``save_every_n_steps=N``: a checkpoint callback that refreshes ``last.ckpt`` every N steps.
    A separate callback, so the one that saves after each validation still does so at the same step."""
    every = cfg.get("save_every_n_steps")
    if not every:
        return []
    if int(every) < 1:
        raise ConfigError(f"save_every_n_steps={every}: give a positive number of steps, or null")
    options = {"save_top_k": 0, "save_last": True, "enable_version_counter": False}
    return [ModelCheckpoint(dirpath=output_dir / "checkpoints", every_n_train_steps=int(every), **options)]


def rewind_csv_logs(loggers: list, global_step: int) -> None:
    """Rows that a resumed run will log again (steps at or after the checkpoint's ``global_step``)
    leave ``metrics.csv``."""
    for logger in loggers:
        if isinstance(logger, ResumableCSVLogger):
            logger.resume_at(int(global_step))
