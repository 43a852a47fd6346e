"""Faults lose nothing: non-finite losses, signals, interrupted checkpoint writes, W&B failures, broken files."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from segloss.data.folders import ImageMaskFolderDataset
from segloss.errors import NonFiniteLossError
from segloss.utils.checkpoints import AtomicCheckpointIO
from tests.conftest import QUIET_RUN, TINY_SYNTHETIC, fit, load_ckpt, run_cli
from tests.trees.folders import write_folder_tree


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    return [*TINY_SYNTHETIC, *QUIET_RUN, f"paths.data_dir={data}", "trainer.max_epochs=2", "save_every_n_steps=4"]


def _rows(run) -> list[dict]:
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


POISON = ["+callbacks.poison._target_=tests.fault_callbacks.PoisonBatch", "+callbacks.poison.step=6"]


@pytest.mark.slow
def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(base, tmp_path):
    with pytest.raises(NonFiniteLossError) as err:  # reported as `segloss: error: …`, exit 2 (a SeglossError)
        fit([*base, *POISON], tmp_path)
    message = str(err.value)
    assert "the training loss is nan at step 6, epoch 0, batch 6" in message
    assert "inputs finite: False" in message and "model.nonfinite=skip" in message
    assert "aachen_" in message or "_000019" in message  # the images of the batch are named
    last = load_ckpt(tmp_path / "checkpoints" / "last.ckpt")  # the checkpoint of step 4, intact
    assert last["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


@pytest.mark.slow
def test_a_deferred_check_names_the_broken_step_and_writes_no_checkpoint_after_it(base, tmp_path):
    # What runs on GPUs (no per-step host sync): the losses are read at logging steps and before checkpoints.
    with pytest.raises(NonFiniteLossError) as err:
        fit([*base, *POISON, "model.nonfinite_defer=true"], tmp_path)
    message = str(err.value)
    assert "the training loss is nan at step 6, epoch 0, batch 6 (read at a checkpoint save, step 8" in message
    assert "aachen_" in message or "_000019" in message
    last = load_ckpt(tmp_path / "checkpoints" / "last.ckpt")  # step 8's save was refused: step 4's is intact
    assert last["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


def test_a_deferred_check_reads_nothing_until_asked_and_reports_the_first_broken_step():
    from segloss.models.nonfinite import NonFinitePolicy

    policy = NonFinitePolicy("raise", defer=True)
    assert policy.defers(torch.tensor(1.0)) and not NonFinitePolicy("raise").defers(torch.tensor(1.0))
    assert not NonFinitePolicy("skip", defer=True).defers(torch.tensor(1.0))  # skip must read every step
    terms = {"ce": torch.tensor(0.5), "dice": torch.tensor(float("inf"))}
    policy.record(torch.tensor(0.7), {"ce": torch.tensor(0.5), "dice": torch.tensor(0.2)}, {"where": "a", "names": []})
    policy.record(torch.tensor(float("inf")), terms, {"where": "b", "names": ["x"]})
    policy.record(torch.tensor(float("nan")), terms, {"where": "c", "names": []})
    found = policy.first_broken()
    assert found["where"] == "b" and found["names"] == ["x"] and found["broken"] == ["dice"]
    assert found["loss"] == float("inf") and policy.first_broken() is None  # read once, then forgotten


@pytest.mark.slow
def test_skip_policy_drops_the_bad_batch_and_counts_it(base, tmp_path, capfd):
    fit([*base, *POISON, "model.nonfinite=skip"], tmp_path)
    last = load_ckpt(tmp_path / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 2 * 12  # Lightning still counts the step; it had no gradient to apply
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    skipped = [float(r["train/skipped_batches"]) for r in _rows(tmp_path) if "train/skipped_batches" in r]
    assert skipped and max(skipped) == 1.0
    assert json.loads((tmp_path / "COMPLETED").read_text())["skipped_batches"] == 1  # make compare sees it
    assert "1 training batch(es) had a non-finite loss and were skipped" in capfd.readouterr().err


@pytest.mark.slow
def test_skipping_stops_after_too_many_batches_in_a_row(base, tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"1 training batches in a row .*model\.nonfinite_max_skips=1"):
        fit([*base, *POISON, "model.nonfinite=skip", "model.nonfinite_max_skips=1"], tmp_path)
    assert not (tmp_path / "COMPLETED").exists()


def _finite_checkpoints(run) -> list[tuple[str, int]]:
    found = []
    for path in sorted((run / "checkpoints").glob("*.ckpt")):
        checkpoint = load_ckpt(path)
        tensors = [v for v in checkpoint["state_dict"].values() if v.is_floating_point()]
        assert all(torch.isfinite(v).all() for v in tensors), path.name
        found.append((path.name, checkpoint["global_step"]))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_a_diverged_net_is_never_checkpointed(base, tmp_path, policy):
    """lr = 1e9: a step with a finite loss overflows BatchNorm's running_var. That state used to be saved as
    last.ckpt (with `skip` the run even finished); now the save is refused and the run stops, naming it."""
    diverge = ["optimizer.lr=1e9", "save_every_n_steps=1", f"model.nonfinite={policy}"]
    with pytest.raises(NonFiniteLossError, match=r"the weights are no longer finite at step \d+ .*running_var"):
        fit([*base, *diverge], tmp_path)
    assert _finite_checkpoints(tmp_path)  # what is on disk is the last finite state
    assert not (tmp_path / "COMPLETED").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SIGINT", "SIGUSR1"])
def test_sigint_and_sigusr1_also_checkpoint_before_exit(base, tmp_path, name):
    stop = ["+callbacks.stop._target_=tests.fault_callbacks.SignalAtStep", "+callbacks.stop.step=3",
            f"+callbacks.stop.signum={name}"]  # fmt: skip
    previous = signal.getsignal(getattr(signal, name))
    with pytest.raises(SystemExit) as stop_:  # what `python -m segloss.train` exits with
        fit([*base, *stop], tmp_path)
    assert stop_.value.code == 128 + getattr(signal, name)
    assert load_ckpt(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert signal.getsignal(getattr(signal, name)) == previous  # the handlers are given back


def test_an_interrupted_checkpoint_write_leaves_the_previous_one_loadable(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)

    def dies_halfway(obj, file, *args, **kwargs):
        file.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process is stopped in the middle of the write

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert os.listdir(tmp_path) == ["last.ckpt"]  # no temporary file left behind


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["online without an API key", "unwritable wandb folder"])
def test_a_failing_wandb_does_not_stop_training_and_csv_metrics_are_complete(base, tmp_path, monkeypatch, failure):
    overrides = [o for o in base if o != "logger=csv"] + ["logger=default", "+trainer.limit_train_batches=3"]
    if failure == "online without an API key":  # a command of its own: W&B reads its settings at start-up
        for key, value in {"WANDB_MODE": "online", "HOME": str(tmp_path), "WANDB_API_KEY": "",
                           "WANDB_INIT_TIMEOUT": "20"}.items():  # fmt: skip
            monkeypatch.setenv(key, value)  # for the command run_cli starts, not for this process after the test
        proc = run_cli("train", [*overrides, f"hydra.run.dir={tmp_path}/run"])
        # wandb itself falls back to a temp folder when it cannot write
        assert "W&B could not start" in proc.stderr and "training goes on without it" in proc.stderr
    else:  # in this process
        (tmp_path / "not_a_folder").write_text("")
        fit([*overrides, f"logger.wandb.save_dir={tmp_path / 'not_a_folder'}"], tmp_path / "run")
    rows = _rows(tmp_path / "run")
    assert [r["epoch"] for r in rows if "val/mIoU" in r] == ["0", "1"]
    assert load_ckpt(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 2 * 3


def test_a_worker_that_fails_on_a_file_names_it(tmp_path):
    write_folder_tree(tmp_path, ["a", "b"], mask_format="png")
    broken = tmp_path / "images" / "b.jpg"
    broken.write_bytes(broken.read_bytes()[:100])
    loader = DataLoader(ImageMaskFolderDataset(tmp_path, split="all"), batch_size=1, num_workers=1)
    with pytest.raises(Exception, match=r"(?s)DataLoader worker process 0.*cannot read image .*b.jpg"):
        list(loader)


def test_training_never_writes_into_the_dataset_folder(make_cfg, cityscapes_tree):
    from segloss.train import train

    root, _ = cityscapes_tree
    before = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}
    overrides = ["data=cityscapes", f"data.root={root}", "data.num_workers=0", "data.batch_size=2",
                 "data.val_batch_size=1", "data.train_transform.base_size=[8,16]",
                 "data.train_transform.crop_size=[8,16]", "model.net.base_channels=4", "model.net.depth=2",
                 "loss=wce", "debug=fdr", "logger=csv"]  # fmt: skip
    train(make_cfg(overrides))
    assert {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")} == before


def test_a_new_run_never_reuses_a_run_directory_with_checkpoints(make_cfg, tmp_path):
    from segloss.errors import ConfigError
    from segloss.train import train

    cfg = make_cfg(["debug=fdr", "logger=csv"])
    ckpts = tmp_path / "run0" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "last.ckpt").write_bytes(b"an earlier run's weights")
    with pytest.raises(ConfigError, match=r"already holds checkpoints of an earlier run; choose a new"):
        train(cfg)
    assert (ckpts / "last.ckpt").read_bytes() == b"an earlier run's weights"
    assert not (tmp_path / "run0" / "config.yaml").exists()


def test_a_second_training_into_a_busy_folder_is_refused_and_leaves_the_first_intact(base, tmp_path):
    """Two trainings into one hydra.run.dir used to both exit 0 with config.yaml from one and last.ckpt from
    the other. A process holding the folder's lock (a training that is still running) stops the second."""
    import subprocess
    import sys

    from segloss.errors import ConfigError

    tmp_path.mkdir(exist_ok=True)
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- the first run's overrides\n")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
        "f.write('pid 4242 on node7 since 09:00\\n'); f.flush(); print('locked', flush=True); time.sleep(60)"),
        str(tmp_path / ".lock")], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=r"another training is writing into .* \(pid 4242 on node7"):
            fit(base, tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "config.yaml").exists() and not (tmp_path / "checkpoints").exists()
    assert (tmp_path / ".hydra" / "overrides.yaml").read_text() == "- the first run's overrides\n"


def test_a_training_gives_its_folder_lock_back_and_its_hydra_files_too(make_cfg):
    from segloss.utils.run_dir import RunDirectory

    cfg = make_cfg(["trainer.max_epochs=1"])
    overrides = Path(cfg.paths.output_dir) / ".hydra" / "overrides.yaml"
    overrides.parent.mkdir(parents=True)
    overrides.write_text("- mine\n")  # what this run's Hydra wrote
    first = RunDirectory.open(cfg)
    overrides.write_text("- a refused second command's\n")  # Hydra writes before any lock can be taken
    first.release()
    assert overrides.read_text() == "- mine\n"
    again = RunDirectory.open(cfg)  # the same folder, free again
    again.release()
    assert (again.path / ".lock").read_text().startswith("pid ")


def test_a_checkpoint_folder_or_a_plain_state_dict_is_named_not_a_traceback(base, make_cfg, tmp_path):
    from segloss.errors import ConfigError
    from segloss.utils.checkpoints import read_checkpoint
    from segloss.utils.run_dir import RunDirectory
    from tests.helpers.modules import plain_module

    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save({"net.w": torch.ones(2)}, folder / "last.ckpt")  # weights only, as torch.save(model.state_dict())
    with pytest.raises(
        ConfigError, match=r"ckpt_path=.*checkpoints is a folder; name a checkpoint file in it \(it holds last.ckpt\)"
    ):
        read_checkpoint(folder)
    cfg = make_cfg([f"ckpt_path={folder / 'last.ckpt'}"])
    with pytest.raises(ConfigError, match=r"does not fit the configured model"):  # the fit is checked first
        RunDirectory.open(cfg).check_fits(plain_module())
    torch.save(plain_module().state_dict(), folder / "weights.pt")  # torch.save(model.state_dict()): it fits
    run = RunDirectory.open(make_cfg([f"ckpt_path={folder / 'weights.pt'}"]))
    with pytest.raises(ConfigError, match=r"holds weights only \(a state_dict\), not a Lightning training checkpoint"):
        run.check_fits(plain_module())  # used to fail inside Lightning with KeyError 'pytorch-lightning_version'
    run.release()


def test_a_full_disk_during_a_checkpoint_save_is_one_message_and_the_previous_one_survives(tmp_path, monkeypatch):
    from segloss.errors import CheckpointWriteError
    from segloss.utils import checkpoints

    path = tmp_path / "last.ckpt"
    checkpoints.atomic_torch_save({"step": 1}, path)

    def full_disk(obj, file):
        file.write(b"PK\x03\x04")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 512 vs 448")

    monkeypatch.setattr(checkpoints.torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError, match=rf"could not write the checkpoint {path} .* bytes are free in"):
        checkpoints.atomic_torch_save({"step": 2}, path)
    monkeypatch.undo()
    assert load_ckpt(path) == {"step": 1} and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_temporaries_of_a_killed_save_are_removed_when_a_training_takes_the_folder(make_cfg):
    from segloss.utils.run_dir import RunDirectory

    cfg = make_cfg([])
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / ".last.ckpt.4242.tmp").write_bytes(b"half a checkpoint")  # SIGKILL mid-write
    RunDirectory.open(cfg).release()  # and the folder is not mistaken for one holding checkpoints
    assert list(checkpoints.iterdir()) == []
