"""A CSV logger that a resumed training appends to instead of deleting.

Lightning's ``CSVLogger`` removes an existing ``metrics.csv`` when its folder is reused, so a job
that is requeued into its own run directory would lose the metrics logged before the interruption.
:class:`ResumableCSVLogger` keeps the file; :meth:`ResumableCSVLogger.resume_at` (called by
``segloss.train`` with the checkpoint's global step) drops only the rows logged *after* that
checkpoint — the resumed training logs those steps again — so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import csv
import os

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only


class _KeepingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as file:
                self.metrics_keys = list(csv.DictReader(file).fieldnames or [])


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that keeps an existing ``metrics.csv`` (see the module docstring)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment

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
