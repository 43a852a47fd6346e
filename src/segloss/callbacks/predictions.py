"""Every evaluation prediction as a label file, in the dataset's official result format."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L

from segloss.utils.visualize import (
    default_palette,
    save_palette_png,
)


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
