"""Every callback of the template beyond Lightning's own.

* :class:`LatestCheckpoint` — Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` is always the latest state
  (it lives in :mod:`segloss.utils.lightning_adapter`, the one module that uses Lightning's private API).
* :class:`SignalCheckpoint` — checkpoint and stop on SIGTERM, SIGINT or SIGUSR1.
* :class:`PredictionGrid` — image | ground truth | prediction PNGs after each validation.
* :class:`PredictionWriter` — every evaluation prediction as a label file (official result formats).
* :class:`WandbMedia` — per-class table, confusion matrix and prediction overlays in W&B.
* :class:`ThreadsFollowLoad` — the CPU intra-op thread count follows the load of other processes.

Pictures drawn by PredictionGrid and WandbMedia undo exactly the normalisation of the data config (the module's
``input_mean``/``input_std``; uint8 batches of ``data.normalize_on_device`` pass unchanged).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import lightning.pytorch as L
from lightning.pytorch.utilities import rank_zero_only

from segloss.utils.lightning_adapter import LatestCheckpoint  # noqa: F401 - configs name segloss.callbacks.LatestCheckpoint
from segloss.utils.tracking import find_wandb_logger
from segloss.utils.visualize import (
    class_table,
    confusion_matrix_image,
    default_palette,
    display_image,
    fit_within,
    overlay_image,
    palette_lut,
    prediction_grid,
    save_palette_png,
)


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


class FirstPredictions:
    """The first ``count`` images of a validation with their ground truth and the predictions of
    ``validation_step`` itself (no extra forward pass): ``(picture H×W×3 uint8, mask, prediction, name)``.
    The picture undoes exactly the data config's normalisation (uint8 batches pass as they are); items
    padded to a common batch size are cropped back to their own size. Under DDP: rank 0's first items."""

    def __init__(self, count: int) -> None:
        self.count, self.samples = count, []

    def reset(self) -> None:
        self.samples = []

    def add(self, pl_module: L.LightningModule, outputs, batch: dict, batch_idx: int) -> None:
        wanted = self.count - len(self.samples)
        if wanted <= 0 or not outputs or "preds" not in outputs:
            return
        sizes, names = batch.get("size"), batch.get("name")
        mean, std = getattr(pl_module, "input_mean", None), getattr(pl_module, "input_std", None)
        for i in range(min(wanted, len(outputs["preds"]))):
            height, width = (int(v) for v in sizes[i]) if sizes is not None else batch["mask"].shape[-2:]
            self.samples.append(
                (
                    display_image(batch["image"][i], mean, std)[:height, :width],
                    batch["mask"][i, :height, :width].cpu().numpy(),
                    outputs["preds"][i, :height, :width].cpu().numpy(),
                    str(names[i]) if names is not None else f"{batch_idx}/{i}",
                )
            )


class PredictionGrid(L.Callback):
    """After each validation, write ``<dirpath>/epoch_XXX.png`` (and ``latest.png``): the first
    ``num_images`` validation images with their ground truth and prediction, coloured with the
    dataset's palette (ignore pixels black). The predictions are those of the validation itself, and each
    panel is drawn at most ``max_side`` pixels on its long side (a 1024×2048 frame at 256×512), so the grid
    costs milliseconds at any resolution."""

    def __init__(self, dirpath: str, num_images: int = 4, max_side: int = 512) -> None:
        if max_side < 1:
            raise ValueError(f"max_side must be ≥ 1, got {max_side}")
        self.dirpath, self.num_images, self.max_side = Path(dirpath), num_images, max_side
        self._first = FirstPredictions(num_images)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._first.reset()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking and trainer.is_global_zero and self.num_images > 0:
            self._first.add(pl_module, outputs, batch, batch_idx)

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        samples, self._first.samples = self._first.samples, []
        if trainer.sanity_checking or not samples:
            return
        dataset = trainer.datamodule.datasets.get("val") if trainer.datamodule is not None else None
        palette = getattr(dataset, "PALETTE", None) or default_palette(pl_module.hparams.num_classes)
        shrink = [fit_within(s, self.max_side) for s in samples]
        grid = prediction_grid([i for i, _, _ in shrink], [m for _, m, _ in shrink], [p for _, _, p in shrink],
                               palette_lut(palette))  # fmt: skip
        self.dirpath.mkdir(parents=True, exist_ok=True)
        grid.save(self.dirpath / f"epoch_{trainer.current_epoch:03d}.png")
        grid.save(self.dirpath / "latest.png")


class PredictionWriter(L.Callback):
    """Write every validation/test prediction under ``dirpath`` as a label file.

    The dataset decides the format through ``save_prediction(pred, out_dir, name)`` (Cityscapes:
    labelId PNGs in the official result layout); datasets without it get a palette PNG of class
    indices, ``<name>.png``. Items padded to a common batch size (``batch["size"]``) are cropped back
    to their own size first. Each rank writes the predictions of its own batches.
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def _write(self, trainer: L.Trainer, stage: str, outputs, batch: dict) -> None:
        if trainer.sanity_checking or not outputs or "preds" not in outputs:
            return
        dataset = trainer.datamodule.datasets.get(stage) if trainer.datamodule is not None else None
        preds = outputs["preds"].cpu().numpy()
        sizes = batch.get("size")
        save = getattr(dataset, "save_prediction", None)
        for i, name in enumerate(batch["name"]):
            pred = preds[i]
            if sizes is not None:
                height, width = (int(v) for v in sizes[i])
                pred = pred[:height, :width]
            if save is not None:
                save(pred, self.dirpath, name)
            else:
                palette = getattr(dataset, "PALETTE", None) or default_palette(int(pred.max()) + 1)
                save_palette_png(pred, palette, self.dirpath / f"{name}.png")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._write(trainer, "val", outputs, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._write(trainer, "test", outputs, batch)


class WandbMedia(L.Callback):
    """After each validation (not the sanity check), log to the run's :class:`WandbLogger`:

    * ``val/per_class``: a ``wandb.Table`` (class, IoU, Dice, ground-truth pixels) of this validation;
    * ``val/confusion_matrix``: the row-normalised confusion matrix of the split, a heatmap image;
    * ``val/predictions`` (every ``every_n_epochs`` epochs, from the first epoch on): the first
      ``num_images`` validation images with their ``ground_truth`` and ``prediction`` masks — the
      predictions of ``validation_step`` itself, so no extra forward pass (under DDP: the first items of
      rank zero's shard, the same ones every time);
    * the run summary's ``<optimized metric>_best`` (also after a resumed training).

    Does nothing without a WandbLogger (``logger=csv``); under DDP only rank zero logs (the module has
    already summed the metrics over ranks). Reads ``pl_module.last_results["val"]`` ("IoU", "Dice",
    "confmat") and ``pl_module.best`` of :class:`segloss.models.module.SegmentationModule`.
    """

    def __init__(self, num_images: int = 4, every_n_epochs: int = 1) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.num_images, self.every_n_epochs = num_images, every_n_epochs
        self._first = FirstPredictions(num_images)  # (image H×W×3, mask, prediction, name) of this validation

    @property
    def _samples(self) -> list[tuple]:
        return self._first.samples

    @staticmethod
    def _active(trainer: L.Trainer) -> bool:
        return not trainer.sanity_checking and trainer.is_global_zero and find_wandb_logger(trainer.loggers) is not None

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._first.reset()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.current_epoch % self.every_n_epochs == 0 and self._active(trainer):
            self._first.add(pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        results = getattr(pl_module, "last_results", {}).get("val")
        if results is None or not self._active(trainer):
            return
        logger = find_wandb_logger(trainer.loggers)
        names = list(pl_module.class_names)
        confmat = results.get("confmat")
        confmat = confmat.cpu().numpy() if confmat is not None else None
        media = {"val/per_class": class_table(names, results["IoU"].cpu(), results["Dice"].cpu(), confmat)}
        if confmat is not None:
            media["val/confusion_matrix"] = confusion_matrix_image(confmat, names)
        if self._samples:
            ignore_index = pl_module.hparams.ignore_index
            media["val/predictions"] = [
                overlay_image(image, mask, pred, names, ignore_index, caption=name)
                for image, mask, pred, name in self._samples
            ]
            self._first.reset()
        logger.log_metrics(media)  # no step: W&B pairs the row with the last trainer/global_step (step_sync)
        best = getattr(pl_module, "best", None)
        if best is not None and best.value is not None:
            logger.experiment.summary[f"{best.metric}_best"] = best.value


class ThreadsFollowLoad(L.Callback):
    """Every :data:`~segloss.utils.threads.EVERY_S` seconds of training, choose torch's intra-op thread count
    again from the CPUs other processes keep busy (:mod:`segloss.utils.threads`). Fewer threads as soon as a
    CPU is taken (a thread sharing a core with a busy process stalls every operator); more only when two
    looks in a row agree (a short pause of the other process is not followed)."""

    def __init__(self, chooser, every_s: float | None = None):
        from segloss.utils import threads

        self.chooser, self.every_s = chooser, threads.EVERY_S if every_s is None else every_s
        self.pending: int | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import torch

        from segloss.utils import threads

        if threads.clock() - self.chooser.at < self.every_s:
            return
        chosen, others = self.chooser.choose()
        current = torch.get_num_threads()
        if chosen > current and self.pending != chosen:
            self.pending = chosen  # wait for a second look
            return
        self.pending = None
        if chosen != current:
            torch.set_num_threads(chosen)
            if trainer.is_global_zero:
                print(f"segloss: threads {current} → {chosen} ({others:.1f} CPUs busy elsewhere)", flush=True)
