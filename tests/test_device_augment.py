"""``data.augment_on_device``: the loader draws the parameters and cuts uint8 regions, the device does the
pixels; same crops as the CPU pipeline, same (seed, epoch, index) contract, a training that runs."""

from __future__ import annotations

import pytest
import torch

from segloss.data.datamodule import SegmentationDataModule
from segloss.data.device_augment import DeviceAugmentation
from segloss.data.transforms import train_transform
from segloss.errors import ConfigError
from segloss.utils.seeding import seeded_rngs
from tests.conftest import TINY_SYNTHETIC, fit
from tests.helpers.device_augment import ARGS, augment_items, both_paths


@pytest.mark.parametrize("layout", ["planar", "channels_last", "float"])
def test_the_device_path_gives_the_cpu_pipelines_crops(layout):
    items = augment_items(12, layout)
    expected, got, regions = both_paths(items, ARGS)
    assert got["image"].shape == expected["image"].shape == (12, 3, 40, 50)
    assert got["image"].dtype == torch.float32 and got["mask"].dtype == torch.int64
    # Same arithmetic; only the contrast mean is reduced in another order (normalised units: 1e-4 ≈ 0.006 grey).
    assert (got["image"] - expected["image"]).abs().max() < 1e-4
    assert torch.equal(got["mask"], expected["mask"])
    assert got["name"] == expected["name"] and set(got) == {"image", "mask", "name"}
    # The draws covered what the test is about: padded crops, flips, and every jitter operation.
    padded = [(item["augment"]["row_inside"].all() & item["augment"]["col_inside"].all()).item() for item in regions]
    assert not all(padded) and any(padded)
    flips = [bool(item["augment"]["col_i0"][0] > item["augment"]["col_i0"][-1]) for item in regions]
    assert any(flips) and not all(flips)


def test_the_loader_sends_uint8_regions_no_larger_than_what_the_crop_reads():
    items = augment_items(8, "planar", size=(120, 180))
    deferred = train_transform(**{**ARGS, "base_size": (120, 180), "scale_range": (1.5, 2.0)}, augment_on_device=True)
    for i, item in enumerate(items):
        with seeded_rngs(i):
            out = deferred(dict(item))
        assert out["image"].dtype == torch.uint8 and out["mask"].dtype == torch.uint8
        # at scale ≥ 1.5 the 40×50 crop reads at most 40/1.5 + 2 rows and 50/1.5 + 2 columns
        assert out["image"].shape[1] <= 40 / 1.5 + 2 and out["image"].shape[2] <= 50 / 1.5 + 2
        assert out["image"].shape[1:] == out["mask"].shape
    wide = {"image": items[0]["image"], "mask": torch.full((120, 180), 300)}  # values beyond uint8 stay int64
    with seeded_rngs(0):
        assert deferred(wide)["mask"].dtype == torch.int64


def test_no_jitter_and_no_flip_configurations():
    args = {**ARGS, "color_jitter": None, "hflip": 0.0}
    expected, got, _ = both_paths(augment_items(4, "planar"), args)
    assert (got["image"] - expected["image"]).abs().max() < 1e-5
    assert torch.equal(got["mask"], expected["mask"])


def test_augment_on_device_needs_the_fast_resampling_and_its_own_transform(tmp_path):
    with pytest.raises(ConfigError, match="resample=fast"):
        train_transform(**ARGS, resample="torchvision", augment_on_device=True)
    with pytest.raises(ConfigError, match="augment_on_device"):
        SegmentationDataModule(
            dataset=None,
            root=str(tmp_path),
            num_classes=2,
            class_names=["a", "b"],
            train_transform=train_transform(**ARGS),
            augment_on_device=True,
        )
    assert isinstance(train_transform(**ARGS, augment_on_device=True), DeviceAugmentation)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> list[str]:
    """TINY_SYNTHETIC with its data generated once for this module."""
    return [*TINY_SYNTHETIC, f"paths.data_dir={tmp_path_factory.mktemp('data')}"]


def _first_batches(make_cfg, data: list[str], on_device: bool, workers: int = 0, count: int = 3) -> list[dict]:
    from segloss.utils.config import instantiate

    flags = [f"data.augment_on_device={str(on_device).lower()}", f"data.num_workers={workers}"]
    cfg = make_cfg([*data, "data.batch_size=4", "data.train_transform.crop_size=[48,64]", *flags])
    datamodule = instantiate(cfg.data, "data")
    datamodule.prepare_data()
    datamodule.setup("fit")
    batches = []
    for batch in datamodule.train_dataloader():
        batches.append(datamodule.on_after_batch_transfer(batch, 0))
        if len(batches) == count:
            return batches
    return batches


def test_the_datamodule_serves_the_same_seeded_batches_either_way(make_cfg, tiny_data, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    on_cpu = _first_batches(make_cfg, tiny_data, False)
    on_device = _first_batches(make_cfg, tiny_data, True, workers=2)  # regions packed in shared memory
    for a, b in zip(on_cpu, on_device, strict=True):
        assert a["name"] == b["name"]
        assert (a["image"] - b["image"]).abs().max() < 1e-4 and torch.equal(a["mask"], b["mask"])


def test_a_training_with_augment_on_device_matches_one_without(tmp_path, tiny_data):
    common = [*tiny_data, "trainer.max_epochs=1", "logger=csv", "callbacks=none", "seed=5"]
    plain = fit(common, tmp_path / "plain")
    device = fit([*common, "data.augment_on_device=true"], tmp_path / "device")
    assert device["results"]["mIoU"] == pytest.approx(float(plain["results"]["mIoU"]), abs=1e-4)
    assert device["trainer"].callback_metrics["train/loss_epoch"] == pytest.approx(
        float(plain["trainer"].callback_metrics["train/loss_epoch"]), abs=1e-4
    )
