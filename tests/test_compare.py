"""`make sweep` survives a failing job, and `make compare` aggregates a sweep's runs correctly."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from segloss.compare import main
from segloss.comparison.runs import load_runs
from segloss.comparison.summary import add_statistics, markdown_table, summarise
from segloss.errors import ConfigError

CLASSES = ["road", "car", "wall"]  # wall never occurs in these runs' validation split


def write_run(
    sweep: Path, num: int, loss: str, seed: int, curve: list[float], ious: dict[str, float], scores: dict | None = None
) -> Path:
    """A job directory as `make sweep` writes it: config.yaml, .hydra/hydra.yaml and csv/metrics.csv
    (one train row and one val row per epoch, like Lightning's CSVLogger); the best epoch gets ``ious``."""
    run = sweep / f"{num}_{loss}-unet-synthetic_city-s{seed}"
    (run / "csv").mkdir(parents=True)
    (run / ".hydra").mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "run_name": f"{loss}-unet-synthetic_city-s{seed}"}))
    choices = {"loss": loss, "model": "unet", "data": "synthetic_city"}
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    header = [
        "epoch",
        "step",
        "train/loss_epoch",
        "val/mIoU",
        *(f"val/IoU/{c}" for c in CLASSES),
        "val/mBIoU",
        "val/ECE",
    ]
    best = max(range(len(curve)), key=curve.__getitem__)
    with (run / "csv" / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, header)
        writer.writeheader()
        for epoch, miou in enumerate(curve):
            writer.writerow({"epoch": epoch, "step": 10 * epoch, "train/loss_epoch": 1.0 / (epoch + 1)})
            per_class = ious if epoch == best else {"road": 0.1, "car": 0.1}
            extra = {f"val/{k}": v for k, v in (scores or {}).items()} if epoch == best else {}
            writer.writerow({"epoch": epoch, "step": 10 * epoch, "val/mIoU": miou, "val/IoU/wall": ""}
                            | {f"val/IoU/{c}": v for c, v in per_class.items()} | extra)  # fmt: skip
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
    assert add_statistics(summarise(reloaded), reloaded) == summary
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


def write_counts(run: Path, tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, classes=("road", "car")) -> None:
    """The per_image_val.npz a training writes for its best epoch (segloss.metrics.per_image.save_per_image)."""
    from segloss.metrics.per_image import save_per_image

    names = [f"img{i:03d}" for i in range(len(tp))]
    counts = {"index": torch.arange(len(tp)), "names": names, **{k: torch.from_numpy(v) for k, v in
              (("tp", tp), ("fp", fp), ("fn", fn))}}  # fmt: skip
    save_per_image(run / "per_image_val.npz", counts, list(classes), "val/mIoU", None)


@pytest.fixture
def counted_sweep(tmp_path):
    """3 losses × 3 seeds × 40 images: "better" detects 10 points more of each class than "ce"; "same" is drawn
    like "ce". The CSV rows carry the mIoU the counts give, as a training's would."""
    rng = np.random.default_rng(7)
    root = tmp_path / "sweep"
    for num, (loss, hit) in enumerate([("ce", 0.6), ("same", 0.6), ("better", 0.7)]):
        for seed in range(3):
            truth = rng.integers(200, 400, size=(40, 2))
            tp = rng.binomial(truth, hit)
            fp = rng.integers(20, 80, size=(40, 2))
            fn = truth - tp
            iou = tp.sum(0) / (tp + fp + fn).sum(0)
            run = write_run(root, 3 * num + seed, loss, seed, [0.1, float(iou.mean())], dict(zip(CLASSES, iou)))
            write_counts(run, tp, fp, fn)
    return root


def test_intervals_and_holm_corrected_paired_tests_from_per_image_counts(counted_sweep, tmp_path):
    runs, _ = load_runs(counted_sweep)
    summary = add_statistics(summarise(runs), runs, baseline="ce", draws=1000)
    for loss in ("ce", "same", "better"):
        mean = summary["stats"][loss]["mIoU"][0]
        low, high = summary["ci"][loss]["mIoU"]
        assert low < mean < high and high - low < 0.05
    better, same = summary["vs_baseline"]["better"], summary["vs_baseline"]["same"]
    assert better["delta"] == pytest.approx(summary["stats"]["better"]["mIoU"][0] - summary["stats"]["ce"]["mIoU"][0])
    assert better["interval"][0] > 0 and better["p_holm"] < 0.01  # 10 points of recall: clearly real
    assert same["interval"][0] < 0 < same["interval"][1] and same["p_holm"] > 0.05  # noise
    assert better["p_holm"] == pytest.approx(min(1.0, 2 * better["p"]))  # Holm: the smaller of 2 p-values × 2
    assert summary["vs_best"]["better"]["tied"] and math.isnan(summary["vs_best"]["better"]["p_holm"])
    assert not summary["vs_best"]["ce"]["tied"] and not summary["vs_best"]["same"]["tied"]
    table = markdown_table(summary)
    assert "Δ mIoU vs ce" in table and "| better | 3 | **" in table and "| baseline |" in table
    assert "] * |" in table  # better: a real difference
    out = tmp_path / "cmp"
    main([str(counted_sweep), "--out", str(out), "--baseline", "ce", "--draws", "1000"])
    rows = {row["loss"]: row for row in csv.DictReader((out / "compare.csv").open())}
    assert rows["better"]["vs_best"] == "best" and rows["same"]["vs_best"] == "<"
    assert float(rows["better"]["p_holm"]) == pytest.approx(better["p_holm"])
    reloaded, _ = load_runs(out)  # runs.json + the copied per-image counts stand in for the sweep
    assert all((out / Path(run.per_image).relative_to(out)).is_file() for run in reloaded)
    again = add_statistics(summarise(reloaded), reloaded, baseline="ce", draws=1000)
    assert again["ci"] == summary["ci"] and again["vs_baseline"]["better"]["p"] == better["p"]


def test_the_paired_test_holds_its_level_when_nothing_differs():
    """Under the null hypothesis (both losses drawn alike), p < 0.05 must be rare: ≤ 4 of 40 here."""
    from segloss.comparison.stats import Counts, paired_difference

    rng = np.random.default_rng(11)

    def draw() -> Counts:
        truth = rng.integers(100, 300, size=(3, 30, 4))
        tp = rng.binomial(truth, 0.5)
        return Counts([0, 1, 2], tp, tp + rng.integers(10, 60, size=truth.shape) + (truth - tp))

    p_values = [paired_difference(draw(), draw(), permutations=400, replicates=50, seed=k)["p"] for k in range(40)]
    assert sum(p < 0.05 for p in p_values) <= 4 and max(p_values) > 0.5


def test_an_unknown_baseline_is_a_clear_error(counted_sweep):
    runs, _ = load_runs(counted_sweep)
    with pytest.raises(ConfigError, match="--baseline 'focal' is not among the compared losses"):
        add_statistics(summarise(runs), runs, baseline="focal")


def test_the_table_reaches_wandb(counted_sweep, tmp_path, monkeypatch):
    from tests.test_wandb import inspect, media_rows

    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "cmp"
    main([str(counted_sweep), "--out", str(out), "--draws", "200", "--wandb"])
    (run,) = (out / "wandb").glob("offline-run-*")
    (row,) = media_rows(inspect(run, summary=False), "compare")
    table = json.loads((run / "files" / row["compare.path"]).read_text())
    rows = {r["loss"]: r for r in csv.DictReader((out / "compare.csv").open())}
    assert table["columns"] == list(rows["ce"])
    logged = {r[0]: r for r in table["data"]}
    assert logged["better"][-1] == "best" and f"{logged['better'][2]:.6f}" == rows["better"]["mIoU_mean"]


def test_boundary_iou_and_calibration_columns_mark_their_own_best(tmp_path):
    root = tmp_path / "sweep"
    write_run(root, 0, "ce", 0, [0.5], {"road": 0.9, "car": 0.1}, {"mBIoU": 0.30, "ECE": 0.02})
    write_run(root, 1, "focal", 0, [0.4], {"road": 0.8, "car": 0.1}, {"mBIoU": 0.35, "ECE": 0.08})
    write_run(root, 2, "dice", 0, [0.45], {"road": 0.8, "car": 0.2})  # logged neither
    runs, _ = load_runs(root)
    summary = summarise(runs)
    assert summary["extra"] == ["mBIoU", "ECE"]
    assert summary["best"]["mBIoU"] == "focal" and summary["best"]["ECE"] == "ce"  # lower ECE is better
    assert math.isnan(summary["stats"]["dice"]["ECE"][0])
    table = markdown_table(summary)
    assert "| mBIoU | ECE |" in table and "**35.0 ± 0.0**" in table and "**2.0 ± 0.0**" in table


def test_boundary_iou_recall_and_calibration_get_intervals_from_per_image_counts(counted_sweep):
    """Runs that stored the quality counts get 95 % intervals for those scores too (recall from TP/FN always);
    a run without them leaves the others' scores without intervals, with a note naming `make rescore`."""
    rng = np.random.default_rng(3)
    for npz in sorted(counted_sweep.rglob("per_image_val.npz")):
        with np.load(npz) as data:
            stored = dict(data)
        m = len(stored["names"])
        union = rng.integers(50, 100, size=(m, 2))
        count = rng.integers(100, 200, size=(m, 15))
        extra = {"band_union": union, "band_inter": rng.binomial(union, 0.4), "calib_count": count,
                 "calib_correct": rng.binomial(count, 0.8), "calib_confidence": 0.75 * count,
                 "nll_sum": 0.4 * count.sum(1, keepdims=True)}  # fmt: skip
        np.savez(npz, **stored, **extra)
    runs, _ = load_runs(counted_sweep)
    for run in runs:  # the logged scores, as a training would have them from the same counts
        with np.load(run.per_image) as data:
            run.scores = {"mBIoU": float((data["band_inter"].sum(0) / data["band_union"].sum(0)).mean()),
                          "ECE": float(np.abs(data["calib_correct"].sum(0) - data["calib_confidence"].sum(0)).sum()
                                       / data["calib_count"].sum()), "NLL": 0.4,
                          "mRecall": float((data["tp"].sum(0) / (data["tp"] + data["fn"]).sum(0)).mean())}  # fmt: skip
    summary = add_statistics(summarise(runs), runs, baseline="ce", draws=500)
    for loss in ("ce", "better"):
        for name in ("mBIoU", "ECE", "mRecall"):
            low, high = summary["ci"][loss][name]
            assert low < summary["stats"][loss][name][0] < high and high - low < 0.05, (loss, name)
        assert summary["ci"][loss]["NLL"] == pytest.approx((0.4, 0.4))
    assert summary["ci"]["better"]["mRecall"][0] > summary["ci"]["ce"]["mRecall"][1]  # 0.7 vs 0.6 recall
    assert not summary["notes"]
    (row,) = [line for line in markdown_table(summary).splitlines() if line.startswith("| ce |")]
    assert re.search(r"\| baseline \|  \| < \| \**\d+\.\d \[\d+\.\d, \d+\.\d\]\**", row), row
    with np.load(runs[0].per_image) as data:
        np.savez(runs[0].per_image, **{k: data[k] for k in ("index", "names", "class_names", "tp", "fp", "fn")})
    again = add_statistics(summarise(runs), runs, baseline="ce", draws=200)
    assert "mBIoU" not in again["ci"]["ce"] and "mRecall" in again["ci"]["ce"]
    assert any("make rescore" in note for note in again["notes"])


def test_a_difference_is_real_only_when_the_test_and_the_interval_agree():
    from segloss.comparison.stats import is_real

    assert is_real({"p_holm": 0.001, "interval": (0.01, 0.03)})
    assert is_real({"p_holm": 0.01, "interval": (-0.05, -0.02)})  # real, and worse
    assert not is_real({"p_holm": 0.001, "interval": (-0.01, 0.03)})  # images agree, another set of seeds may not
    assert not is_real({"p_holm": 0.2, "interval": (0.01, 0.03)})
