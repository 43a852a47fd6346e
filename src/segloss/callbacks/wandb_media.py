"""What W&B gets at each validation beyond the scalars: per-class table, confusion matrix, overlays."""

from __future__ import annotations

import lightning.pytorch as L

from segloss.callbacks.pictures import FirstPredictions
from segloss.utils.tracking import find_wandb_logger
from segloss.utils.visualize import (
    class_table,
    confusion_matrix_image,
    overlay_image,
)


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
