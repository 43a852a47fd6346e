"""`make rescore`: older runs get the per-image quality counts from their best checkpoint, only when the
re-scored TP/FP/FN prove that the predictions are the same ones."""

from __future__ import annotations

import numpy as np
import pytest

from segloss.rescore import main as rescore
from tests.conftest import QUIET_RUN, TINY_SYNTHETIC, run_cli

COUNTS = ("index", "names", "class_names", "tp", "fp", "fn", "metric", "value")


@pytest.mark.slow
def test_rescore_adds_the_quality_counts_of_the_same_predictions_and_refuses_others(tmp_path, capsys):
    run = tmp_path / "sweep" / "0_ce"
    overrides = [*TINY_SYNTHETIC, *QUIET_RUN, f"paths.data_dir={tmp_path / 'data'}", "trainer.max_epochs=1",
                 "+trainer.limit_train_batches=2", "metrics=study", f"hydra.run.dir={run}"]  # fmt: skip
    run_cli("train", overrides)
    stored = run / "per_image_val.npz"
    with np.load(stored) as data:
        original = dict(data)
    assert {"band_inter", "calib_confidence", "small_found"} <= set(original)  # a training stores them itself
    np.savez(stored, **{k: original[k] for k in COUNTS})  # as a run from before the quality counts

    assert rescore([str(tmp_path / "sweep")]) == 0
    assert "TP/FP/FN reproduced on 12 images" in capsys.readouterr().out
    with np.load(stored) as data:
        again = dict(data)
    assert set(again) == set(original)
    for key in original:  # the same predictions: the same counts, float64 sums included
        np.testing.assert_array_equal(again[key], original[key], err_msg=key)
    assert rescore([str(tmp_path / "sweep")]) == 0 and "already holds" in capsys.readouterr().out

    tampered = {k: original[k] for k in COUNTS}
    tampered["tp"] = tampered["tp"].copy()
    tampered["tp"][3, 0] += 1  # not what this checkpoint predicts
    np.savez(stored, **tampered)
    before = stored.read_bytes()
    assert rescore([str(tmp_path / "sweep")]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out and "tp differs on 1 images" in out
    assert stored.read_bytes() == before and not list(run.glob("rescore-*"))  # left as it was, no leftovers


def test_rescore_names_a_missing_folder(tmp_path, capsys):
    assert rescore([str(tmp_path / "nowhere")]) == 2
    assert "is not a folder; give DIR=logs/train/multiruns/<sweep>" in capsys.readouterr().err
    assert rescore([str(tmp_path)]) == 2
    assert "no runs with per_image_val.npz" in capsys.readouterr().err
