"""Checkpoint and stop on SIGTERM, SIGINT or SIGUSR1 (resume=auto continues from last.ckpt)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import lightning.pytorch as L


class StoppedBySignal(Exception):
    """Raised through Lightning after the signal checkpoint is saved; ``segloss.train`` turns it into
    exit status 128 + signal. (``trainer.should_stop`` would wait for ``min_epochs``.)"""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.exit_code = 128 + int(signum)


class SignalCheckpoint(L.Callback):
    """On SIGTERM (the scheduler or ``kill``), SIGINT (Ctrl-C) or SIGUSR1 (a time-limit warning; left to
    Lightning's requeue handler when SLURM auto-requeue owns it, see :func:`stop_signals`), finish the
    current batch, write ``<dirpath>/last.ckpt`` and stop (:class:`StoppedBySignal`); ``resume=auto``
    continues exactly from there. A second signal of the same kind acts as usual (a second Ctrl-C
    interrupts at once). Under DDP every rank must receive the signal (SLURM sends it to all tasks)."""

    def __init__(self, dirpath: str | Path, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self.dirpath, self.signals = Path(dirpath), signals
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        self.received = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))  # a second one acts as usual

    def on_train_start(self, trainer, pl_module) -> None:
        for signum in self.signals:
            try:
                self._previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._handle)
            except ValueError:  # not the main thread of the interpreter: leave signals to the default
                return

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._stop_if_signalled(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        # At an epoch's end the epoch's training metrics (train/loss_epoch, …) are logged after validation:
        # stopping here would lose them, so the stop waits for the end of the next batch (a mid-epoch
        # checkpoint, which resumes exactly; a checkpoint taken at an epoch's start does not restore cleanly).
        if not trainer.sanity_checking and not trainer.is_last_batch:
            self._stop_if_signalled(trainer)

    def _stop_if_signalled(self, trainer) -> None:
        if self.received is None:
            return
        path = self.dirpath / "last.ckpt"
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            name = signal.Signals(self.received).name
            print(f"segloss: {name} received: saved {path} at step {trainer.global_step}; "
                  "continue with resume=auto", file=sys.stderr)  # fmt: skip
        raise StoppedBySignal(self.received)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, handler)

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:  # a failed run leaves the handlers as found
        self._restore()


def stop_signals(cfg) -> tuple[int, ...]:
    """SIGTERM and SIGINT, and SIGUSR1 unless Lightning's SLURM requeue handler owns it."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    cluster = cfg.get("cluster") or {}
    requeue = SLURMEnvironment.detect() and cluster.get("auto_requeue", True)
    usr1_taken = requeue and str(cluster.get("requeue_signal", "SIGUSR1")) == "SIGUSR1"
    return (signal.SIGTERM, signal.SIGINT) + (() if usr1_taken else (signal.SIGUSR1,))
