"""Callbacks of the template beyond Lightning's own."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from segloss.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from segloss.utils.visualize import default_palette, denormalise, palette_lut, prediction_grid, save_palette_png


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
        for i, name in enumerate(batch["name"]):
            pred = preds[i]
            if sizes is not None:
                height, width = (int(v) for v in sizes[i])
                pred = pred[:height, :width]
            save = getattr(dataset, "save_prediction", None)
            if save is not None:
                save(pred, self.dirpath, name)
            else:
                palette = getattr(dataset, "PALETTE", None) or default_palette(int(pred.max()) + 1)
                save_palette_png(pred, palette, self.dirpath / f"{name}.png")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._write(trainer, "val", outputs, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._write(trainer, "test", outputs, batch)
