"""Every use of Lightning's private API in segloss, in this one module, checked against Lightning 2.6.

Where Lightning offers no public way to do what segloss needs, the code that needs it is here and nowhere
else (``tests/test_layout.py`` fails on a private Lightning name anywhere else), and
``tests/test_lightning_adapter.py`` fails on an upgrade that removes or changes one of them:

- :func:`logs_this_step` — whether the loggers write on this step (``trainer._logger_connector``): the
  training losses are summed on the device between such steps instead of logged on every one.
- :func:`batches_started` — the batches the fit loop has started in total, across epochs and resumes
  (``fit_loop.epoch_loop.batch_progress``): the per-step reseeding that makes a resume exact.
- :class:`LatestCheckpoint` — ``ModelCheckpoint`` whose ``last.ckpt`` is the latest state after every save
  point (its ``_save_last_checkpoint`` and the checks Lightning runs before it).
- :class:`KeepingCSVLogger` — ``CSVLogger`` that keeps an existing ``metrics.csv`` when a run resumes in its
  folder (``ExperimentWriter._check_log_dir_exists``, the logger's ``_experiment`` and ``_fs``).
"""

from __future__ import annotations

import csv
import os

import lightning.pytorch as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

CHECKED_WITH = "2.6"  # the Lightning minor version this module was read against (pyproject: lightning>=2.6)


def attached_trainer(module: L.LightningModule) -> L.Trainer | None:
    """The module's Trainer, ``None`` outside one (``module.trainer`` raises there)."""
    try:
        return module.trainer
    except RuntimeError:
        return None


def logs_this_step(trainer: L.Trainer | None, default: bool = True) -> bool:
    """Whether the loggers write on the current training step (every ``log_every_n_steps``, and when the
    training stops); ``default`` outside a Trainer."""
    connector = getattr(trainer, "_logger_connector", None)
    return bool(getattr(connector, "should_update_logs", default))


def batches_started(trainer: L.Trainer) -> int:
    """Training batches started since the run began (a resumed run counts those before the checkpoint)."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.total.ready)


class LatestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` (``save_last=True``) holds the latest state after *every*
    save point, not only after those that also saved a top-k checkpoint, and the final state when the
    training ends.

    Lightning 2.6 refreshes ``last.ckpt`` only in a step where a monitored top-k file was written, so after
    epochs that do not improve the monitored metric ``last.ckpt`` is epochs old, and ``resume=auto`` after a
    crash would silently repeat them. A ``fast_dev_run`` writes no checkpoint at all."""

    def _refresh_last(self, trainer: L.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The final state in ``last.ckpt`` whatever the validation schedule: Lightning writes it here only
        if it never wrote one, so with validation every 2nd epoch and an odd ``max_epochs`` the last epoch's
        training was in no checkpoint."""
        if trainer.fast_dev_run:  # Lightning's own would write last.ckpt even in a fast_dev_run
            return
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        super().on_train_end(trainer, pl_module)


class _KeepingWriter(ExperimentWriter):
    """Lightning's writer removes an existing ``metrics.csv``; this one reads its columns and appends."""

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as file:
                self.metrics_keys = list(csv.DictReader(file).fieldnames or [])


class KeepingCSVLogger(CSVLogger):
    """``CSVLogger`` whose writer keeps an existing ``metrics.csv``."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment
