"""Region-based training end to end (issue 26): a synthetic BraTS-like task trained with one sigmoid per nested
region (experiment=dice_bce_brats_regions), validated per region, evaluated, and its predictions written back as a
label map."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from segloss.data.synthetic_volumes import write_task
from tests.conftest import compose_config

MODEL = ["model.net.base_channels=4", "model.net.depth=2", "model.aux=null", "data.num_workers=0", "threads=1",
         "metrics.surface_distance=false"]  # fmt: skip
TINY = [*MODEL, "data.batch_size=4", "trainer.max_steps=6", "trainer.val_check_interval=6", "logger=csv",
        "callbacks=none"]  # fmt: skip


@pytest.fixture(scope="module")
def brats(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_task(root / "Task01_BrainTumour", "brats", cases=4, seed=0)
    return root


def test_a_region_trained_net_logs_region_scores_and_writes_label_maps(brats, tmp_path):
    from segloss.eval import evaluate
    from segloss.train import train

    common = ["experiment=dice_bce_brats_regions", f"paths.data_dir={brats}", f"paths.cache_dir={tmp_path / 'c'}"]
    out = train(compose_config("train", [*common, *TINY], tmp_path / "run"))
    module = out["trainer"].lightning_module
    assert module.regions.names == ("whole_tumour", "tumour_core", "enhancing_tumour")
    assert module.regions.write == (1, 2, 3)
    rows = list(csv.DictReader((Path(out["output_dir"]) / "csv" / "metrics.csv").open()))
    scored = [r for r in rows if r.get("val/region_case_mDice")]
    assert scored, "the validation logged no region score"
    assert "val/ECE" not in scored[-1], "a softmax calibration of independent region sigmoids means nothing"
    for name in ("whole_tumour", "tumour_core", "enhancing_tumour"):
        assert 0.0 <= float(scored[-1][f"val/region_Dice/{name}"]) <= 1.0
    # what the module predicts is the label map its sigmoids write: WT alone → 1, WT+TC → 2, ET → 3
    logits = torch.tensor([[-1.0, 2.0, 2.0, 2.0], [-1.0, -1.0, 2.0, 2.0], [-1.0, -1.0, -1.0, 2.0]]).view(1, 3, 1, 4)
    assert module.to_classes(logits).tolist() == [[[0, 1, 2, 3]]]
    # the multi-hot target of a label map, as the loss gets it
    target = module.loss_target({"mask": torch.tensor([[[0, 1, 2, 3, 255]]])})
    assert target[0, :, 0].tolist() == [[0, 1, 1, 1, 255], [0, 0, 1, 1, 255], [0, 0, 0, 1, 255]]
    ckpt = out["best_ckpt"]
    results = evaluate(compose_config("eval", [*common, *MODEL, f"ckpt_path='{ckpt}'"], tmp_path / "eval"))
    assert set(results) >= {"region_Dice", "region_case_mDice"}


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("model.net.num_classes=4",  # one output per class, not per region
         r"net outputs 4 channels but data.regions names 3 regions \(whole_tumour, .*\); set model.net.num_classes=3"),
        ("loss=dice_ce",  # a loss of label maps given the regions' multi-hot target
         r"data.regions trains one sigmoid per region, .* refused .* loss=dice_bce_regions"),
    ],
)  # fmt: skip
def test_a_region_setting_that_does_not_fit_is_named(brats, make_cfg, tmp_path, override, named):
    from segloss.errors import ConfigError
    from segloss.train import train

    cfg = make_cfg(["experiment=dice_bce_brats_regions", f"paths.data_dir={brats}", *TINY, override,
                    f"paths.cache_dir={tmp_path / 'c'}"])  # fmt: skip
    with pytest.raises(ConfigError, match=named):
        train(cfg)
