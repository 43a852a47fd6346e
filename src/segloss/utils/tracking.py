"""Experiment tracking: the loggers of a run (CSV always, W&B offline by default), started in one place.

* :func:`start_tracking` — the loggers of ``cfg.logger``, ready for the Trainer: none under
  ``fast_dev_run`` (a debug run leaves no metrics and no W&B run); the CSV file rewound to a resumed
  checkpoint; the (redacted) hyperparameters logged; a W&B logger that cannot start dropped with a
  warning; the W&B run id kept in the run directory.
* :class:`ResumableCSVLogger` — Lightning's ``CSVLogger`` removes an existing ``metrics.csv`` when its
  folder is reused, so a job requeued into its own run directory would lose the metrics logged before
  the interruption. This one keeps the file; :meth:`ResumableCSVLogger.resume_at` drops only the rows
  logged *after* the checkpoint (the resumed training logs those steps again), so the file reads as one
  uninterrupted run.
* W&B run ids (:data:`RUN_ID_FILE`), read by :mod:`segloss.utils.run_dir` when it completes a run's config.

Nothing here imports ``wandb`` at module level: without a :class:`WandbLogger` nothing W&B is touched.
"""

from __future__ import annotations

import csv
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.loggers.logger import DummyLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from segloss.utils.config import instantiate_group
from segloss.utils.lightning_adapter import KeepingCSVLogger
from segloss.utils.secrets import redact

RUN_ID_FILE = "wandb_run_id.txt"


def start_tracking(cfg: DictConfig, output_dir: Path, resumed_step: int | None) -> list[Logger]:
    """The started loggers of ``cfg.logger`` (see the module docstring); ``resumed_step`` is the
    global step of the checkpoint a training resumes from (None for a fresh run)."""
    if cfg.trainer.get("fast_dev_run"):  # a debug run writes no metrics and starts no W&B run
        return [DummyLogger()]  # (not none: callbacks such as LearningRateMonitor need a logger)
    loggers = instantiate_group(cfg.get("logger"), "logger")
    if resumed_step is not None:
        for logger in loggers:
            if isinstance(logger, ResumableCSVLogger):
                logger.resume_at(int(resumed_step))
    loggers = start_loggers(loggers, redact(OmegaConf.to_container(cfg, resolve=True)))
    save_wandb_run_id(loggers, output_dir)
    return loggers


def start_loggers(loggers: list, hyperparams: dict) -> list:
    """Log the (redacted) hyperparameters; a W&B logger that cannot start — no network in online mode,
    no API key, an unwritable wandb folder — is dropped with a warning and the training goes on with
    the others (the CSV metrics stay complete)."""
    kept = []
    for logger in loggers:
        try:
            logger.log_hyperparams(hyperparams)
        except Exception as err:  # W&B raises many kinds (UsageError, CommError, OSError, …)
            if not isinstance(logger, WandbLogger):
                raise
            warnings.warn(
                f"W&B could not start ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                "training goes on without it — the CSV logger keeps every metric. For offline runs set "
                "WANDB_MODE=offline, or log in with `wandb login`",
                stacklevel=2,
            )
            finish_wandb()
            continue
        kept.append(logger)
    return kept


def find_wandb_logger(loggers: Sequence[Logger]) -> WandbLogger | None:
    """The first :class:`WandbLogger` among ``loggers`` (``trainer.loggers``), or None."""
    return next((logger for logger in loggers if isinstance(logger, WandbLogger)), None)


def is_wandb_target(target: str | None) -> bool:
    """Whether a config's ``_target_`` names Lightning's WandbLogger (under any import path)."""
    return bool(target) and str(target).rsplit(".", 1)[-1] == "WandbLogger"


def read_run_id(run_dirs: Sequence[Path]) -> str | None:
    """The W&B run id saved in the first of ``run_dirs`` that holds a :data:`RUN_ID_FILE`, or None."""
    for run_dir in run_dirs:
        path = Path(run_dir) / RUN_ID_FILE
        if path.is_file() and path.read_text().strip():
            return path.read_text().strip()
    return None


@rank_zero_only
def save_wandb_run_id(loggers: list, output_dir: Path) -> None:
    """``<run dir>/wandb_run_id.txt``: the W&B run id (this starts the W&B run if it has not started)."""
    logger = find_wandb_logger(loggers)
    if logger is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / RUN_ID_FILE).write_text(f"{logger.experiment.id}\n")


def finish_wandb() -> None:
    """Close the W&B run (Lightning leaves it open), so a later run in this process gets its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


class ResumableCSVLogger(KeepingCSVLogger):
    """``CSVLogger`` that keeps an existing ``metrics.csv`` (see the module docstring)."""

    @rank_zero_only
    def resume_at(self, global_step: int) -> None:
        """Drop the rows of steps ≥ ``global_step`` (logged after the checkpoint being resumed)."""
        path = self.experiment.metrics_file_path
        if not os.path.isfile(path):
            return
        with open(path, newline="") as file:
            reader = csv.DictReader(file)
            fields, rows = reader.fieldnames or [], list(reader)
        kept = [row for row in rows if not row.get("step") or int(float(row["step"])) < global_step]
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)
        os.replace(tmp, path)
