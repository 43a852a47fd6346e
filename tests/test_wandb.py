"""W&B end to end: a short offline training read back with wandb's own reader (`wandb leet inspect`),
and a resumed training that continues the same W&B run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from segloss.callbacks import WandbMedia
from segloss.train import train
from segloss.utils.config import CONFIG_DIR
from segloss.utils.tracking import RUN_ID_FILE
from tests.conftest import TINY_SYNTHETIC, compose_config
from tests.helpers.wandb_reader import inspect, media_rows


def offline_run(run_dir: Path) -> Path:
    (found,) = (Path(run_dir) / "wandb").glob("offline-run-*")
    return found


def same(logged, value: float) -> bool:
    """A summary value (NaN is written as the string "NaN") equals ``value``."""
    return math.isnan(value) if logged == "NaN" else logged == pytest.approx(value, abs=1e-6)


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    # 2 training batches an epoch: the test is about what reaches W&B, not about learning
    overrides = [*TINY_SYNTHETIC, f"paths.data_dir={tmp_path_factory.mktemp('data')}", "+trainer.limit_train_batches=2"]
    cfg = compose_config("train", [*overrides, "trainer.max_epochs=2"], tmp_path_factory.mktemp("run"))
    out = train(cfg)
    run = offline_run(Path(out["output_dir"]))
    return SimpleNamespace(
        overrides=overrides, out=out, run=run, summary=inspect(run, summary=True), records=inspect(run, summary=False)
    )


def test_every_preset_says_its_loss_family_and_the_loss_is_built_without_it(tmp_path):
    from omegaconf import OmegaConf

    from segloss.utils.loss_family import FAMILIES, loss_family, without_family
    from tests.helpers.losses import preset_loss

    def family(preset: str) -> str:  # a preset that extends another (defaults: [ce, _self_]) has the other's
        node = OmegaConf.load(CONFIG_DIR / "loss" / f"{preset}.yaml")
        return loss_family(node) if "family" in node or "defaults" not in node else family(node.defaults[0])

    presets = sorted(p.stem for p in (CONFIG_DIR / "loss").glob("*.yaml"))
    families = {p: family(p) for p in presets}
    assert {p: f for p, f in families.items() if f not in FAMILIES} == {}
    assert (families["ohem"], families["lovasz"], families["dice_focal"], families["wce"]) == (
        "distribution-based", "region-based", "compound", "distribution-based",  # wce extends ce
    )  # fmt: skip
    own = OmegaConf.create({"_target_": "segloss.losses.DiceLoss"})  # a config of one's own, without the key
    assert loss_family(own) == "other" and without_family(own) == own
    composed = compose_config("train", ["loss=wce"], tmp_path).loss  # Hydra merges the family of what wce extends
    assert loss_family(composed) == "distribution-based" and "family" not in without_family(composed)
    assert type(preset_loss("focal")).__name__ == "FocalLoss"


def test_wandb_media_is_a_no_op_without_a_wandb_logger(tmp_path):
    # logger=csv: nothing is collected, and on_validation_end returns before reading the (empty) results
    trainer = SimpleNamespace(loggers=[CSVLogger(tmp_path)], sanity_checking=False, is_global_zero=True)
    trainer.current_epoch = 0
    callback = WandbMedia()
    batch = {"image": torch.zeros(2, 3, 4, 4), "mask": torch.zeros(2, 4, 4, dtype=torch.long), "name": ["a", "b"]}
    callback.on_validation_batch_end(trainer, None, {"preds": torch.zeros(2, 4, 4, dtype=torch.long)}, batch, 0)
    assert callback._samples == []
    callback.on_validation_end(trainer, SimpleNamespace(last_results={"val": {}}))  # {} would raise KeyError


def test_offline_run_holds_name_group_tags_config_and_metrics(first):
    out, summary, records = first.out, first.summary, first.records
    module = out["trainer"].lightning_module
    assert (summary["name"], summary["state"], summary["tags"]) == (
        "ce-unet-synthetic_city-s42",
        "finished",
        ["ce", "distribution-based"],
    )
    (run_record,) = [r["run"] for r in records if r["type"] == "run"]
    assert run_record["run_group"] == "synthetic_city-unet"
    assert (Path(out["output_dir"]) / RUN_ID_FILE).read_text().strip() == summary["run_id"] == run_record["run_id"]
    assert summary["config"]["loss"]["_target_"] == "segloss.losses.CrossEntropyLoss"
    assert summary["config"]["tags"] == ["ce", "distribution-based"]

    metrics = summary["summary"]
    best = module.best.value
    assert module.best.metric == "val/mIoU"
    assert metrics["val/mIoU_best"] == pytest.approx(best, abs=1e-6)
    assert float(module.best.results["mIoU"]) == pytest.approx(best, abs=1e-6)
    last = module.last_results["val"]
    assert metrics["val/mIoU"] == pytest.approx(float(last["mIoU"]), abs=1e-6)
    assert metrics["val/acc"] == pytest.approx(float(last["acc"]), abs=1e-6)
    for i, name in enumerate(module.class_names):
        assert same(metrics[f"val/IoU/{name}"], float(last["IoU"][i])), name
        assert same(metrics[f"val/Dice/{name}"], float(last["Dice"][i])), name
    assert not all(math.isnan(float(v)) for v in last["IoU"])


def test_table_confusion_matrix_and_overlays_are_logged_each_validation(first):
    out, run, records = first.out, first.run, first.records
    module, datamodule = out["trainer"].lightning_module, out["trainer"].datamodule
    tables = media_rows(records, "val/per_class")
    assert len(tables) == 2  # one per epoch; the sanity check logs nothing
    assert len(media_rows(records, "val/confusion_matrix")) == 2
    overlays = media_rows(records, "val/predictions")
    assert len(overlays) == 2 and all(row["val/predictions.count"] == 4 for row in overlays)

    # The last table: the last validation's per-class IoU/Dice and ground-truth pixel counts.
    table = json.loads((run / "files" / tables[-1]["val/per_class.path"]).read_text())
    assert table["columns"] == ["class", "IoU", "Dice", "pixels"]
    val = datamodule.datasets["val"]
    last, masks = module.last_results["val"], [val[i]["mask"] for i in range(len(val))]
    for i, (name, iou, dice, pixels) in enumerate(table["data"]):
        assert name == module.class_names[i]
        assert iou is None if math.isnan(float(last["IoU"][i])) else iou == pytest.approx(float(last["IoU"][i]))
        assert dice is None if math.isnan(float(last["Dice"][i])) else dice == pytest.approx(float(last["Dice"][i]))
        assert pixels == sum(int((m == i).sum()) for m in masks)

    matrix = tables[-1]  # the confusion matrix is in the same row as the table
    image = Image.open(run / "files" / matrix["val/confusion_matrix.path"])
    assert image.size == (matrix["val/confusion_matrix.width"], matrix["val/confusion_matrix.height"])

    # Overlays: the first 4 val images; the ground-truth mask maps ignore (255) to 19, labelled "ignore".
    row = overlays[-1]
    assert row["val/predictions.captions"][0] == datamodule.datasets["val"][0]["name"]
    for path in row["val/predictions.filenames"]:
        assert Image.open(run / "files" / path).size == (128, 64)
    truth = np.asarray(Image.open(run / "files" / row["val/predictions.all_masks"][0]["ground_truth"]["path"]))
    expected = masks[0].numpy()
    assert (expected == 255).any() and np.array_equal(truth, np.where(expected == 255, 19, expected))
    configs = [r["config"]["update"].get("_wandb", {}) for r in records if r["type"] == "config"]
    labels = next(c["mask/class_labels"] for c in reversed(configs) if "mask/class_labels" in c)
    assert labels["val/predictions_wandb_delimeter_ground_truth"]["value"]["19"] == "ignore"
    assert "19" not in labels["val/predictions_wandb_delimeter_prediction"]["value"]
    referenced = [t["val/per_class.path"] for t in tables] + [t["val/confusion_matrix.path"] for t in tables]
    for row in overlays:
        referenced += row["val/predictions.filenames"]
        referenced += [m[k]["path"] for m in row["val/predictions.all_masks"] for k in ("ground_truth", "prediction")]
    assert len(referenced) == 2 * (2 + 4 + 2 * 4) and all(p.startswith("media/") for p in referenced)
    assert all((run / "files" / p).is_file() for p in referenced)


def test_resumed_training_continues_the_same_wandb_run(first, tmp_path):
    overrides, out, summary = first.overrides, first.out, first.summary
    first_best = out["trainer"].lightning_module.best.value
    ckpt = Path(out["output_dir"]) / "checkpoints" / "last.ckpt"
    cfg = compose_config("train", [*overrides, "trainer.max_epochs=3", f"ckpt_path={ckpt}"], tmp_path / "resumed")
    resumed = train(cfg)
    assert resumed["trainer"].current_epoch == 3  # one more epoch on top of the two
    run = offline_run(tmp_path / "resumed")
    again = inspect(run, summary=True)
    assert again["run_id"] == summary["run_id"] == (tmp_path / "resumed" / RUN_ID_FILE).read_text().strip()
    assert run.name.endswith(summary["run_id"]) and again["name"] == summary["name"]
    assert again["config"]["logger"]["wandb"]["id"] == summary["run_id"]
    best = resumed["trainer"].lightning_module.best.value
    assert best >= first_best and again["summary"]["val/mIoU_best"] == pytest.approx(best, abs=1e-6)
