"""3D training end to end on a CPU (issue 26): the demo experiment (synthetic spleen-like CT volumes, the 3D U-Net
on patches, whole-volume validation by the Gaussian sliding window) trains, scores each case in 3D (Dice, HD95,
ASSD in mm) and evaluates its checkpoint to the same numbers."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from tests.conftest import compose_config

MODEL = ["experiment=demo_msd3d", "data.generator.cases=4", "data.dataset.patch_size=[8,16,16]",
         "model.net.base_channels=4", "threads=1"]  # fmt: skip
TRAINING = ["data.dataset.samples_per_epoch=4", "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1",
            "logger=csv"]  # fmt: skip


def folders(root: Path) -> list[str]:
    return [f"paths.data_dir={root / 'data'}", f"paths.cache_dir={root / 'cache'}"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from segloss.train import train

    root = tmp_path_factory.mktemp("train3d")
    return train(compose_config("train", [*MODEL, *TRAINING, *folders(root)], root / "run")), root


def test_a_3d_net_trains_on_patches_and_is_scored_per_case_in_3d(trained):
    out, _ = trained
    module = out["trainer"].lightning_module
    assert type(module.net).__name__ == "UNet3D" and module.channels_last is False
    assert module.inference.mode == "gaussian" and module.inference.patch_size == (8, 16, 16)
    rows = [r for r in csv.DictReader((Path(out["output_dir"]) / "csv" / "metrics.csv").open()) if r.get("val/loss")]
    assert len(rows) == 2  # one validation per epoch
    for key in ("val/case_mDice", "val/case_mHD95", "val/case_mASSD", "val/case_Dice/spleen"):
        assert math.isfinite(float(rows[-1][key])), key
    assert 0.0 <= float(rows[-1]["val/case_mDice"]) <= 1.0
    per_image = out["results"]["per_image"]  # one row per validation volume (the cases, not their slices)
    assert len(per_image["names"]) == 1 and per_image["names"][0].startswith("spleen_")
    assert (Path(out["output_dir"]) / "predictions" / "latest.png").is_file()


def test_the_3d_checkpoint_evaluates_to_the_numbers_of_its_validation(trained):
    from segloss.eval import evaluate

    out, root = trained
    overrides = [*MODEL, *folders(root), f"ckpt_path='{out['best_ckpt']}'"]
    results = evaluate(compose_config("eval", overrides, root / "eval"))
    best = out["results"]
    assert float(results["case_mDice"]) == pytest.approx(float(best["case_mDice"]), abs=1e-6)
