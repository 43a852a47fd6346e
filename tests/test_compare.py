"""`make sweep` survives a failing job, and `make compare` aggregates a sweep's runs correctly."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from segloss.compare import main
from segloss.comparison.runs import load_runs
from segloss.comparison.summary import markdown_table, summarise
from segloss.errors import ConfigError

CLASSES = ["road", "car", "wall"]  # wall never occurs in these runs' validation split


def write_run(sweep: Path, num: int, loss: str, seed: int, curve: list[float], ious: dict[str, float]) -> Path:
    """A job directory as `make sweep` writes it: config.yaml, .hydra/hydra.yaml and csv/metrics.csv
    (one train row and one val row per epoch, like Lightning's CSVLogger); the best epoch gets ``ious``."""
    run = sweep / f"{num}_{loss}-unet-synthetic_city-s{seed}"
    (run / "csv").mkdir(parents=True)
    (run / ".hydra").mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "run_name": f"{loss}-unet-synthetic_city-s{seed}"}))
    choices = {"loss": loss, "model": "unet", "data": "synthetic_city"}
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    header = ["epoch", "step", "train/loss_epoch", "val/mIoU", *(f"val/IoU/{c}" for c in CLASSES)]
    best = max(range(len(curve)), key=curve.__getitem__)
    with (run / "csv" / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, header)
        writer.writeheader()
        for epoch, miou in enumerate(curve):
            writer.writerow({"epoch": epoch, "step": 10 * epoch, "train/loss_epoch": 1.0 / (epoch + 1)})
            per_class = ious if epoch == best else {"road": 0.1, "car": 0.1}
            writer.writerow({"epoch": epoch, "step": 10 * epoch, "val/mIoU": miou, "val/IoU/wall": ""}
                            | {f"val/IoU/{c}": v for c, v in per_class.items()})  # fmt: skip
    return run


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    write_run(root, 0, "ce", 0, [0.2, 0.5, 0.4], {"road": 0.9, "car": 0.1})
    write_run(root, 1, "ce", 1, [0.3, 0.6], {"road": 0.8, "car": 0.4})
    write_run(root, 10, "dice", 0, [0.1, 0.55], {"road": 0.7, "car": 0.5})
    failed = write_run(root, 12, "dice", 1, [0.9], {"road": 1.0, "car": 1.0})
    (failed / "FAILED").write_text("Traceback …")
    return root


def test_mean_std_over_seeds_at_each_runs_best_epoch(sweep):
    runs, skipped = load_runs(sweep)
    assert sorted((r.loss, r.seed, r.best_epoch) for r in runs) == [("ce", 0, 1), ("ce", 1, 1), ("dice", 0, 1)]
    assert skipped == [str(sweep / "12_dice-unet-synthetic_city-s1")]
    assert [r.loss for r in runs] == ["ce", "ce", "dice"]  # launch order: job 10 after job 1
    summary = summarise(runs)
    assert summary["columns"] == ["mIoU", "road", "car"]  # wall: no IoU anywhere → dropped
    assert summary["seeds"] == {"ce": 2, "dice": 1}
    mean, std = summary["stats"]["ce"]["mIoU"]
    assert mean == pytest.approx(0.55) and std == pytest.approx(math.sqrt(0.005))  # sample std of .5, .6
    assert summary["stats"]["ce"]["car"][0] == pytest.approx(0.25)
    assert summary["stats"]["dice"]["car"] == (pytest.approx(0.5), 0.0)
    assert summary["best"] == {"mIoU": "ce", "road": "ce", "car": "dice"}
    table = markdown_table(summary)
    assert "| ce | 2 | **55.0 ± 7.1** | **85.0 ± 7.1** | 25.0 ± 21.2 |" in table
    assert "| dice | 1 | 55.0 ± 0.0 | 70.0 ± 0.0 | **50.0 ± 0.0** |" in table


def test_cli_writes_tables_plots_and_a_reloadable_runs_json(sweep, tmp_path, capsys):
    out = tmp_path / "cmp"
    summary = main([str(sweep), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "3 runs" in printed and "skipped" in printed and "55.0 ± 7.1" in printed
    assert (out / "compare.md").read_text() == markdown_table(summary)
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert rows[0]["loss"] == "ce" and float(rows[0]["mIoU_mean"]) == pytest.approx(0.55)
    for png in ("iou_by_class.png", "miou_curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / png).stat().st_size > 5000
    reloaded, _ = load_runs(out)  # runs.json stands in for the sweep
    assert summarise(reloaded) == summary
    assert json.loads((out / "runs.json").read_text())[0]["curve"] == [[0, 0.2], [1, 0.5], [2, 0.4]]


def test_missing_or_empty_sweep_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_runs(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no finished runs under"):
        load_runs(tmp_path / "empty")


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_sweep(tmp_path):
    from tests.conftest import TINY_SYNTHETIC

    data_dir = tmp_path / "data"
    sweep = tmp_path / "sweep"
    command = [
        sys.executable, "-m", "segloss.train", "--multirun", *TINY_SYNTHETIC, f"paths.data_dir={data_dir}",
        "optimizer.lr=-1.0,0.002", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1", "logger=csv", "callbacks=none", "print_config=false",
        f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "SEGLOSS_TRACEBACK"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 2
    assert "optimizer.lr=-1.0 must be a positive number" in (jobs[0] / "FAILED").read_text()
    assert not (jobs[1] / "FAILED").exists() and (jobs[1] / "csv" / "metrics.csv").is_file()
    runs, skipped = load_runs(sweep)
    assert len(runs) == 1 and skipped == [str(jobs[0])]
