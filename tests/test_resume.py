"""Reproducibility: bit-for-bit repeatable CPU runs, exact resume after SIGKILL and SIGTERM, resume=auto."""

from __future__ import annotations

import csv
import json
import os
import signal
import time

import pytest
import torch

from segloss.comparison.runs import LeftOut, read_run
from segloss.errors import ConfigError
from segloss.utils.run_dir import find_resume_checkpoint, resolve_resume
from tests.conftest import QUIET_RUN, TINY_SYNTHETIC, fit, load_ckpt, run_cli

KILL = "+callbacks.kill._target_=tests.fault_callbacks.KillAtStep"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    return [*TINY_SYNTHETIC, *QUIET_RUN, f"paths.data_dir={data}", "trainer.max_epochs=3", "save_every_n_steps=6"]


@pytest.fixture(scope="module")
def uninterrupted(base, tmp_path_factory):
    run = tmp_path_factory.mktemp("uninterrupted")
    fit(base, run)
    return run


def _same_weights(a: dict, b: dict) -> list[str]:
    return [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]


def _metrics(run):
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def _validations(run) -> list[dict]:
    return [{k: v for k, v in row.items() if k.startswith("val/")} for row in _metrics(run) if "val/mIoU" in row]


@pytest.mark.slow
def test_cpu_runs_are_bit_for_bit_repeatable_with_any_number_of_workers(base, uninterrupted, tmp_path):
    fit([*base, "data.num_workers=2"], tmp_path)
    first, second = load_ckpt(uninterrupted / "checkpoints/last.ckpt"), load_ckpt(tmp_path / "checkpoints/last.ckpt")
    assert first["global_step"] == second["global_step"] == 36
    assert _same_weights(first, second) == []


@pytest.mark.slow
def test_sigkill_mid_epoch_and_at_an_epoch_end_then_resume_auto_is_exact(base, uninterrupted, tmp_path):
    run = [f"hydra.run.dir={tmp_path}"]
    # 12 steps per epoch; checkpoints every 6 steps. Killed in the middle of epoch 2 (step 18) …
    proc = run_cli("train", [*base, *run, "data.num_workers=2", KILL, "+callbacks.kill.step=18"], check=False)
    assert proc.returncode == -signal.SIGKILL
    assert load_ckpt(tmp_path / "checkpoints/last.ckpt")["global_step"] == 18
    killed = read_run(tmp_path)  # make compare leaves the killed seed out, and says why
    assert isinstance(killed, LeftOut) and "1 epochs finished of 3 planned" in killed.reason
    # … resumed (a requeued job: same run directory) and killed again right after epoch 2's validation; a
    # COMPLETED marker left in the folder (by an earlier run) is removed when the training starts …
    (tmp_path / "COMPLETED").write_text("{}")
    proc = run_cli("train", [*base, *run, "resume=auto", KILL, "+callbacks.kill.step=24"], check=False)
    assert proc.returncode == -signal.SIGKILL and "resuming from" in proc.stdout
    assert not (tmp_path / "COMPLETED").exists()
    # … and resumed to the end (in this process: only the kills need processes of their own).
    fit([*base, "resume=auto"], tmp_path)
    record = json.loads((tmp_path / "COMPLETED").read_text())  # written last, by the run that finished
    assert record["epochs"] == record["planned_epochs"] == 3 and record["global_step"] == 36
    assert not record["stopped_early"] and record["best_value"] == pytest.approx(read_run(tmp_path).best_miou)
    expected, got = load_ckpt(uninterrupted / "checkpoints/last.ckpt"), load_ckpt(tmp_path / "checkpoints/last.ckpt")
    assert got["global_step"] == expected["global_step"] == 36
    assert _same_weights(expected, got) == []
    for key in ("optimizer_states", "lr_schedulers"):
        assert str(got[key]) == str(expected[key])
    assert got["val_best"]["metric"] == expected["val_best"]["metric"] == "val/mIoU"
    assert got["val_best"]["value"] == expected["val_best"]["value"]
    # Every validation of the uninterrupted run is in the resumed run's metrics.csv, with the same values.
    val, got_val = _validations(uninterrupted), _validations(tmp_path)
    assert len(val) == 3 and got_val == val


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_auto_finishes_exactly(base, uninterrupted, tmp_path, capfd):
    signal_at = ["+callbacks.stop._target_=tests.fault_callbacks.SignalAtStep", "+callbacks.stop.step=7"]
    with pytest.raises(SystemExit) as stop:  # what `python -m segloss.train` exits with
        fit([*base, *signal_at], tmp_path)
    assert stop.value.code == 128 + signal.SIGTERM
    assert "SIGTERM received: saved" in capfd.readouterr().err
    assert load_ckpt(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 8  # the signalled step's batch finished
    assert not (tmp_path / "COMPLETED").exists()  # stopped, not finished
    fit([*base, "resume=auto"], tmp_path)
    expected, got = load_ckpt(uninterrupted / "checkpoints/last.ckpt"), load_ckpt(tmp_path / "checkpoints/last.ckpt")
    assert got["global_step"] == expected["global_step"] == 36
    assert _same_weights(expected, got) == []


@pytest.mark.slow
def test_sigterm_during_validation_keeps_the_epoch_s_training_metrics(base, uninterrupted, tmp_path, capfd):
    """SIGTERM in epoch 1's validation used to stop there, before that epoch's train/loss_epoch was logged."""
    signal_in_val = ["+callbacks.stop._target_=tests.fault_callbacks.SignalInValidation", "+callbacks.stop.epoch=1"]
    plain = [arg for arg in base if not arg.startswith("save_every_n_steps")]
    with pytest.raises(SystemExit) as stop:
        fit([*plain, *signal_in_val, "trainer.check_val_every_n_epoch=1"], tmp_path)
    assert stop.value.code == 128 + signal.SIGTERM and "SIGTERM received: saved" in capfd.readouterr().err
    ended = {int(row["epoch"]) for row in _metrics(tmp_path) if "train/loss_epoch" in row}
    assert ended == {0, 1}  # epoch 1's training loss is in metrics.csv
    assert load_ckpt(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 25  # after epoch 2's first batch
    fit([*plain, "trainer.check_val_every_n_epoch=1", "resume=auto"], tmp_path)
    expected, got = load_ckpt(uninterrupted / "checkpoints/last.ckpt"), load_ckpt(tmp_path / "checkpoints/last.ckpt")
    assert got["global_step"] == expected["global_step"] == 36
    assert _same_weights(expected, got) == []


@pytest.mark.slow
def test_last_ckpt_holds_the_final_state_whatever_the_validation_schedule(base, tmp_path):
    """Validated every 2nd epoch, 3 epochs: last.ckpt used to stop at epoch 2's start (step 24 of 36)."""
    plain = [arg for arg in base if not arg.startswith("save_every_n_steps")]
    fit([*plain, "trainer.check_val_every_n_epoch=2"], tmp_path)
    last = load_ckpt(tmp_path / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 36 and last["epoch"] == 3  # Lightning counts finished epochs at the end


def test_resume_auto_prefers_the_run_directory_then_the_latest_run_of_the_same_name(tmp_path):
    runs = tmp_path / "runs"
    old = runs / "2026-01-01_00-00-00_ce-unet-s1" / "checkpoints"
    newer = runs / "2026-01-02_00-00-00_ce-unet-s1" / "checkpoints"
    other = runs / "2026-01-03_00-00-00_dice-unet-s1" / "checkpoints"
    for i, folder in enumerate((old, newer, other)):
        folder.mkdir(parents=True)
        (folder / "last.ckpt").write_bytes(b"x")
        os.utime(folder / "last.ckpt", (time.time() + i, time.time() + i))
    here = runs / "2026-01-04_00-00-00_ce-unet-s1"
    assert find_resume_checkpoint(here, runs, "ce-unet-s1") == newer / "last.ckpt"
    (here / "hpc_ckpt_1.ckpt").parent.mkdir(parents=True)
    (here / "hpc_ckpt_1.ckpt").write_bytes(b"x")
    assert find_resume_checkpoint(here, runs, "ce-unet-s1") == here / "hpc_ckpt_1.ckpt"
    assert find_resume_checkpoint(tmp_path / "fresh", tmp_path / "none", "x") is None
    assert resolve_resume("auto", None, tmp_path / "fresh", tmp_path / "none", "x") is None
    assert resolve_resume(None, "a.ckpt", here, runs, "x") == "a.ckpt"
    with pytest.raises(ConfigError, match="either resume=auto or ckpt_path"):
        resolve_resume("auto", "a.ckpt", here, runs, "x")
    with pytest.raises(ConfigError, match="resume='yes'"):
        resolve_resume("yes", None, here, runs, "x")
