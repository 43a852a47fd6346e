"""`make rescore`: older runs get the per-image quality counts from their best checkpoint, only when the
re-scored TP/FP/FN prove that the predictions are the same ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

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


def _old_run(sweep, num: int, overrides: list[str]):
    """A finished run folder from before the quality counts (TP/FP/FN only), with its Hydra files."""
    from tests.helpers.runs import write_counts, write_run

    run = write_run(sweep, num, "ce", num, [0.5], {"road": 0.9, "car": 0.1})
    tp = np.arange(8).reshape(4, 2)
    write_counts(run, tp, tp, tp)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "epoch_000.ckpt").write_bytes(b"weights")
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    return run


def test_a_stranger_s_run_folder_cannot_make_rescore_run_code(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    evil = _old_run(sweep, 0, ["model.net={_target_: os.system, command: 'touch pwned'}"])
    escaping = _old_run(sweep, 1, ["seed=1", "+model/net@model.net=../../../tmp/evil"])
    tagged = _old_run(sweep, 2, ["seed=2"])
    (tagged / ".hydra" / "hydra.yaml").write_text("hydra: !!python/object/apply:os.system ['touch pwned']\n")
    bare = _old_run(sweep, 3, ["seed=3"])
    for name in ("hydra.yaml", "overrides.yaml"):
        (bare / ".hydra" / name).unlink()
    truncated = _old_run(sweep, 4, ["seed=4"])
    (truncated / "per_image_val.npz").write_bytes((truncated / "per_image_val.npz").read_bytes()[:40])
    pickled = _old_run(sweep, 5, ["seed=5"])
    with np.load(pickled / "per_image_val.npz") as data:
        arrays = dict(data)
    np.savez(pickled / "per_image_val.npz", **arrays, payload=np.array([{"os.system": "touch pwned"}], dtype=object))
    before = {
        run: (run / "per_image_val.npz").read_bytes() for run in (evil, escaping, tagged, bare, truncated, pickled)
    }
    assert rescore([str(sweep)]) == 1  # every run reported; none stops the others
    lines = {line.split(" ", 2)[1].rstrip(":"): line for line in capsys.readouterr().out.splitlines()}
    assert lines[str(evil)].startswith("REFUSED") and "names an instantiation key" in lines[str(evil)]
    assert lines[str(escaping)].startswith("REFUSED") and "outside this project's configs" in lines[str(escaping)]
    assert (
        lines[str(tagged)].startswith("FAILED")
        and f"cannot read {tagged / '.hydra' / 'hydra.yaml'}" in lines[str(tagged)]
    )
    assert lines[str(bare)].startswith("FAILED") and "no .hydra/hydra.yaml" in lines[str(bare)]
    assert (
        lines[str(truncated)].startswith("FAILED")
        and f"cannot read {truncated / 'per_image_val.npz'}" in lines[str(truncated)]
    )
    assert lines[str(pickled)].startswith("FAILED") and "Object arrays cannot be loaded" in lines[str(pickled)]
    assert all((run / "per_image_val.npz").read_bytes() == data for run, data in before.items())
    assert not list(tmp_path.rglob("pwned")) and not (Path.cwd() / "pwned").exists()
