"""benchmarks/bench_recipe.py: its step arithmetic on fixed numbers, a quick CPU run (that it runs the real
recipe and reports consistently — never how fast: speed depends on the machine and its load) and the
no-GPU exit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import load_benchmark


def load_bench():
    return load_benchmark("bench_recipe")


def test_step_phases_on_fixed_numbers():
    phases = load_bench().step_phases
    # Steps start at 0, 10, 25, 45 and end at 8, 20, 40, 55: the first (warm-up) step is dropped.
    got = phases([0.0, 10.0, 25.0, 45.0], [8.0, 20.0, 40.0, 55.0], warmup=1)
    assert got == {"data_wait": [2.0, 5.0, 5.0], "compute": [10.0, 15.0, 10.0], "period": [12.0, 20.0, 15.0]}
    assert phases([0.0, 10.0, 25.0], [8.0, 20.0, 40.0], warmup=2) == {
        "data_wait": [5.0],
        "compute": [15.0],
        "period": [20.0],
    }
    with pytest.raises(ValueError):
        phases([0.0], [1.0], warmup=0)  # the first step has no previous end


@pytest.mark.parametrize("argv", [["--steps", "3", "--warmup", "3"], ["--warmup", "0"], ["--frames", "0"]])
def test_refuses_settings_that_time_nothing(argv):
    with pytest.raises(SystemExit) as exit_info:
        load_bench().parse_args(["--device", "cpu", "--quick", *argv])
    assert exit_info.value.code == 2


def test_quick_cpu(tmp_path: Path, capsys) -> None:
    out, steps, warmup = tmp_path / "recipe.json", 5, 2
    args = ["--device", "cpu", "--quick", "--steps", str(steps), "--warmup", str(warmup), "--frames", "3"]
    assert load_bench().main([*args, "--data-dir", str(tmp_path / "data"), "--out", str(out)]) == 0  # in this process
    assert "real / raw img/s" in capsys.readouterr().out
    report = json.loads(out.read_text())
    machine, settings, results = report["machine"], report["settings"], report["results"]
    assert machine["device"] == "cpu" and machine["gpu"] is None and machine["cpu"]
    assert machine["torch"] == torch.__version__ and machine["lightning"]
    assert settings["quick"] is True and (settings["steps"], settings["warmup"]) == (steps, warmup)
    assert settings["batch"] == 2 and settings["crop"] == [64, 128] and settings["frame"] == [128, 256]
    assert settings["loss"] == "segloss.losses.FocalLoss"  # experiment=focal_cityscapes
    assert settings["distinct_frames"] == 3 and settings["train_images"] == 2 * steps
    linked = sorted((tmp_path / "data" / "cityscapes" / "leftImg8bit" / "train").glob("*/*_leftImg8bit.png"))
    assert len(linked) == 2 * steps  # the Cityscapes tree the real loader read
    assert len({p.stat().st_ino for p in linked}) == 3  # hard links to the distinct frames

    real, raw = results["real"], results["raw"]
    for r in (real, raw):
        assert r["images_per_s"] > 0
        assert (r["steps_run"], r["steps_timed"]) == (steps, steps - warmup)
    assert real["batch_shape"] == [2, 3, 64, 128]  # the real loader's crops: the raw step's shape
    assert len(real["period_ms"]) == len(real["data_wait_ms"]) == len(raw["step_ms"]) == steps - warmup
    for wait, compute, period in zip(real["data_wait_ms"], real["compute_ms"], real["period_ms"]):
        assert wait >= 0 and compute > 0 and period == pytest.approx(wait + compute)
    # The figures are derived from the recorded steps, not set independently.
    assert real["images_per_s"] == pytest.approx(2e3 / real["period_ms_median"])
    assert raw["images_per_s"] == pytest.approx(2e3 / raw["step_ms_median"])
    assert results["ratio_real_to_raw"] == pytest.approx(real["images_per_s"] / raw["images_per_s"])
    assert results["target_met"] == (results["ratio_real_to_raw"] >= settings["target_ratio"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message printed without a GPU")
def test_cuda_without_gpu_exits_cleanly(tmp_path: Path, capsys) -> None:
    out = tmp_path / "recipe.json"
    assert load_bench().main(["--out", str(out)]) == 0  # in this process: it returns before building anything
    printed = capsys.readouterr().out
    assert "needs a CUDA GPU" in printed and "--device cpu --quick" in printed
    assert not out.exists()
