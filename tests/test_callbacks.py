"""The template's callbacks: pictures undo exactly the data config's normalisation; last.ckpt is always the
latest state, also after epochs that do not improve the monitored metric."""

from __future__ import annotations

from types import SimpleNamespace

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image
from torch.utils.data import DataLoader

from segloss.callbacks import LatestCheckpoint, PredictionGrid, WandbMedia
from segloss.data.transforms import eval_transform
from segloss.losses import CrossEntropyLoss
from segloss.models.module import SegmentationModule
from segloss.models.nets.unet import UNet
from tests.conftest import load_ckpt

MSD = {"mean": [0.5, 0.5, 0.5], "std": [0.125, 0.125, 0.125]}  # configs/data/msd.yaml
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _items(stats: dict, on_device: bool, count: int = 2) -> tuple[list[dict], list[np.ndarray]]:
    """Items as the data config's eval transform delivers them, and the uint8 images they came from."""
    transform = eval_transform(stats["mean"], stats["std"], normalize_on_device=on_device)
    rng = np.random.default_rng(0)
    originals = [rng.integers(0, 256, (3, 16, 24), dtype=np.uint8) for _ in range(count)]
    items = [
        transform({"image": torch.from_numpy(o), "mask": torch.zeros(16, 24, dtype=torch.long), "name": f"i{i}"})
        for i, o in enumerate(originals)
    ]
    return items, [o.transpose(1, 2, 0) for o in originals]


def _module(stats: dict) -> SegmentationModule:
    net = UNet(num_classes=3, base_channels=4, depth=2)
    return SegmentationModule(net, CrossEntropyLoss(), None, num_classes=3, input_mean=stats["mean"],
                              input_std=stats["std"])  # fmt: skip


def _validate(callback, module, batches, epoch=3):
    """Drive a callback through one validation of ``batches`` (their predictions all class 0)."""
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, current_epoch=epoch,
                              datamodule=SimpleNamespace(datasets={"val": None}))  # fmt: skip
    callback.on_validation_epoch_start(trainer, module)
    for index, batch in enumerate(batches):
        preds = torch.zeros(batch["mask"].shape, dtype=torch.long)
        callback.on_validation_batch_end(trainer, module, {"preds": preds}, batch, index)
    callback.on_validation_epoch_end(trainer, module)


@pytest.mark.parametrize("stats", [MSD, IMAGENET], ids=["msd", "imagenet"])
@pytest.mark.parametrize("on_device", [False, True], ids=["float", "uint8"])
def test_the_prediction_grid_shows_the_images_as_they_were_read(tmp_path, stats, on_device):
    items, originals = _items(stats, on_device)
    assert (items[0]["image"].dtype == torch.uint8) == on_device
    batches = [{k: (torch.stack([i[k]]) if k != "name" else [i[k]]) for k in i} for i in items]  # batches of 1
    _validate(PredictionGrid(str(tmp_path), num_images=2), _module(stats), batches)
    grid = np.asarray(Image.open(tmp_path / "epoch_003.png"))
    for row, original in enumerate(originals):  # row r: image (24 px) | 2 | truth | 2 | prediction, then 2 px
        panel = grid[row * 18 : row * 18 + 16, :24].astype(int)
        assert np.abs(panel - original).max() <= 1  # ImageNet statistics on MSD data were off by ~60 grey levels


def test_the_prediction_grid_draws_full_resolution_frames_at_a_bounded_size(tmp_path):
    image = torch.randint(0, 256, (1, 3, 1024, 2048), dtype=torch.uint8)
    mask = torch.zeros(1, 1024, 2048, dtype=torch.long)
    mask[:, :, 1024:] = 1
    batch = {"image": image, "mask": mask, "name": ["frame"]}
    _validate(PredictionGrid(str(tmp_path), num_images=4, max_side=512), _module(MSD), [batch])
    grid = np.asarray(Image.open(tmp_path / "latest.png"))
    assert grid.shape == (256 + 2, 3 * 512 + 4, 3)  # one row: three 256×512 panels, 2-px separators
    truth = grid[:256, 514:1026]
    assert (truth[:, :250] == truth[0, 0]).all() and (truth[:, 262:] == truth[0, -1]).all()  # nearest: 2 labels


@pytest.mark.parametrize("on_device", [False, True], ids=["float", "uint8"])
def test_wandb_overlays_show_the_images_as_they_were_read(monkeypatch, on_device):
    items, originals = _items(MSD, on_device)
    batch = {"image": torch.stack([i["image"] for i in items]), "mask": torch.zeros(2, 16, 24, dtype=torch.long),
             "name": ["i0", "i1"]}  # fmt: skip
    callback = WandbMedia(num_images=2)
    monkeypatch.setattr(WandbMedia, "_active", staticmethod(lambda trainer: True))
    trainer = SimpleNamespace(current_epoch=0)
    outputs = {"preds": torch.zeros(2, 16, 24, dtype=torch.long)}
    callback.on_validation_batch_end(trainer, _module(MSD), outputs, batch, 0)
    for (image, *_), original in zip(callback._samples, originals):
        assert np.abs(image.astype(int) - original).max() <= 1


class ScoreDrops(L.LightningModule):
    """A tiny model whose validation score is best at epoch 0 and falls after it."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/score", 1.0 - 0.1 * self.current_epoch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(tmp_path, callback_class) -> dict:
    data = DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=4)
    checkpoint = callback_class(dirpath=tmp_path, monitor="val/score", mode="max", save_last=True,
                                filename="epoch_{epoch:03d}", auto_insert_metric_name=False)  # fmt: skip
    trainer = L.Trainer(max_epochs=3, callbacks=[checkpoint], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")  # fmt: skip
    trainer.fit(ScoreDrops(), data, data)
    return load_ckpt(tmp_path / "last.ckpt")


def test_last_ckpt_holds_the_latest_state_when_the_metric_does_not_improve(tmp_path):
    last = _fit(tmp_path / "ours", LatestCheckpoint)
    assert (last["epoch"], last["global_step"]) == (2, 6)  # after the third epoch
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == ["epoch_000.ckpt", "last.ckpt"]
    # Lightning's own callback leaves last.ckpt at the best epoch (the bug LatestCheckpoint fixes)
    stale = _fit(tmp_path / "lightning", ModelCheckpoint)
    assert (stale["epoch"], stale["global_step"]) == (0, 2)
