"""`make report`'s "where the losses disagree": the images with the largest paired per-image IoU difference, drawn
with both losses' predictions, and run folders that cannot make it run code."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from segloss.comparison.runs import load_runs
from segloss.errors import ConfigError
from segloss.report.disagree import choose_runs, render_pairs, select_pairs
from segloss.report.panels import GAP, TITLE_HEIGHT
from segloss.report.replay import replay_config
from segloss.utils.config import CONFIG_DIR
from tests.helpers.runs import write_counts, write_run

# Four images, classes (road, car). Per run, per image: (tp, fp, fn) of road and of car.
SCENES = {
    # image 0: the same for every run
    "same": [((8, 0, 0), (2, 0, 0))] * 4,
    # image 1: lovasz finds the car, ce misses it (car only as a false negative; road as FP)
    "car": [((6, 0, 0), (4, 0, 0)), ((6, 0, 0), (3, 0, 1)), ((6, 4, 0), (0, 0, 4)), ((6, 3, 0), (1, 0, 3))],
    # image 2: ce slightly better; a car predicted where there is none counts (IoU 0)
    "ghost": [((5, 1, 1), (0, 1, 0)), ((5, 1, 1), (0, 1, 0)), ((6, 0, 0), (0, 0, 0)), ((5, 1, 1), (0, 0, 0))],
    # image 3: every pixel ignored: no class, no IoU, never picked
    "void": [((0, 0, 0), (0, 0, 0))] * 4,
}
RUNS = [("lovasz", 0), ("lovasz", 1), ("ce", 0), ("ce", 1)]  # the order of each scene's rows


def expected_iou(row) -> float:
    """Per-image IoU by hand: the mean over the classes with any TP, FP or FN of TP / (TP + FP + FN)."""
    values = [tp / (tp + fp + fn) for tp, fp, fn in row if tp + fp + fn]
    return sum(values) / len(values) if values else float("nan")


def fake_sweep(sweep: Path, names=None, reorder_last: bool = False) -> list:
    for k, (loss, seed) in enumerate(RUNS):
        run = write_run(sweep, k, loss, seed, [0.5], {"road": 0.9, "car": 0.1})
        counts = np.array([SCENES[scene][k] for scene in SCENES])  # images × classes × (tp, fp, fn)
        image_names = list(names or SCENES)
        if reorder_last and k == len(RUNS) - 1:
            image_names = image_names[::-1]
        write_counts(run, counts[..., 0], counts[..., 1], counts[..., 2], names=image_names)
    return load_runs(sweep)[0]


def test_select_pairs_ranks_images_by_the_paired_difference_of_seed_means(tmp_path):
    runs = fake_sweep(tmp_path / "sweep")
    expected = []
    for index, (scene, rows) in enumerate(SCENES.items()):
        a = np.mean([expected_iou(rows[k]) for k, (loss, _) in enumerate(RUNS) if loss == "lovasz"])
        b = np.mean([expected_iou(rows[k]) for k, (loss, _) in enumerate(RUNS) if loss == "ce"])
        expected.append({"image": scene, "index": index, "iou_a": a, "iou_b": b, "delta": a - b})
    lovasz, ce = (1.0 + (1.0 + 0.75) / 2) / 2, ((0.6 + 0.0) / 2 + (6 / 9 + 0.25) / 2) / 2  # image 1 by hand
    assert expected[1]["delta"] == pytest.approx(lovasz - ce)
    ranked = sorted(expected[:3], key=lambda e: -abs(e["delta"]))
    assert [e["image"] for e in ranked] == ["car", "ghost", "same"]

    picks = select_pairs(runs, "lovasz", "ce", 10)
    assert [p["image"] for p in picks] == ["car", "ghost", "same"]  # "void" has no IoU
    for pick, want in zip(picks, ranked, strict=True):
        assert pick["index"] == want["index"] and pick["seeds_a"] == pick["seeds_b"] == 2
        for key in ("iou_a", "iou_b", "delta"):
            assert pick[key] == pytest.approx(want[key], abs=1e-12), key
    assert picks[1]["delta"] < 0 < picks[0]["delta"]  # signed: lovasz − ce
    assert [p["image"] for p in select_pairs(runs, "lovasz", "ce", 1)] == ["car"]
    flipped = select_pairs(runs, "ce", "lovasz", 2)
    assert [p["delta"] for p in flipped] == pytest.approx([-p["delta"] for p in picks[:2]])


def test_select_pairs_refuses_unpaired_images_and_missing_losses(tmp_path):
    runs = fake_sweep(tmp_path / "reordered", reorder_last=True)
    with pytest.raises(ConfigError, match="not scored on the same validation images in the same order"):
        select_pairs(runs, "lovasz", "ce", 3)
    runs = fake_sweep(tmp_path / "ok")
    with pytest.raises(ConfigError, match=r"no runs of loss 'dice'.*\['ce', 'lovasz'\]"):
        select_pairs(runs, "lovasz", "dice", 3)
    for run in runs:
        if run.loss == "ce":
            run.per_image = ""
    with pytest.raises(ConfigError, match=r"run\(s\) of loss 'ce' hold no per-image counts.*lovasz"):
        select_pairs(runs, "lovasz", "ce", 3)


# ----------------------------------------------------------------------------------------- a tiny real sweep

TINY = ["data.generator.num_train=1", "data.generator.num_val=3", "data.generator.height=32",
        "data.generator.width=64", "model.net.base_channels=4", "model.net.depth=2"]  # fmt: skip
MIOU = {("lovasz", 0): 0.5, ("ce", 0): 0.6, ("ce", 1): 0.4}  # ce's median (lower middle) is seed 1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A sweep of three runs (lovasz s0, ce s0, ce s1) on a 3-image synthetic_city: each folder holds Hydra's
    ``.hydra/config.yaml`` (unresolved, as Hydra saves it) and an untrained net (its own init) as the checkpoint
    of its best epoch."""
    from segloss.build import build_module
    from segloss.data.synthetic import SyntheticCity

    base = tmp_path_factory.mktemp("disagree")
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["data=synthetic_city", f"paths.data_dir={base / 'data'}", *TINY])
    SyntheticCity(num_train=1, num_val=3, height=32, width=64).ensure(base / "data" / "synthetic_city")
    states = {}
    for k, ((loss, seed), miou) in enumerate(MIOU.items()):
        run = write_run(base / "sweep", k, loss, seed, [miou], {"road": miou, "car": miou})
        OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
        torch.manual_seed(10 + k)
        state = build_module(cfg, with_optimizer=False).state_dict()
        state["net.head.weight"] *= 30  # no bias, larger logits: the untrained net's classes vary over an image
        state["net.head.bias"].zero_()
        states[loss, seed] = state
        (run / "checkpoints").mkdir()
        torch.save({"state_dict": states[loss, seed]}, run / "checkpoints" / "epoch_000.ckpt")
    return base, cfg, states


def own_prediction(cfg, state, image: torch.Tensor) -> np.ndarray:
    """The module's argmax on one raw image, normalised by the data's eval transform (no segloss inference)."""
    from segloss.build import build_module

    module = build_module(cfg, with_optimizer=False)
    module.load_state_dict(state)
    module.eval()
    x = instantiate(cfg.data.eval_transform)({"image": image, "mask": torch.zeros(image.shape[1:]), "name": ""})
    with torch.no_grad():
        return module(x["image"][None]).argmax(1)[0].numpy()


def test_render_pairs_draws_image_truth_and_both_losses_predictions(tiny, tmp_path):
    from segloss.data.cityscapes import CityscapesDataset
    from segloss.utils.visualize import palette_lut

    base, cfg, states = tiny
    runs = load_runs(base / "sweep")[0]
    chosen = choose_runs(runs, "lovasz", "ce")  # lovasz: its only seed; ce: the median mIoU (lower middle)
    assert [(r.seed, c) for r, c in chosen] == [(r.seed, Path(r.path) / "checkpoints" / "epoch_000.ckpt") for r, _ in
                                                chosen] and [r.seed for r, _ in chosen] == [0, 1]  # fmt: skip
    assert [r.seed for r, _ in choose_runs(runs, "lovasz", "ce", seed=0)] == [0, 0]  # both have seed 0
    assert [r.seed for r, _ in choose_runs(runs, "lovasz", "ce", seed=1)] == [0, 1]  # lovasz has no seed 1

    dataset = CityscapesDataset(base / "data" / "synthetic_city", "val")
    picks = [{"image": dataset[i]["name"], "index": i, "delta": 0.1} for i in (2, 0)]
    drawn = render_pairs(runs, "lovasz", "ce", picks, tmp_path / "out")
    assert [(d["seed_a"], d["seed_b"], d["index"]) for d in drawn] == [(0, 1, 2), (0, 1, 0)]
    lut = palette_lut(CityscapesDataset.PALETTE)
    for pick in drawn:
        item = dataset[pick["index"]]
        png = np.asarray(Image.open(pick["png"]).convert("RGB"))
        height, width = item["mask"].shape
        assert png.shape == (TITLE_HEIGHT + height, 4 * width + 3 * GAP, 3)
        tiles = [png[TITLE_HEIGHT:, k * (width + GAP) : k * (width + GAP) + width] for k in range(4)]
        np.testing.assert_array_equal(tiles[0], item["image"].permute(1, 2, 0).numpy())
        np.testing.assert_array_equal(tiles[1], lut[np.clip(item["mask"].numpy(), 0, 255)])  # ignore: black
        for tile, key in ((tiles[2], ("lovasz", 0)), (tiles[3], ("ce", 1))):
            pred = own_prediction(cfg, states[key], item["image"])
            assert len(np.unique(pred)) >= 3  # a comparison that would see misplaced pixels
            np.testing.assert_array_equal(tile, lut[pred])
        assert not np.array_equal(tiles[2], tiles[3])
        assert 0.0 <= pick["iou_run_a"] <= 1.0 and 0.0 <= pick["iou_run_b"] <= 1.0

    wrong = [{"image": "somewhere_else", "index": 1}]
    with pytest.raises(ConfigError, match="not 'somewhere_else' as in the per-image counts"):
        render_pairs(runs, "lovasz", "ce", wrong, tmp_path / "wrong")
    without = [type(r)(**{**r.__dict__, "path": ""}) for r in runs]  # as read back from a compare folder
    with pytest.raises(ConfigError, match="no run of loss 'lovasz' has the checkpoint of its best epoch"):
        render_pairs(without, "lovasz", "ce", picks, tmp_path / "none")
    data = base / "data" / "synthetic_city"
    data.rename(data.with_name("away"))
    try:
        with pytest.raises(ConfigError, match=re.escape(f"data.root={data} does not exist")):
            render_pairs(runs, "lovasz", "ce", picks, tmp_path / "nodata")
    finally:
        data.with_name("away").rename(data)
    assert not (tmp_path / "none").exists() and not (tmp_path / "nodata").exists()


def test_a_run_folder_with_a_foreign_target_is_refused_before_anything_runs(tiny, tmp_path):
    base, _, _ = tiny
    sweep = tmp_path / "sweep"
    shutil.copytree(base / "sweep", sweep)
    pwned = tmp_path / "pwned"
    runs = load_runs(sweep)[0]
    evil = next(Path(r.path) for r in runs if (r.loss, r.seed) == ("ce", 1))
    config = yaml.safe_load((evil / ".hydra" / "config.yaml").read_text())
    config["model"]["net"] = {"_target_": "os.system", "command": f"touch {pwned}"}
    (evil / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    picks = [{"image": "x", "index": 0}]
    with pytest.raises(ConfigError, match=r"refusing to rebuild .*model\.net\._target_='os\.system'.*data, not code"):
        render_pairs(runs, "lovasz", "ce", picks, tmp_path / "out")
    # a target made by a resolver is checked too: the config is resolved before it is checked
    config["model"]["net"] = f"${{oc.create:{{_target_: os.system, command: 'touch {pwned}'}}}}"
    (evil / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"model\.net\._target_='os\.system'"):
        replay_config(evil)
    assert not pwned.exists() and not (tmp_path / "out").exists()
