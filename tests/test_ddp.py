"""Scale-out on CPU: DDP (gloo) evaluation equals one process, submitit-started tasks, SLURM, precision."""

from __future__ import annotations

import csv
import json
import os
import re

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import OmegaConf

from segloss.errors import ConfigError
from segloss.eval import evaluate
from segloss.train import train
from segloss.utils.cluster import SubmititLocalEnvironment, check_launch, cluster_plugins, launch_rank
from segloss.utils.config import CONFIG_DIR
from tests.conftest import QUIET_RUN, TINY_SYNTHETIC, compose_config, run_cli

UNEVEN = [*TINY_SYNTHETIC, "data.generator.num_val=13"]  # 13 val images: 7 on rank 0, 6 on rank 1


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    cfg = compose_config(
        "train",
        [
            *UNEVEN,
            f"paths.data_dir={data}",
            "logger=csv",
            "callbacks=none",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=4",
        ],  # any weights do: the test compares two evaluations of them
        tmp_path_factory.mktemp("run"),
    )
    out = train(cfg)
    ckpt = out["trainer"].default_root_dir + "/last.ckpt"
    out["trainer"].save_checkpoint(ckpt)
    return ckpt, data


@pytest.mark.slow
def test_ddp_evaluation_equals_one_process_exactly_on_an_uneven_split(checkpoint, tmp_path):
    ckpt, data = checkpoint
    common = [*UNEVEN, f"paths.data_dir={data}", f"ckpt_path={ckpt}", "print_config=false", "data.val_batch_size=4"]
    evaluate(compose_config("eval", [*common, "trainer=cpu", "trainer.precision=32-true"], tmp_path / "one"))
    proc = run_cli("eval", [*common, "trainer=ddp_cpu", "trainer.devices=2", f"hydra.run.dir={tmp_path / 'two'}"])
    said = " ".join(proc.stdout.split())  # the command's table and throughput, printed once, by rank 0
    assert said.count("traffic sign") == 1 and "mIoU" in said, proc.stdout[-1000:]
    throughput = r"13 frames in [0-9.]+ s: [0-9.]+ frames/s \(Inference\(mode='whole'\), 32-true, 2 process\(es\)\)"
    assert len(re.findall(throughput, said)) == 1, proc.stdout[-500:]
    expected, two = (json.loads((tmp_path / run / "results_val.json").read_text()) for run in ("one", "two"))
    assert sum(map(sum, expected["confmat"])) > 0.9 * 13 * 64 * 128  # the non-ignored pixels of 13 images
    assert two["confmat"] == expected["confmat"]  # every pixel of every image counted once, none twice
    for key in ("IoU", "Dice", "mIoU", "mDice", "acc"):
        assert two[key] == expected[key], key
    one_images, two_images = (np.load(tmp_path / run / "per_image_val.npz") for run in ("one", "two"))
    for key in ("index", "names", "tp", "fp", "fn"):  # each image's counts, gathered from both ranks in order
        assert np.array_equal(two_images[key], one_images[key]), key
    assert len(one_images["index"]) == 13
    assert not (tmp_path / "two" / "eval_rank1.log").read_text()  # rank 1 logged, but printed no table


@pytest.mark.slow
def test_submitit_local_two_tasks_train_in_one_run_directory_with_exact_val_metrics(checkpoint, tmp_path):
    _, data = checkpoint
    sweep = tmp_path / "sweep"
    overrides = [
        "--multirun", "launcher=local", *UNEVEN, *QUIET_RUN, f"paths.data_dir={data}", "trainer=ddp_cpu",
        "trainer.devices=2", "trainer.max_epochs=2", "data.val_batch_size=4", f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    run_cli("train", overrides)
    jobs = [p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(jobs) == 1, "all ranks share one run directory"
    job = jobs[0]
    assert {p.name for p in job.glob("train*.log")} == {"train.log", "train_rank1.log"}
    assert sorted(p.name for p in (job / "checkpoints").iterdir()) == ["epoch_001.ckpt", "last.ckpt"]
    logs = sorted((sweep / ".submitit").rglob("*_log.err"))
    assert len(logs) == 2 and all("Starting with 2 processes" in p.read_text() for p in logs[:1])
    with open(job / "csv" / "metrics.csv", newline="") as f:
        val = [row for row in csv.DictReader(f) if row.get("val/mIoU")]
    assert [row["epoch"] for row in val] == ["0", "1"]
    assert int(torch.load(job / "checkpoints/last.ckpt", weights_only=True)["global_step"]) == 2 * (96 // 8)
    # The val mIoU the two processes logged is the one-process evaluation of the same weights.
    cfg = compose_config(
        "eval",
        [*UNEVEN, f"paths.data_dir={data}", f"ckpt_path={job / 'checkpoints/last.ckpt'}", "trainer.precision=32-true"],
        tmp_path / "eval",
    )
    assert float(val[-1]["val/mIoU"]) == pytest.approx(float(evaluate(cfg)["mIoU"]), abs=1e-7)


def test_a_sweep_cannot_let_lightning_relaunch_ddp_processes(checkpoint, tmp_path):
    _, data = checkpoint
    sweep = tmp_path / "sweep"
    overrides = [
        "--multirun", *UNEVEN, *QUIET_RUN, f"paths.data_dir={data}", "trainer=ddp_cpu", "trainer.devices=2",
        f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    run_cli("train", overrides)
    (failed,) = sweep.glob("*/FAILED")
    assert "a multirun cannot let Lightning start them" in failed.read_text()
    assert "hydra/launcher=submitit_local" in failed.read_text()


def _trainer(devices: int, plugins, **ddp) -> L.Trainer:
    strategy = DDPStrategy(**{"broadcast_buffers": False, **ddp})
    return L.Trainer(accelerator="cpu", strategy=strategy, devices=devices, plugins=plugins, logger=False)


def test_submitit_tasks_give_lightning_its_ranks_and_must_match_devices(monkeypatch):
    for name, value in {"SUBMITIT_LOCAL_JOB_ID": "4321", "SUBMITIT_LOCAL_NTASKS": "2", "SUBMITIT_LOCAL_GLOBALID": "1",
                        "SUBMITIT_LOCAL_LOCALID": "1", "SUBMITIT_LOCAL_NODEID": "0"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    (env,) = cluster_plugins({})
    assert isinstance(env, SubmititLocalEnvironment) and env.creates_processes_externally
    assert (env.global_rank(), env.local_rank(), env.world_size(), env.main_port) == (1, 1, 2, 20000 + 4321)
    assert launch_rank() == 1
    check_launch(_trainer(2, [env]), multirun=True)  # one task per device: fine, also in a sweep
    with pytest.raises(ConfigError, match=r"expects 4 processes .* started 2"):
        check_launch(_trainer(4, [env]), multirun=False)
    with pytest.raises(ConfigError, match=r"broadcast_buffers=True .* hangs"):
        check_launch(_trainer(2, [env], broadcast_buffers=True), multirun=False)


def test_slurm_tasks_are_picked_up_with_auto_requeue_on_sigusr1(monkeypatch):
    slurm = {
        "SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
        "SLURM_NODEID": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "77", "SLURM_NODELIST": "gpu[01-02]",
    }  # fmt: skip
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    (env,) = cluster_plugins({"auto_requeue": True, "requeue_signal": "SIGUSR1"})
    assert env.auto_requeue and env.requeue_signal.name == "SIGUSR1"
    assert launch_rank() == 3
    trainer = L.Trainer(
        accelerator="cpu", strategy=DDPStrategy(broadcast_buffers=False), devices=2, num_nodes=2, plugins=[env]
    )
    assert (trainer.global_rank, trainer.world_size, env.main_address) == (3, 4, "gpu01")
    check_launch(trainer, multirun=True)
    one_per_node = L.Trainer(
        accelerator="cpu", strategy=DDPStrategy(broadcast_buffers=False), devices=1, num_nodes=2, plugins=[env]
    )
    with pytest.raises(ConfigError, match=r"expects 2 processes .* started 4 \(SLURM_NTASKS\)"):
        check_launch(one_per_node, multirun=False)
    with pytest.raises(ConfigError, match="not a signal name"):
        cluster_plugins({"requeue_signal": "USR9"})


def test_slurm_launcher_asks_for_one_task_per_device_and_the_requeue_signal(tmp_path, monkeypatch):
    import submitit

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\n")  # submitit only checks that srun exists
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            [
                "experiment=focal_cityscapes",
                "launcher=slurm",
                "trainer.devices=4",
                "trainer.num_nodes=2",
                "hydra.launcher.partition=gpu",
            ],
            return_hydra_config=True,
        )
    assert cfg.resume == "auto" and cfg.trainer.sync_batchnorm and cfg.trainer.devices == 4
    assert cfg.trainer.strategy._target_.endswith("DDPStrategy") and cfg.trainer.strategy.broadcast_buffers is False
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params.pop("_target_").endswith("SlurmLauncher")
    # What hydra-submitit-launcher does with these parameters (BaseSubmititLauncher.launch):
    executor = submitit.AutoExecutor(
        folder=tmp_path, cluster="slurm", slurm_max_num_timeout=params.pop("max_num_timeout")
    )
    params.pop("submitit_folder")
    generic = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name",
               "stderr_to_stdout"}  # fmt: skip
    executor.update_parameters(**{k if k in generic else f"slurm_{k}": v for k, v in params.items()})
    sbatch = executor._executor._make_submission_file_text("python -m segloss.train", "uid")
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu", "--signal=USR1@120"):
        assert f"#SBATCH {line}" in sbatch, line
    assert "--signal=USR2" not in sbatch


def test_bf16_mixed_runs_a_training_step_on_cpu_with_a_finite_loss(make_cfg, checkpoint):
    _, data = checkpoint
    cfg = make_cfg([*UNEVEN, f"paths.data_dir={data}", "debug=fdr", "logger=csv", "trainer.precision=bf16-mixed"])
    out = train(cfg)
    trainer = out["trainer"]
    assert trainer.precision == "bf16-mixed" and trainer.global_step == 1
    assert torch.isfinite(trainer.callback_metrics["train/loss_epoch"])
