"""Callbacks of the template beyond Lightning's own."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from segloss.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from segloss.utils.visualize import default_palette, denormalise, palette_lut, prediction_grid, save_palette_png
from segloss.utils.wandb_media import class_table, confusion_matrix_image, find_wandb_logger, overlay_image


class PredictionGrid(L.Callback):
    """After each validation, write ``<dirpath>/epoch_XXX.png`` (and ``latest.png``): the first
    ``num_images`` validation images with their ground truth and prediction, coloured with the
    dataset's palette (ignore pixels black)."""

    def __init__(
        self,
        dirpath: str,
        num_images: int = 4,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.dirpath, self.num_images, self.mean, self.std = Path(dirpath), num_images, mean, std

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.num_images <= 0 or trainer.datamodule is None:
            return
        dataset = trainer.datamodule.datasets.get("val")
        if dataset is None:
            return
        samples = [dataset[i] for i in range(min(self.num_images, len(dataset)))]
        palette = getattr(dataset, "PALETTE", None) or default_palette(pl_module.hparams.num_classes)
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            preds = [pl_module(s["image"][None].to(pl_module.device)).argmax(1)[0].cpu().numpy() for s in samples]
        pl_module.train(was_training)
        grid = prediction_grid(
            [denormalise(s["image"], self.mean, self.std) for s in samples],
            [s["mask"].numpy() for s in samples],
            preds,
            palette_lut(palette),
        )
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
    * the run summary's ``val/mIoU_best`` (the best val/mIoU, also after a resumed training).

    Does nothing without a WandbLogger (``logger=csv``); under DDP only rank zero logs (the module has
    already summed the metrics over ranks). Reads ``pl_module.last_results["val"]`` ("IoU", "Dice",
    "confmat") and ``pl_module.val_miou_best`` of :class:`segloss.models.module.SegmentationModule`.
    """

    def __init__(
        self,
        num_images: int = 4,
        every_n_epochs: int = 1,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.num_images, self.every_n_epochs, self.mean, self.std = num_images, every_n_epochs, mean, std
        self._samples: list[tuple] = []  # (image H×W×3, mask, prediction, name) of this validation

    @staticmethod
    def _active(trainer: L.Trainer) -> bool:
        return not trainer.sanity_checking and trainer.is_global_zero and find_wandb_logger(trainer.loggers) is not None

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._samples = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        wanted = self.num_images - len(self._samples)
        if wanted <= 0 or not outputs or "preds" not in outputs or trainer.current_epoch % self.every_n_epochs:
            return
        if not self._active(trainer):
            return
        sizes, names = batch.get("size"), batch.get("name")
        for i in range(min(wanted, len(outputs["preds"]))):
            height, width = (int(v) for v in sizes[i]) if sizes is not None else batch["mask"].shape[-2:]
            self._samples.append(
                (
                    denormalise(batch["image"][i], self.mean, self.std)[:height, :width],
                    batch["mask"][i, :height, :width].cpu().numpy(),
                    outputs["preds"][i, :height, :width].cpu().numpy(),
                    str(names[i]) if names is not None else f"{batch_idx}/{i}",
                )
            )

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
            self._samples = []
        logger.log_metrics(media)  # no step: W&B pairs the row with the last trainer/global_step (step_sync)
        best = getattr(pl_module, "val_miou_best", None)
        if best is not None and best.update_called:
            logger.experiment.summary["val/mIoU_best"] = float(best.max_value)
