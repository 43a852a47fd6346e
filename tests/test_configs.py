"""Every experiment, model and loss config composes and instantiates."""

from pathlib import Path

import hydra
import pytest
import torch
from hydra.errors import MissingConfigException
from omegaconf import open_dict

from segloss.build import build_loss, build_module, build_trainer
from segloss.checks import check_config
from segloss.errors import DatasetNotFoundError
from segloss.utils.config import CONFIG_DIR
from tests.helpers.losses import MULTI_HOT, apply_loss, example_inputs

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml") if not p.stem.startswith("_"))  # _module: a base
LOSSES = sorted(p.stem for p in (CONFIG_DIR / "loss").glob("*.yaml"))


def _shrink_synthetic(cfg):
    if not cfg.data.get("generator"):
        return
    with open_dict(cfg):
        if "cases" in cfg.data.generator:  # synthetic volumes: 4 training cases and 1 validation case, 4 patches
            cfg.data.generator.cases, cfg.data.dataset.samples_per_epoch = 5, 4
        else:
            cfg.data.generator.num_train, cfg.data.generator.num_val = 4, 2


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_instantiates(name, make_cfg, tmp_path):
    cfg = make_cfg([f"experiment={name}", f"paths.data_dir={tmp_path / 'data'}"])
    _shrink_synthetic(cfg)
    check_config(cfg)  # every experiment passes the preflight checks as shipped
    module = build_module(cfg)
    assert module.hparams.num_classes == cfg.data.num_classes
    assert module.best.metric == cfg.optimized_metric
    trainer = build_trainer(cfg, loggers=[])
    assert trainer.max_epochs == cfg.trainer.max_epochs
    assert trainer.checkpoint_callback.monitor == cfg.optimized_metric
    datamodule = hydra.utils.instantiate(cfg.data)
    if cfg.data.get("generator"):
        datamodule.verify()
        assert len(datamodule.datasets["train"]) == 4
    else:  # real datasets are absent here: the clear error, naming where we looked
        with pytest.raises(DatasetNotFoundError, match="Expected layout") as err:
            datamodule.verify()
        assert str(Path(cfg.data.root)) in str(err.value)


@pytest.mark.parametrize("name", MODELS)
def test_model_configs_build_offline(name, make_cfg):
    volumes = name == "unet3d"  # a 3D net for data=msd3d: one-channel volumes N×1×D×H×W
    cfg = make_cfg([f"model={name}", *(["data=msd3d"] if volumes else [])])
    net = hydra.utils.instantiate(cfg.model.net).eval()
    size = (8, 40, 72) if volumes else (40, 72)
    with torch.no_grad():
        assert net(torch.randn(1, 1 if volumes else 3, *size)).shape == (1, cfg.data.num_classes, *size)


@pytest.mark.parametrize("name", LOSSES)
def test_loss_configs_give_finite_scalars(name, make_cfg, tmp_path):
    cfg = make_cfg([f"loss={name}", f"paths.data_dir={tmp_path / 'data'}", f"paths.cache_dir={tmp_path / 'cache'}"])
    _shrink_synthetic(cfg)
    datamodule = hydra.utils.instantiate(cfg.data)
    loss = build_loss(cfg, datamodule)
    logits, target = example_inputs(name, size=(8, 8))
    value = apply_loss(loss, logits, target)
    assert value.dim() == 0 and value.dtype == torch.float32 and torch.isfinite(value)
    # Logits moved towards the target (ignored pixels untouched) must give a smaller loss: a config that
    # built the loss wrongly (sign, reduction over the wrong axis, the target ignored) fails here.
    labelled = target != 255
    towards = torch.zeros_like(logits)
    if name in MULTI_HOT:  # one sigmoid per region: each channel towards its own 0/1
        towards = torch.where(labelled, 4.0 * (2 * target.clamp(max=1) - 1), 0.0)
    elif logits.shape[1] == 1:
        towards[:, 0] = torch.where(labelled, 4.0 * (2 * target.clamp(max=1) - 1), 0.0)
    else:
        towards.scatter_(1, torch.where(labelled, target, 0)[:, None], 4.0 * labelled[:, None].float())
    assert apply_loss(loss, logits + towards, target) < value


def test_unknown_experiment_lists_the_valid_ones(make_cfg):
    with pytest.raises(MissingConfigException) as err:
        make_cfg(["experiment=focal_cityscape"])
    assert "focal_cityscapes" in str(err.value)


def test_debug_configs_compose(make_cfg):
    assert make_cfg(["debug=fdr"]).trainer.fast_dev_run is True
    assert make_cfg(["debug=overfit"]).trainer.overfit_batches == 2


@pytest.mark.parametrize("data", ["synthetic_city", "cityscapes", "voc", "voc_aug", "kvasir", "msd"])
def test_the_normalisation_is_decided_once_by_data_normalize(data, make_cfg):
    """data.normalize is read by both transforms (CPU and device paths) and by the module (uint8 batches,
    pictures): one override changes all of them (issue 25)."""
    from segloss.build import input_normalisation

    cfg = make_cfg([f"data={data}", "data.normalize.mean=[0.1,0.2,0.3]", "data.normalize.std=[0.4,0.5,0.6]"])
    for node in (cfg.data.train_transform, cfg.data.eval_transform):
        assert list(node.mean) == [0.1, 0.2, 0.3] and list(node.std) == [0.4, 0.5, 0.6]
    assert input_normalisation(cfg) == {"input_mean": [0.1, 0.2, 0.3], "input_std": [0.4, 0.5, 0.6]}
    evaluate = hydra.utils.instantiate(cfg.data.eval_transform, normalize_on_device=False)
    white = {"image": torch.full((3, 4, 4), 255, dtype=torch.uint8), "mask": torch.zeros(4, 4, dtype=torch.int64)}
    pixel = evaluate(white)["image"][:, 0, 0]
    assert pixel.tolist() == pytest.approx([(1 - 0.1) / 0.4, (1 - 0.2) / 0.5, (1 - 0.3) / 0.6], rel=1e-6)


def test_the_module_options_are_decided_once_and_hydra_builds_the_module(make_cfg):
    """configs/model/_module.yaml holds the SegmentationModule's options; no model config repeats them, and an
    override reaches the module that Hydra builds from the model node (issue 25)."""
    from omegaconf import OmegaConf

    from segloss.build import build_module

    options = set(OmegaConf.load(CONFIG_DIR / "model" / "_module.yaml")) - {"_target_", "aux"}
    for name in MODELS:
        assert not options & set(OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml")), name
    module = build_module(make_cfg(["model.binary_threshold=0.3", "model.channels_last=false"]), with_optimizer=False)
    assert module.binary_threshold == 0.3 and module.channels_last is False


def test_every_group_an_experiment_overrides_is_in_each_entry_config():
    """`make predict EXP=study_synthetic_city` failed to compose: predict.yaml had no `metrics` group for the
    experiment's `override /metrics: study`. Every entry that takes EXP= must list each group experiments override."""
    import yaml

    overridden = set()
    for path in (CONFIG_DIR / "experiment").glob("*.yaml"):
        for item in yaml.safe_load(path.read_text()).get("defaults", []):
            key = next(iter(item)) if isinstance(item, dict) else ""
            if key.startswith("override /"):
                overridden.add(key.removeprefix("override /"))
    assert {"metrics", "data", "model", "loss"} <= overridden
    for entry in ("train", "eval", "predict", "export"):
        groups = {next(iter(item)).removeprefix("optional ") for item in yaml.safe_load(
            (CONFIG_DIR / f"{entry}.yaml").read_text())["defaults"] if isinstance(item, dict)}  # fmt: skip
        assert overridden <= groups, (entry, sorted(overridden - groups))
