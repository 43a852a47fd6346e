"""Image | ground truth | prediction PNGs of the first validation images after each validation."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from segloss.utils.visualize import (
    default_palette,
    display_image,
    fit_within,
    palette_lut,
    prediction_grid,
)


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
            image, mask, pred = batch["image"][i], batch["mask"][i], outputs["preds"][i]
            size = sizes[i][-2:] if sizes is not None else mask.shape[-2:]  # a volume's size is D, H, W
            if mask.dim() == 3:  # a volume (C×D×H×W): its axial slice with the most labelled foreground
                image, mask, pred, _ = volume_slice(image, mask, pred, pl_module.num_classes)
            height, width = (int(v) for v in size)
            self.samples.append(
                (
                    display_image(image, mean, std)[:height, :width],
                    mask[:height, :width].cpu().numpy(),
                    pred[:height, :width].cpu().numpy(),
                    str(names[i]) if names is not None else f"{batch_idx}/{i}",
                )
            )


def volume_slice(image, mask, pred, num_classes: int):
    """``(image 3×H×W uint8, mask H×W, prediction H×W, z)`` of a volume's axial slice z with the most foreground
    voxels (classes 1…C−1) in the ground truth (the middle slice when there is none). The image's first channel
    (a CT, an MR modality) is shown in grey, scaled from its slice's 1st–99th percentiles to 0–255."""
    foreground = ((mask > 0) & (mask < num_classes)).flatten(1).sum(1)
    z = int(foreground.argmax()) if int(foreground.max()) > 0 else mask.shape[0] // 2
    plane = image[0, z].detach().float().cpu()
    low, high = torch.quantile(plane.flatten(), torch.tensor([0.01, 0.99])).tolist()
    grey = ((plane - low) / max(high - low, 1e-6)).clamp(0, 1).mul(255).round().byte()
    return grey.expand(3, *grey.shape).contiguous(), mask[z], pred[z], z


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
