"""Config checks before anything is built: wrong types and values, metric names nothing logs, empty
folders — one message each (all of them together), naming the key, the value, what is expected and a fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segloss.checks import check_config, logged_metrics
from segloss.errors import ConfigError
from tests.conftest import run_cli

CASES = [
    ("trainer.max_epochs=ten", r"trainer.max_epochs='ten' must be an integer ≥ 1 .*e\.g\. trainer.max_epochs=24"),
    ("trainer.max_epochs=0", r"trainer.max_epochs=0 must be .*0 epochs would train nothing"),
    ("trainer.max_epochs=2.5", r"trainer.max_epochs=2.5 must be an integer"),
    ("trainer.max_steps=0", r"trainer.max_steps=0 must be an integer ≥ 1, or -1"),
    ("data.batch_size=0", r"data.batch_size=0 must be a positive integer \(the global batch\)"),
    ("data.batch_size=four", r"data.batch_size='four' must be a positive integer"),
    ("data.num_workers=-1", r"data.num_workers=-1 must be an integer ≥ 0"),
    ("optimizer.lr=-0.1", r"optimizer.lr=-0.1 must be a positive number \(e\.g\. optimizer.lr=0.001\)"),
    ("optimizer.lr=fast", r"optimizer.lr='fast' must be a positive number"),
    ("seed=abc", r"seed='abc' must be a non-negative integer or null"),
    ("trainer.devices=0", r"trainer.devices=0 must be a positive integer, a list of device ids or auto"),
    ("trainer.accelerator=tpu", r"trainer.accelerator='tpu' must be one of \['auto', 'cpu'"),
    ("trainer.log_every_n_steps=0", r"trainer.log_every_n_steps=0 must be a positive integer"),
    ("save_every_n_steps=0", r"save_every_n_steps=0 must be a positive number of steps, or null"),
    ("resume=yes", r"resume='yes' must be auto or null \(for a given checkpoint use ckpt_path=…\)"),
    ("model.nonfinite=maybe", r"model.nonfinite='maybe' must be raise, skip or ignore"),
    ("model.channels_last=yes", r"model.channels_last='yes' must be true or false"),
    ("float32_matmul_precision=fast", r"float32_matmul_precision='fast' must be one of \['highest', 'high'"),
    ("data.train_transform.crop_size=[128]", r"crop_size=\[128\] must be \[height, width\] in pixels"),
    ("trainer.precision=fp8", r"trainer.precision='fp8' is not one of \['auto'"),
    ("trainer.precision=16-mixed", r"float16\) needs a CUDA GPU"),
    ("optimized_metric=val/loss", r"optimized_metric='val/loss' is not a validation score of this run \(the valid"),
    ("optimized_metric=val/IoU/unicorn", r"optimized_metric='val/IoU/unicorn' is not a validation score"),
    ("optimized_metric=val/case_mDice", r"optimized_metric='val/case_mDice' is not a validation score"),  # no cases
    ("callbacks.model_checkpoint.monitor=val/acc", r"monitor='val/acc' differs from optimized_metric='val/mIoU'"),
    ("callbacks.model_checkpoint.mode=min", r"callbacks.model_checkpoint.mode='min': validation scores are maximised"),
]  # fmt: skip


@pytest.mark.parametrize("override,message", CASES, ids=[c[0] for c in CASES])
def test_a_wrong_value_is_named_with_what_is_expected(make_cfg, override, message):
    cfg = make_cfg([override])
    with pytest.raises(ConfigError, match=message):
        check_config(cfg)


def test_the_tensorboard_logger_without_its_extra_names_the_install(make_cfg, monkeypatch):
    import importlib.util

    cfg = make_cfg(["logger=tensorboard"])
    check_config(cfg)  # installed here (the dev extra)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if "tensorboard" in name.lower() else real(name, *a)
    )
    with pytest.raises(
        ConfigError, match=r"TensorBoard logger needs the tensorboard package: pip install 'segloss\[tensorboard\]'"
    ):
        check_config(cfg)


def test_every_problem_is_listed_in_one_message(make_cfg):
    cfg = make_cfg(["trainer.max_epochs=0", "data.batch_size=-2", "optimizer.lr=0"])
    with pytest.raises(
        ConfigError, match=r"3 problems in the config:\n  - .*max_epochs.*\n  - .*batch_size.*\n  - .*lr"
    ):
        check_config(cfg)


def test_training_forever_is_refused(make_cfg):
    with pytest.raises(ConfigError, match=r"max_epochs=-1 and trainer.max_steps=-1 would train forever"):
        check_config(make_cfg(["trainer.max_epochs=-1", "trainer.max_steps=-1"]))


def test_a_monitor_that_names_no_logged_metric(make_cfg):
    early = ["+callbacks.early_stop._target_=lightning.pytorch.callbacks.EarlyStopping",
             "+callbacks.early_stop.monitor=val/MIoU"]  # fmt: skip
    with pytest.raises(ConfigError, match=r"callbacks.early_stop.monitor='val/MIoU' names no logged metric; e.g. \["):
        check_config(make_cfg(early))
    check_config(make_cfg([*early[:1], "+callbacks.early_stop.monitor=val/loss"]))  # logged: accepted


def test_the_metric_names_follow_the_loss_terms_and_the_data(make_cfg):
    cfg = make_cfg(["loss=dice_ce"])
    logged = logged_metrics(cfg, per_case=False)
    assert {"val/loss/dice", "train/loss/ce_epoch", "val/IoU/pole", "val/mIoU_best"} <= logged
    assert "val/case_mDice" not in logged and "val/case_mDice" in logged_metrics(cfg, per_case=True)


@pytest.mark.parametrize("experiment", ["base_msd_unet", "dice_kvasir", "focal_cityscapes", "ce_voc"])
def test_the_shipped_experiments_pass(make_cfg, experiment):
    check_config(make_cfg([f"experiment={experiment}"]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_a_gpu_trainer_without_a_gpu(make_cfg):
    with pytest.raises(
        ConfigError, match=r"trainer.accelerator=gpu but no CUDA GPU is available here; use trainer=cpu"
    ):
        check_config(make_cfg(["trainer=gpu"]))


@pytest.mark.parametrize("entry", ["train", "eval", "export"])
def test_a_wrong_type_on_the_command_line_costs_seconds_and_one_line(tmp_path, monkeypatch, entry):
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")  # stderr lists every module the command imported
    given = {"train": [], "eval": [f"ckpt_path={tmp_path / 'x.ckpt'}"], "export": [f"ckpt_path={tmp_path / 'x.ckpt'}"]}
    proc = run_cli(entry, [*given[entry], f"hydra.run.dir={tmp_path}", "trainer.max_epochs=ten"], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    log = [line for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert [line for line in proc.stderr.strip().splitlines() if line not in log][-1] == (
        "segloss: error: trainer.max_epochs='ten' must be an integer ≥ 1 (or -1 with trainer.max_steps > 0); "
        "0 epochs would train nothing (e.g. trainer.max_epochs=24)"
    )
    assert not (tmp_path / "config.yaml").exists() and not (tmp_path / "checkpoints").exists()
    imported = {line.rsplit("|", 1)[1].strip() for line in log}
    assert "segloss.checks" in imported  # the import log is there, and the check ran ...
    heavy = sorted(m for m in imported if m.split(".")[0] in ("lightning", "torchmetrics", "torchvision"))
    assert heavy == []  # ... before Lightning and torchmetrics (~4 s of a start on 2 cores) were imported


def test_an_empty_data_root_never_writes_at_the_filesystem_root(make_cfg, monkeypatch):
    from segloss.train import train

    monkeypatch.setenv("DATA_ROOT", "")
    cfg = make_cfg([])
    assert cfg.data.root == "/synthetic_city"  # what the generator would have written
    with pytest.raises(ConfigError, match=r"DATA_ROOT is set but empty.*unset it \(`unset DATA_ROOT`\)"):
        train(cfg)
    assert not Path("/synthetic_city").exists() and not Path(cfg.paths.output_dir).exists()


def test_an_argument_the_net_does_not_take_names_the_config_node(make_cfg):
    from segloss.build import build_module

    message = (r"cannot build model.net \(segloss.models.nets.unet.UNet\) from the config: TypeError: .*"
               r"unexpected keyword argument 'width'. Fix the model.net settings")  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        build_module(make_cfg(["+model.net.width=3"]))


@pytest.mark.parametrize("override,message", [("+optimizer.momentum_x=0.9", r"TypeError: .*momentum_x"),
                                              ("optimizer.weight_decay=-1", r"ValueError: Invalid weight_decay"),
                                              ("+scheduler.power_x=2", r"TypeError: poly\(\) .*power_x")])  # fmt: skip
def test_optimizer_and_scheduler_arguments_fail_when_built_not_when_training_starts(make_cfg, override, message):
    from segloss.build import build_module

    with pytest.raises(ConfigError, match=rf"cannot build (optimizer|scheduler).*{message}.*Fix the"):
        build_module(make_cfg([override]))


def test_a_data_root_or_run_folder_that_is_a_file_is_named(make_cfg, tmp_path, monkeypatch):
    """DATA_ROOT naming a file ended in a NotADirectoryError while generating data; hydra.run.dir naming a
    file in Hydra's own FileExistsError, before any code of ours ran."""
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    monkeypatch.setenv("DATA_ROOT", str(afile))
    with pytest.raises(
        ConfigError, match=rf"paths.data_dir={afile} \(from DATA_ROOT\) is not a folder: {afile} is a file"
    ):
        check_config(make_cfg([f"paths.data_dir={afile}"]))
    monkeypatch.delenv("DATA_ROOT")
    proc = run_cli("train", [f"hydra.run.dir={afile}/run", "print_config=false"], check=False)
    assert proc.returncode == 2 and f"hydra.run.dir={afile}/run is not a folder: {afile} is a file" in proc.stderr
    assert "Traceback" not in proc.stderr and "NotADirectoryError" not in proc.stderr


def test_a_value_has_one_rule_whoever_checks_it(make_cfg):
    """The config check and the constructor that consumes a value give the same words (issue 25: each value
    validated by one rule): the binary threshold, the class names, a class-vector length."""
    from segloss.build import check_class_vectors
    from segloss.losses import CrossEntropyLoss
    from segloss.models.module import SegmentationModule
    from segloss.models.nets.unet import UNet

    with pytest.raises(ConfigError) as early:
        check_config(make_cfg(["model.binary_threshold=1.5"]))
    net = UNet(num_classes=3, base_channels=4, depth=2)
    with pytest.raises(ConfigError) as late:
        SegmentationModule(net=net, loss=CrossEntropyLoss(), optimizer=None, num_classes=3, binary_threshold=1.5)
    assert (
        str(early.value)
        == str(late.value)
        == ("model.binary_threshold=1.5 must be a probability in (0, 1) (e.g. model.binary_threshold=0.5)")
    )
    with pytest.raises(ConfigError, match=r"^data.class_names has 2 names but data.num_classes=3; give one name"):
        SegmentationModule(net=net, loss=CrossEntropyLoss(), optimizer=None, num_classes=3, class_names=["a", "b"])
    with pytest.raises(ConfigError, match=r"^loss.weight has 2 entries but data.num_classes=3; give one value per"):
        check_class_vectors(CrossEntropyLoss(weight=[1.0, 2.0]), 3)
    with pytest.raises(ValueError, match=r"^weight has 2 entries but the logits have C=3 classes; give one value"):
        CrossEntropyLoss(weight=[1.0, 2.0])(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.int64))


def test_a_value_has_one_rule_applied_by_its_constructor_and_reported_by_check_config(make_cfg):
    """Each rule is written once, where the value is consumed (issue 25): the constructor raises it, and
    check_config reports the same words before anything is built."""
    from omegaconf import OmegaConf
    from torch import nn

    from segloss.checks import RULES, consumer_rules
    from segloss.data.datamodule import SegmentationDataModule
    from segloss.data.transforms import train_transform
    from segloss.metrics.quality import QualityMetrics
    from segloss.models.module import SegmentationModule
    from segloss.models.nonfinite import NonFinitePolicy
    from segloss.utils.loss_family import loss_family

    keys = [rule.key for rule in [*RULES, *consumer_rules()]]
    assert sorted(k for k in set(keys) if keys.count(k) > 1) == []
    module = lambda **option: SegmentationModule(nn.Identity(), nn.Identity(), None, **option)  # noqa: E731
    cases = {
        "model.nonfinite=often": lambda: NonFinitePolicy("often"),
        "model.binary_threshold=1.5": lambda: module(binary_threshold=1.5),
        "model.channels_last=1": lambda: module(channels_last=1),
        "metrics.small_object_area=0": lambda: QualityMetrics(3, small_object_area=0),
        "data.num_workers=-1": lambda: SegmentationDataModule(None, ".", 2, ["a", "b"], num_workers=-1),
        "data.train_transform.crop_size=[0,4]": lambda: train_transform([0, 4], [8, 8]),
        "loss.family=regional": lambda: loss_family(OmegaConf.create({"family": "regional"})),
    }  # fmt: skip
    for override, build in cases.items():
        with pytest.raises(ConfigError) as built:
            build()
        with pytest.raises(ConfigError) as checked:
            check_config(make_cfg([override]))
        assert str(checked.value) == str(built.value), override
        assert str(built.value).startswith(override.split("=")[0] + "="), "the message names the config key"
