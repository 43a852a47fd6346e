"""Callbacks that the fault tests put into real training processes (``+callbacks.kill=…``)."""

from __future__ import annotations

import os
import signal

import lightning.pytorch as L


class KillAtStep(L.Callback):
    """SIGKILL this process when the training reaches optimizer step ``step`` (before that step's batch):
    nothing is flushed or cleaned up, as when a node dies or the scheduler kills a job."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class SignalAtStep(L.Callback):
    """Send ``signum`` to this process when the training reaches optimizer step ``step``."""

    def __init__(self, step: int, signum: str = "SIGTERM") -> None:
        self.step, self.signum = step, getattr(signal, signum)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class PoisonBatch(L.Callback):
    """Put a NaN into the first image of the batch of optimizer step ``step`` (a corrupt input)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            batch["image"][0, 0, 0, 0] = float("nan")


class SignalInValidation(L.Callback):
    """Send ``signum`` to this process at the start of the validation after training epoch ``epoch``."""

    def __init__(self, epoch: int, signum: str = "SIGTERM") -> None:
        self.epoch, self.signum = epoch, getattr(signal, signum)

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), self.signum)
