"""Train a segmentation model: ``python -m segloss.train [experiment=NAME] [overrides…]``.

Composes ``configs/train.yaml``; writes the run directory (resolved config, checkpoints, CSV
metrics, offline W&B run, prediction grids) and prints the per-class table of the best epoch.
"""

from __future__ import annotations

import copy
import sys
import traceback
from pathlib import Path

import hydra
import lightning.pytorch as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from segloss.data.label_stats import cached_label_counts
from segloss.errors import ConfigError
from segloss.fault_tolerance import SignalCheckpoint, StoppedBySignal, stop_signals
from segloss.losses import class_weights
from segloss.losses.class_weights import METHODS
from segloss.models.module import SegmentationModule
from segloss.preflight import check_class_vectors, check_precision
from segloss.utils.checkpoint_io import AtomicCheckpointIO
from segloss.utils.checkpoints import check_fits, read_checkpoint
from segloss.utils.cluster import check_launch, cluster_plugins, launch_rank
from segloss.utils.config import (
    CONFIG_DIR,
    instantiate_group,
    report_user_errors,
    save_resolved_config,
    set_environment,
)
from segloss.utils.resume import resolve_resume, rewind_csv_logs, step_checkpoint
from segloss.utils.rich_output import config_tree, print_results
from segloss.utils.secrets import redact
from segloss.utils.wandb_media import (
    finish_wandb,
    loss_family,
    resume_wandb_run,
    save_wandb_run_id,
    start_loggers,
)

set_environment()


def build_module(cfg: DictConfig, with_optimizer: bool = True, datamodule=None) -> SegmentationModule:
    """Net, loss (and optimizer/scheduler factories) from their config groups, joined in the module.

    Class-weight settings given by name in the loss config (``weight: median_frequency``) are
    computed from the training labels of ``datamodule`` (see :func:`resolve_class_weights`).
    """
    instantiate = hydra.utils.instantiate
    loss = instantiate(resolve_class_weights(cfg, datamodule))
    check_class_vectors(loss, cfg.data.num_classes)
    return SegmentationModule(
        net=instantiate(cfg.model.net),
        loss=loss,
        optimizer=instantiate(cfg.optimizer) if with_optimizer else None,
        scheduler=instantiate(cfg.scheduler) if with_optimizer and cfg.get("scheduler") else None,
        num_classes=cfg.data.num_classes,
        ignore_index=cfg.data.ignore_index,
        class_names=list(cfg.data.class_names),
        channels_last=cfg.model.get("channels_last", False),
        inference=OmegaConf.to_container(cfg.inference) if cfg.get("inference") else None,
        compile=cfg.model.get("compile", False),
        train_metrics=cfg.model.get("train_metrics", True),
        nonfinite=cfg.model.get("nonfinite", "raise"),
        **input_normalisation(cfg),
    )


def input_normalisation(cfg: DictConfig) -> dict:
    """Mean/std of the data's evaluation transform (ImageNet's by default), for uint8 batches."""
    transform = cfg.data.get("eval_transform") or {}
    return {
        k: list(transform[k.removeprefix("input_")])
        for k in ("input_mean", "input_std")
        if k.removeprefix("input_") in transform
    }


def resolve_class_weights(cfg: DictConfig, datamodule=None) -> DictConfig:
    """Copy of ``cfg.loss`` where every ``weight``/``alpha`` naming a method of
    :func:`segloss.losses.class_weights` is replaced by the weights computed from the training split's
    label counts (one pass over the masks, cached in ``paths.cache_dir``)."""
    loss_cfg = copy.deepcopy(cfg.loss)
    nodes = [loss_cfg]
    while nodes:
        node = nodes.pop()
        nodes.extend(value for value in node.values() if isinstance(value, DictConfig))
        for key in ("weight", "alpha"):
            method = node.get(key)
            if isinstance(method, str):
                if method not in METHODS:
                    raise ConfigError(f"loss {key}={method!r}: give a list of numbers or one of {METHODS}")
                if datamodule is None:
                    raise ConfigError(f"loss {key}={method!r} needs the training data to count labels")
                node[key] = class_weights_from_data(datamodule, method, cfg.paths.cache_dir).tolist()
    return loss_cfg


def class_weights_from_data(datamodule, method: str, cache_dir: str):
    """Weights of ``method`` from the (cached) pixel counts of the datamodule's training split."""
    datamodule.prepare_data()
    dataset = datamodule.dataset(root=datamodule.root, split=datamodule.splits["train"], transform=None)
    key = f"{type(dataset).__name__}|{datamodule.root}|{datamodule.splits['train']}"
    stats = cached_label_counts(dataset, datamodule.num_classes, datamodule.ignore_index, cache_dir, key)
    return class_weights(torch.tensor(stats["counts"]), method, torch.tensor(stats["image_pixels"]))


def check_output_dir(output_dir: Path, resuming: bool) -> None:
    """A new run never writes over an earlier run's checkpoints."""
    ckpts = output_dir / "checkpoints"
    if not resuming and ckpts.is_dir() and any(ckpts.iterdir()):
        raise ConfigError(
            f"{ckpts} already holds checkpoints of an earlier run; choose a new paths.output_dir "
            "(the default makes a fresh, time-stamped one) or resume with ckpt_path=…/last.ckpt"
        )


def add_loss_family_tag(cfg: DictConfig) -> None:
    """Append the family of the loss preset (``HydraConfig…choices.loss``; see
    :func:`segloss.utils.wandb_media.loss_family`) to ``cfg.tags``, which experiments may replace."""
    choice = HydraConfig.get().runtime.choices.get("loss") if HydraConfig.initialized() else None
    family = loss_family(choice)
    with open_dict(cfg):
        tags = list(cfg.get("tags") or [])
        cfg.tags = tags if family in tags else [*tags, family]


def train(cfg: DictConfig) -> dict:
    """Run one training described by ``cfg``; returns the best validation results and checkpoint path.

    Every process of a multi-process run executes this; only rank 0 prints and writes the run
    directory (config, checkpoints, W&B run, tables), which all ranks share.
    """
    rank_zero_only.rank = launch_rank()  # known from the launcher's variables before the Trainer exists
    output_dir = Path(cfg.paths.output_dir)
    runs_dir = Path(cfg.paths.log_dir) / cfg.task_name / "runs"
    ckpt_path = resolve_resume(cfg.get("resume"), cfg.get("ckpt_path"), output_dir, runs_dir, cfg.run_name)
    with open_dict(cfg):
        cfg.ckpt_path = ckpt_path
    check_output_dir(output_dir, resuming=ckpt_path is not None)
    add_loss_family_tag(cfg)
    resume_wandb_run(cfg, output_dir)
    show_and_save_config(cfg, output_dir)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.verify()  # a missing dataset stops here, before any model is built
    module = build_module(cfg, datamodule=datamodule)
    loggers = instantiate_group(cfg.get("logger"))
    if ckpt_path is not None:  # read once: it must fit the model, and metrics.csv rewinds to its step
        resumed = read_checkpoint(ckpt_path)
        check_fits(module, resumed.get("state_dict", {}), ckpt_path)
        rewind_csv_logs(loggers, resumed.get("global_step", 0))
    check_precision(cfg.trainer)
    stopper = SignalCheckpoint(output_dir / "checkpoints", stop_signals(cfg))  # checkpoint on SIGTERM/INT/USR1
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer,
        callbacks=[*instantiate_group(cfg.get("callbacks")), *step_checkpoint(cfg, output_dir), stopper],
        logger=loggers,
        plugins=[*cluster_plugins(cfg.get("cluster")), AtomicCheckpointIO()],
    )
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    check_launch(trainer, multirun)
    datamodule.check_world_size(trainer.world_size)
    trainer.loggers = start_loggers(loggers, redact(OmegaConf.to_container(cfg, resolve=True)))
    save_wandb_run_id(trainer.loggers, output_dir)

    try:  # weights_only: a resumed checkpoint is data, never code (segloss.utils.checkpoints)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except StoppedBySignal as stop:  # last.ckpt is saved: exit as the signal asked
        raise SystemExit(stop.exit_code) from None
    finally:
        finish_wandb()

    best = module.best_results or module.last_results.get("val")
    checkpoint = trainer.checkpoint_callback
    best_path = checkpoint.best_model_path if checkpoint is not None else ""
    if best is not None and trainer.is_global_zero:
        print_results(f"val — best epoch ({Path(best_path).name or 'no checkpoint'})", module.class_names, best)
    return {"results": best, "best_ckpt": best_path, "output_dir": str(output_dir), "trainer": trainer}


@rank_zero_only
def show_and_save_config(cfg: DictConfig, output_dir: Path) -> None:
    """Print the config tree (``print_config``), say where a resume starts, write ``config.yaml``."""
    if cfg.get("print_config", True):
        import rich

        rich.print(config_tree(cfg))
    if cfg.get("ckpt_path"):
        print(f"segloss: resuming from {cfg.ckpt_path}")
    save_resolved_config(cfg, output_dir)


def train_sweep_job(cfg: DictConfig) -> dict | None:
    """One job of a multirun (``make sweep``): a failure is recorded in ``<job dir>/FAILED`` (the
    traceback) and reported, and the sweep goes on with the next job."""
    try:
        return train(cfg)
    except Exception:  # a sweep must survive any one job
        output_dir = Path(cfg.paths.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "FAILED").write_text(traceback.format_exc())
        print(f"segloss: job {output_dir.name} failed; traceback in {output_dir / 'FAILED'}", file=sys.stderr)
        finish_wandb()
        return None


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        out = train_sweep_job(cfg)
    else:
        with report_user_errors():
            out = train(cfg)
    return float(out["results"]["mIoU"]) if out and out["results"] is not None else None


if __name__ == "__main__":
    main()
