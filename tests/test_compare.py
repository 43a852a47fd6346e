"""`make sweep` survives a failing job, and `make compare` counts only finished, comparable runs and tests them."""

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
import yaml

from segloss.compare import main
from segloss.comparison import variance
from segloss.comparison.groups import group_runs
from segloss.comparison.runs import LeftOut, load_runs, read_run
from segloss.comparison.summary import add_statistics, summarise
from segloss.comparison.table import markdown_table
from segloss.errors import ConfigError
from tests.helpers.runs import CLASSES, write_counts, write_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    write_run(root, 0, "ce", 0, [0.2, 0.5, 0.4], {"road": 0.9, "car": 0.1})
    write_run(root, 1, "ce", 1, [0.3, 0.6], {"road": 0.8, "car": 0.4}, planned=3)  # stopped early: COMPLETED says so
    write_run(root, 10, "dice", 0, [0.1, 0.55], {"road": 0.7, "car": 0.5}, planned=3)
    failed = write_run(root, 12, "dice", 1, [0.9], {"road": 1.0, "car": 1.0}, completed=False, planned=3)
    (failed / "FAILED").write_text("Traceback …")
    return root


def test_mean_std_over_seeds_at_each_runs_best_epoch(sweep):
    runs, left_out = load_runs(sweep)
    assert sorted((r.loss, r.seed, r.best_epoch) for r in runs) == [("ce", 0, 1), ("ce", 1, 1), ("dice", 0, 1)]
    assert [x.path for x in left_out] == [str(sweep / "12_dice-unet-synthetic_city-s1")]
    assert left_out[0].reason.startswith("failed")
    assert [r.loss for r in runs] == ["ce", "ce", "dice"]  # launch order: job 10 after job 1
    summary = summarise(runs)
    assert summary["columns"] == ["mIoU", "road", "car"]  # wall: no IoU anywhere → dropped
    assert summary["seeds"] == {"ce": 2, "dice": 1}
    mean, std = summary["stats"]["ce"]["mIoU"]
    assert mean == pytest.approx(0.55) and std == pytest.approx(math.sqrt(0.005))  # sample std of .5, .6
    assert summary["stats"]["ce"]["car"][0] == pytest.approx(0.25)
    assert summary["stats"]["dice"]["car"][0] == pytest.approx(0.5) and math.isnan(summary["stats"]["dice"]["car"][1])
    assert summary["best"] == {"mIoU": "ce", "road": "ce", "car": "dice"}
    table = markdown_table(summary)
    assert "| ce | 2 | **55.0 ± 7.1** | **85.0 ± 7.1** | 25.0 ± 21.2 |" in table
    assert "| dice | 1 | 55.0 ± n/a (1 seed) | 70.0 ± n/a (1 seed) | **50.0 ± n/a (1 seed)** |" in table  # not ± 0.0


def test_cli_writes_tables_plots_a_reloadable_runs_json_and_what_it_left_out(sweep, tmp_path, capsys):
    out = tmp_path / "cmp"
    summary = main([str(sweep), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "3 runs" in printed and "55.0 ± 7.1" in printed
    assert ".: 3 runs counted, 1 left out" in printed and "left out 12_dice-unet-synthetic_city-s1: failed" in printed
    assert (out / "compare.md").read_text() == markdown_table(summary)
    assert (out / "left_out.txt").read_text().startswith(str(sweep / "12_dice-unet-synthetic_city-s1") + "\tfailed")
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


def test_a_killed_run_is_left_out_and_an_older_finished_run_without_a_marker_counts(tmp_path, capsys):
    root = tmp_path / "sweep"
    write_run(root / "a", 0, "ce", 0, [0.4, 0.5], {"road": 0.9, "car": 0.1})
    killed = write_run(root / "a", 1, "ce", 1, [0.6], {"road": 0.9, "car": 0.3}, completed=False, planned=10)
    older = write_run(root / "b", 0, "ce", 2, [0.3, 0.45], {"road": 0.8, "car": 0.1}, completed=False)
    started = root / "b" / "1_ce-unet-synthetic_city-s3"  # SIGKILLed before its first log: config only
    (started / ".hydra").mkdir(parents=True)
    (started / "config.yaml").write_text(yaml.safe_dump({"seed": 3, "trainer": {"max_epochs": 10}}))
    found = read_run(killed)
    assert isinstance(found, LeftOut) and "1 epochs finished of 10 planned" in found.reason
    assert read_run(older).finished.startswith("last epoch = planned")
    runs, left_out = load_runs(root)
    assert sorted(run.seed for run in runs) == [0, 2]
    assert sorted(x.path for x in left_out) == [str(killed), str(started)]
    main([str(root), "--out", str(tmp_path / "cmp")])
    printed = capsys.readouterr().out
    assert "a: 1 runs counted, 1 left out" in printed and "b: 1 runs counted, 1 left out" in printed
    assert "no csv/metrics.csv" in printed and "of 10 planned (killed, or still running)" in printed


def test_runs_of_different_experiments_are_compared_apart_and_loss_settings_name_their_rows(tmp_path, capsys):
    root = tmp_path / "sweep"
    for num, (loss, data, gamma) in enumerate([("ce", "a", None), ("focal", "a", 1.0), ("focal", "a", 2.0),
                                               ("ce", "b", None), ("focal", "b", 1.0)]):  # fmt: skip
        config = {
            "data": {"name": data},
            "loss": {"gamma": gamma} if gamma else {},
            "paths": {"output_dir": f"/x/{num}"},
        }
        write_run(root, num, loss, 0, [0.5], {"road": 0.9, "car": 0.1}, config=config)
    # a newer run of the same focal setting whose config says the preset's family (loss.family): a tag, not a setting
    config = {
        "data": {"name": "b"},
        "loss": {"gamma": 1.0, "family": "distribution-based"},
        "paths": {"output_dir": "/x/5"},
    }
    write_run(root, 5, "focal", 1, [0.5], {"road": 0.9, "car": 0.1}, config=config)
    runs, _ = load_runs(root)
    groups, repeated = group_runs(runs)
    assert repeated == [] and [setting for setting, _ in groups] == [{"data.name": "a"}, {"data.name": "b"}]
    assert [run.loss for run in groups[0][1]] == ["ce", "focal[gamma=1.0]", "focal[gamma=2.0]"]
    assert [run.loss for run in groups[1][1]] == ["ce", "focal", "focal"]  # one setting of focal in group b
    summaries = main([str(root), "--out", str(tmp_path / "cmp")])
    assert set(summaries) == {"data.name=a", "data.name=b"}
    assert (tmp_path / "cmp" / "data.name=a" / "compare.md").is_file()
    assert (tmp_path / "cmp" / "data.name=b" / "compare.md").is_file()
    assert "sweep — data.name=a: 3 runs" in capsys.readouterr().out
    assert len(group_runs(runs, ignore=("data.name",))[0]) == 1  # --ignore data.name: one group


def test_a_seed_trained_twice_counts_once(tmp_path):
    root = tmp_path / "sweep"
    write_run(root / "first", 0, "ce", 0, [0.5], {"road": 0.9, "car": 0.1})
    again = write_run(root / "second", 0, "ce", 0, [0.6], {"road": 0.9, "car": 0.3})
    runs, _ = load_runs(root)
    (_, kept), repeated = group_runs(runs)[0][0], group_runs(runs)[1]
    assert [run.path for run in kept] == [str(again)] and len(repeated) == 1
    assert "ce seed 0 again in" in repeated[0].reason


def counted(root: Path, losses: dict[str, float], seeds: int = 3, images: int = 40, rng_seed: int = 7) -> Path:
    """``losses`` (name → pixel hit rate) × ``seeds`` × ``images`` with per-image counts; each run's hit rate moves
    by a run effect (SD 2 points), so the seeds differ as trainings do. The CSV rows carry the mIoU the counts
    give, as a training's would."""
    rng = np.random.default_rng(rng_seed)
    num = 0
    for loss, hit in losses.items():
        for seed in range(seeds):
            truth = rng.integers(200, 400, size=(images, 2))
            tp = rng.binomial(truth, np.clip(hit + rng.normal(0, 0.02), 0, 1))
            fp = rng.integers(20, 80, size=(images, 2))
            fn = truth - tp
            iou = tp.sum(0) / (tp + fp + fn).sum(0)
            run = write_run(root, num, loss, seed, [0.1, float(iou.mean())], dict(zip(CLASSES, iou)))
            write_counts(run, tp, fp, fn)
            num += 1
    return root


@pytest.fixture
def counted_sweep(tmp_path):
    """3 losses × 3 seeds × 40 images: "better" finds 10 points more of each class than "ce"; "same" is drawn
    like "ce"."""
    return counted(tmp_path / "sweep", {"ce": 0.6, "same": 0.6, "better": 0.7})


def test_intervals_tests_and_marks_from_per_image_counts(counted_sweep, tmp_path):
    runs, _ = load_runs(counted_sweep)
    summary = add_statistics(summarise(runs), runs, baseline="ce")
    for loss in ("ce", "same", "better"):
        mean = summary["stats"][loss]["mIoU"][0]
        low, high = summary["ci"][loss]["mIoU"]
        assert low < mean < high and high - low < 0.2
    better, same = summary["vs_baseline"]["better"], summary["vs_baseline"]["same"]
    assert better["delta"] == pytest.approx(summary["stats"]["better"]["mIoU"][0] - summary["stats"]["ce"]["mIoU"][0])
    assert better["paired"] and better["seeds"] == 3 and len(better["per_seed"]) == 3
    assert better["real"] and better["adjusted"][0] > 0  # 10 points of recall: clearly real
    assert not same["real"] and same["adjusted"][0] < 0 < same["adjusted"][1]
    assert better["p_holm"] == pytest.approx(min(1.0, 2 * better["p"]))  # Holm: the smaller of 2 p-values × 2
    assert summary["vs_best"] == {"better": "best", "ce": "<", "same": "<"}
    table = markdown_table(summary)
    assert "Δ mIoU vs ce" in table and "| better | 3 | **" in table and "| baseline |" in table
    assert re.search(
        r"\| better \| 3 \| \*\*[^|]+\*\* \| \+\d+\.\d \[\+\d+\.\d, \+\d+\.\d\] \* \| (< 0\.001|0\.0\d\d) \|", table
    )
    out = tmp_path / "cmp"
    main([str(counted_sweep), "--out", str(out), "--baseline", "ce"])
    rows = {row["loss"]: row for row in csv.DictReader((out / "compare.csv").open())}
    assert rows["better"]["vs_best"] == "best" and rows["same"]["vs_best"] == "<"
    assert rows["better"]["real"] == "true" and rows["same"]["real"] == "false" and rows["better"]["paired"] == "true"
    assert float(rows["better"]["p_holm"]) == pytest.approx(better["p_holm"], abs=1e-6)
    reloaded, _ = load_runs(out)  # runs.json + the copied per-image counts stand in for the sweep
    assert all((out / Path(run.per_image).relative_to(out)).is_file() for run in reloaded)
    again = add_statistics(summarise(reloaded), reloaded, baseline="ce")
    assert again["ci"] == summary["ci"] and again["vs_baseline"]["better"]["p"] == better["p"]


def test_one_or_two_seeds_give_no_test_and_say_why(tmp_path):
    root = counted(tmp_path / "sweep", {"ce": 0.6, "better": 0.7}, seeds=2)
    runs, _ = load_runs(root)
    summary = add_statistics(summarise(runs), runs, baseline="ce")
    assert summary["vs_baseline"] == {} and summary["untested"] == {"better": "needs ≥ 3 seeds of each loss"}
    table = markdown_table(summary)
    assert "| n/a: needs ≥ 3 seeds of each loss | — | — |" in table and "fewer than 3 seeds" in table


def test_runs_with_no_image_in_common_are_a_clear_error(tmp_path):
    root = tmp_path / "sweep"
    rng = np.random.default_rng(0)
    for num, names in enumerate([["a", "b"], ["c", "d"]]):
        run = write_run(root, num, "ce" if num == 0 else "dice", 0, [0.5], {"road": 0.5, "car": 0.5})
        tp = rng.integers(1, 9, (2, 2))
        write_counts(run, tp, tp, tp, names=names)
    runs, _ = load_runs(root)
    with pytest.raises(ConfigError, match="scored no image in common"):
        add_statistics(summarise(runs), runs)


def test_unreadable_files_are_one_line_errors_naming_them(counted_sweep, tmp_path, capsys):
    per_image = sorted(counted_sweep.rglob("per_image_val.npz"))[1]
    per_image.write_bytes(b"not a zip")
    with pytest.raises(SystemExit) as stop:
        main([str(counted_sweep), "--out", str(tmp_path / "cmp")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"cannot read {per_image}" in err
    config = sorted(counted_sweep.rglob("config.yaml"))[0]
    config.write_text("seed: [unclosed")
    with pytest.raises(ConfigError, match=f"cannot read {re.escape(str(config))}"):
        load_runs(counted_sweep)
    config.write_text("seed: 0\n")
    marker = sorted(counted_sweep.rglob("COMPLETED"))[0]
    marker.write_text("{truncated")
    with pytest.raises(ConfigError, match=f"cannot read {re.escape(str(marker))}"):
        load_runs(counted_sweep)
    marker.write_text("{}")
    metrics = sorted(counted_sweep.rglob("metrics.csv"))[0]
    metrics.write_text("epoch,val/mIoU\nseven,0.5\n")
    with pytest.raises(ConfigError, match=f"cannot read {re.escape(str(metrics))}"):
        load_runs(counted_sweep)


BAD_ARGS = [(["--draws", "5"], "--draws"), (["--alpha", "2"], "2 is not a significance"),
            (["--plan", "-1"], "-1 is not a difference"), (["--plan", "x"], "--plan")]  # fmt: skip


@pytest.mark.parametrize("args,named", BAD_ARGS)
def test_bad_arguments_are_one_line_errors(counted_sweep, capsys, args, named):
    with pytest.raises(SystemExit) as stop:
        main([str(counted_sweep), *args])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and named in err


def test_an_unknown_baseline_is_a_clear_error(counted_sweep):
    runs, _ = load_runs(counted_sweep)
    with pytest.raises(ConfigError, match="--baseline 'focal' is not among the compared losses"):
        add_statistics(summarise(runs), runs, baseline="focal")


def test_plan_says_how_many_seeds_a_difference_needs(counted_sweep, tmp_path, capsys):
    out = tmp_path / "cmp"
    summary = main([str(counted_sweep), "--out", str(out), "--baseline", "ce", "--plan", "2"])
    plan = (out / "plan.md").read_text()
    assert plan in capsys.readouterr().out
    level = 0.05 / 2
    for loss in ("same", "better"):
        components = summary["vs_baseline"][loss]["estimate"].components
        needed = variance.seeds_needed(components, 0.02, level)
        row = next(line for line in plan.splitlines() if line.startswith(f"| {loss} |"))
        assert f"| {needed if needed else 'not reachable with these images'} |" in row
        assert f"| {100 * variance.detectable(components, level):.1f} |" in row


def test_the_table_reaches_wandb(counted_sweep, tmp_path, monkeypatch):
    from tests.helpers.wandb_reader import inspect, media_rows

    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "cmp"
    main([str(counted_sweep), "--out", str(out), "--wandb"])
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
    assert "| mBIoU | ECE |" in table and "**35.0 ± n/a (1 seed)**" in table and "**2.0 ± n/a (1 seed)**" in table


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
    summary = add_statistics(summarise(runs), runs, baseline="ce")
    for loss in ("ce", "better"):
        for name in ("mBIoU", "ECE", "mRecall"):
            low, high = summary["ci"][loss][name]
            assert low < summary["stats"][loss][name][0] < high and high - low < 0.2, (loss, name)
        assert summary["ci"][loss]["NLL"] == pytest.approx((0.4, 0.4))
    assert summary["ci"]["better"]["mRecall"][0] > summary["ci"]["ce"]["mRecall"][1]  # 0.7 vs 0.6 recall
    assert not summary["notes"]
    with np.load(runs[0].per_image) as data:
        np.savez(runs[0].per_image, **{k: data[k] for k in ("index", "names", "class_names", "tp", "fp", "fn")})
    again = add_statistics(summarise(runs), runs, baseline="ce")
    assert "mBIoU" not in again["ci"]["ce"] and "mRecall" in again["ci"]["ce"]
    assert any("make rescore" in note for note in again["notes"])


def test_the_shipped_study_regenerates_byte_for_byte(tmp_path):
    """docs/results/ holds the study's runs.json and per-image counts: `make compare` on it gives the table in
    docs/results/compare.md, and docs/results.md shows that table."""
    out = tmp_path / "cmp"
    main([str(ROOT / "docs" / "results"), "--baseline", "ce", "--out", str(out)])
    shipped = (ROOT / "docs" / "results" / "compare.md").read_text()
    assert (out / "compare.md").read_text() == shipped
    table = [line for line in shipped.splitlines() if line.startswith("|")]
    assert "\n".join(table) in (ROOT / "docs" / "results.md").read_text()
    assert (
        sum(json.loads((ROOT / "docs" / "results" / "runs.json").read_text())[i]["loss"] == "ce" for i in range(120))
        == 10
    )


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_sweep(tmp_path):
    from tests.conftest import TINY_SYNTHETIC

    data_dir = tmp_path / "data"
    sweep = tmp_path / "sweep"
    command = [
        sys.executable, "-m", "segloss.train", "--multirun", *TINY_SYNTHETIC, f"paths.data_dir={data_dir}",
        "optimizer.lr=-1.0,0.002", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1", "trainer.check_val_every_n_epoch=1", "logger=csv", "callbacks=none",
        "print_config=false", f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "SEGLOSS_TRACEBACK"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 2
    assert "optimizer.lr=-1.0 must be a positive number" in (jobs[0] / "FAILED").read_text()
    assert not (jobs[1] / "FAILED").exists() and (jobs[1] / "COMPLETED").is_file()
    runs, left_out = load_runs(sweep)
    assert len(runs) == 1 and [x.path for x in left_out] == [str(jobs[0])]
