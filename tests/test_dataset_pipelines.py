"""The real-dataset configs end to end on tiny official-format trees: MSD per-case volume Dice through
the LightningModule, prediction export for VOC, and mixed-size batches for image/mask folders."""

from __future__ import annotations

import math

import hydra
import lightning.pytorch as L
import numpy as np
import pytest
import torch
from PIL import Image

from segloss.build import build_module
from segloss.eval import evaluate
from segloss.train import train
from tests.trees.folders import write_folder_tree
from tests.trees.msd import write_msd_task
from tests.trees.voc import write_voc_tree

TINY_NET = [
    "model.net.base_channels=4",
    "model.net.depth=2",
    "trainer=cpu",
    "trainer.precision=32-true",
    "model.aux=null",
]  # fmt: skip  (depth 2 has no room for the MSD experiments' deep supervision)
LOADER = ["data.num_workers=0", "data.pin_memory=false", "data.persistent_workers=false"]


def volume_dice(pred: np.ndarray, target: np.ndarray, c: int) -> float:
    tp = np.sum((pred == c) & (target == c))
    denominator = np.sum(pred == c) + np.sum(target == c)
    return math.nan if denominator == 0 else 2 * tp / denominator


def test_msd_validation_reports_per_case_volume_dice(make_cfg, tmp_path):
    root = tmp_path / "Task09_Spleen"
    write_msd_task(root, cases=6, labels=("background", "spleen"), seed=3, slab=3)
    cfg = make_cfg(
        [
            "experiment=dice_ce_msd",
            f"data.root={root}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            "data.train_transform.crop_size=[16,16]",
            "data.train_transform.base_size=[24,20]",
            "data.batch_size=4",
            "data.val_batch_size=4",
            *LOADER,
            *TINY_NET,
        ]
    )
    L.seed_everything(0)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")
    module = build_module(cfg, with_optimizer=False, datamodule=datamodule)
    module.net.head.bias.data = torch.tensor([0.0, 0.05])  # predict some spleen so the Dice is not 0/0
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[], enable_progress_bar=False)
    trainer.validate(module, datamodule=datamodule, verbose=False)
    results = module.last_results["val"]

    # Independent: predict every slice, stack each case's slices back into a volume, Dice per case.
    val = datamodule.datasets["val"]
    volumes: dict[str, tuple[list, list]] = {case: ([], []) for case in val.cases}
    module.eval()
    with torch.no_grad():
        for i in range(len(val)):
            item = val[i]
            volumes[item["case"]][0].append(module(item["image"][None]).argmax(1)[0].numpy())
            volumes[item["case"]][1].append(item["mask"].numpy())
    per_case = [volume_dice(np.stack(p), np.stack(t), 1) for p, t in volumes.values()]
    assert len(per_case) == len(val.cases) >= 1 and any(not math.isnan(d) for d in per_case)
    assert float(results["case_Dice"][1]) == pytest.approx(np.nanmean(per_case), abs=1e-6)
    assert float(results["case_mDice"]) == pytest.approx(np.nanmean(per_case), abs=1e-6)
    assert "val/case_mDice" in trainer.callback_metrics and "val/case_Dice/spleen" in trainer.callback_metrics

    # Surface distances in mm (the experiment turns them on): MONAI's on the same stacked volumes, with the
    # voxel size the tree's affine gives in display order (z, y, x) — 2.5 mm slices of 0.7 × 0.8 mm pixels.
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    assert all(val._spacing[case] == pytest.approx((2.5, 0.7, 0.8)) for case in val.cases)
    hd95, assd = [], []
    for pred, truth in volumes.values():
        p, t = (torch.from_numpy((np.stack(v) == 1).astype(np.float32)) for v in (pred, truth))
        if p.any() and t.any():
            onehot = [torch.stack([1 - x, x])[None] for x in (p, t)]
            hd95.append(compute_hausdorff_distance(*onehot, percentile=95, spacing=[2.5, 0.7, 0.8]).item())
            assd.append(compute_average_surface_distance(*onehot, symmetric=True, spacing=[2.5, 0.7, 0.8]).item())
    assert hd95, "no case with both a predicted and a true spleen: the test would prove nothing"
    assert float(results["case_HD95"][1]) == pytest.approx(np.mean(hd95), rel=1e-5)
    assert float(results["case_ASSD"][1]) == pytest.approx(np.mean(assd), rel=1e-5)
    assert "val/case_mHD95" in trainer.callback_metrics and "val/case_ASSD/spleen" in trainer.callback_metrics


def test_msd_experiment_trains_and_checkpoints_on_case_dice(make_cfg, tmp_path):
    root = tmp_path / "Task09_Spleen"
    write_msd_task(root, cases=4, labels=("background", "spleen"), seed=4)
    cfg = make_cfg(
        [
            "experiment=focal_tversky_msd",
            f"data.root={root}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            "data.train_transform.crop_size=[16,16]",
            "data.train_transform.base_size=[24,20]",
            "data.batch_size=2",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "logger=csv",
            *LOADER,
            *TINY_NET,
        ]
    )
    out = train(cfg)
    assert out["best_ckpt"].endswith(".ckpt") and cfg.callbacks.model_checkpoint.monitor == "val/case_mDice"
    assert out["trainer"].global_step == 2


def test_voc_eval_exports_palette_pngs_equal_to_the_predictions(make_cfg, tmp_path):
    root = tmp_path / "VOCdevkit"
    write_voc_tree(root, {"train": ["2007_000032"], "val": ["2007_000033", "2007_000039"]}, size=(20, 28))
    overrides = [
        "data=voc",
        f"data.root={root}",
        *LOADER,
        "model=unet",
        *TINY_NET,
    ]
    cfg = make_cfg(overrides)
    torch.manual_seed(0)
    module = build_module(cfg, with_optimizer=False)
    ckpt = tmp_path / "voc.ckpt"
    torch.save({"state_dict": module.state_dict()}, ckpt)
    out = tmp_path / "pred"
    ecfg = make_cfg([*overrides, f"ckpt_path={ckpt}", "save_predictions=true", f"predictions_dir={out}"], name="eval")
    results = evaluate(ecfg)
    assert 0 <= float(results["acc"]) <= 1
    datamodule = hydra.utils.instantiate(ecfg.data)
    datamodule.setup("validate")
    module.eval()
    for item in datamodule.datasets["val"]:
        with torch.no_grad():
            expected = module(item["image"][None]).argmax(1)[0].numpy()
        with Image.open(out / f"{item['name']}.png") as img:
            assert img.mode == "P"
            np.testing.assert_array_equal(np.asarray(img), expected)


def test_folder_eval_with_mixed_sizes_pads_and_crops_back(make_cfg, tmp_path):
    root = tmp_path / "Kvasir-SEG"
    write_folder_tree(root, [f"a{i}" for i in range(6)], size=(24, 32), seed=0)
    write_folder_tree(root, [f"b{i}" for i in range(6)], size=(20, 36), seed=1)
    overrides = ["data=kvasir", f"data.root={root}", "data.dataset.val_fraction=0.5", *LOADER, *TINY_NET]
    cfg = make_cfg(overrides)
    module = build_module(cfg, with_optimizer=False)
    ckpt = tmp_path / "k.ckpt"
    torch.save({"state_dict": module.state_dict()}, ckpt)
    out = tmp_path / "pred"
    ecfg = make_cfg(
        [*overrides, "data.val_batch_size=4", f"ckpt_path={ckpt}", "save_predictions=true", f"predictions_dir={out}"],
        name="eval",
    )
    evaluate(ecfg)
    datamodule = hydra.utils.instantiate(ecfg.data)
    datamodule.setup("validate")
    val = datamodule.datasets["val"]
    sizes = {val.image_size(i) for i in range(len(val))}
    assert sizes == {(24, 32), (20, 36)}  # the val batches really mix sizes
    for i in range(len(val)):
        with Image.open(out / f"{val[i]['name']}.png") as img:
            assert (img.height, img.width) == val.image_size(i)
