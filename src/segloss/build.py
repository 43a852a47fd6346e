"""Config → objects: the LightningModule (net, loss with class weights resolved, optimizer and scheduler
factories, input normalisation) and the Trainer (callbacks, loggers, precision, cluster plugins).

Shared by the entry points (``segloss.train``, ``segloss.eval``, ``segloss.predict``), so each builds the
same module from the same config. A part that cannot be built from its config node stops with a
:class:`ConfigError` naming the node, before any training — the optimizer and scheduler factories are tried
once on a dummy parameter, so a wrong argument costs seconds, not an epoch.
"""

from __future__ import annotations

import copy
from pathlib import Path

import lightning.pytorch as L
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from segloss.callbacks import SignalCheckpoint, ThreadsFollowLoad, stop_signals
from segloss.errors import ConfigError
from segloss.losses._checks import check_class_vector
from segloss.losses.class_weights import METHODS, class_weights
from segloss.models.module import SegmentationModule
from segloss.models.nets.aux_heads import AuxiliaryHeads, with_aux_heads
from segloss.utils.checkpoints import AtomicCheckpointIO
from segloss.utils.cluster import check_launch, cluster_plugins
from segloss.utils.config import instantiate, instantiate_group
from segloss.utils.loss_family import without_family
from segloss.utils.precision import check_precision, resolve_precision, set_matmul_precision
from segloss.utils.threads import configure_threads


def build_module(cfg: DictConfig, with_optimizer: bool = True, datamodule=None) -> SegmentationModule:
    """Net, loss (and optimizer/scheduler factories) from their config groups, joined in the module.

    Class-weight settings given by name in the loss config (``weight: median_frequency``) are computed
    from the training labels of ``datamodule`` (see :func:`resolve_class_weights`)."""
    loss = build_loss(cfg, datamodule)
    optimizer = scheduler = None
    if with_optimizer:
        optimizer = instantiate(cfg.optimizer, "optimizer")
        scheduler = instantiate(cfg.scheduler, "scheduler") if cfg.get("scheduler") else None
        try_factories(optimizer, scheduler)
    net = with_aux_heads(
        instantiate(cfg.model.net, "model.net"),
        int(cfg.model.net.get("num_classes", cfg.data.num_classes)),
        OmegaConf.to_container(cfg.model.aux) if cfg.model.get("aux") else None,
    )
    # The module's own options are the model node less its net and aux (configs/model/module.yaml); Hydra builds
    # it, with what other config groups and the data decide passed in.
    options = OmegaConf.masked_copy(cfg.model, [key for key in cfg.model if key not in ("net", "aux")])
    if "_target_" not in options:  # a model config of one's own that does not extend configs/model/module.yaml
        with open_dict(options):
            options._target_ = f"{SegmentationModule.__module__}.{SegmentationModule.__name__}"
    return instantiate(
        options,
        "model",
        net=net,
        loss=loss,
        deep_supervision=net.weights if isinstance(net, AuxiliaryHeads) else None,
        optimizer=optimizer,
        scheduler=scheduler,
        num_classes=cfg.data.num_classes,
        ignore_index=cfg.data.ignore_index,
        class_names=list(cfg.data.class_names),
        inference=OmegaConf.to_container(cfg.inference, resolve=True) if cfg.get("inference") else None,
        optimized_metric=cfg.get("optimized_metric", "val/mIoU"),
        metrics=OmegaConf.to_container(cfg.metrics) if cfg.get("metrics") else None,
        regions=OmegaConf.to_container(cfg.data.regions) if cfg.data.get("regions") else None,
        **input_normalisation(cfg),
    )


def build_loss(cfg: DictConfig, datamodule=None) -> nn.Module:
    """The loss of ``cfg.loss``: class weights named by method counted from the data, the config's ``family``
    tag left out (:mod:`segloss.utils.loss_family`), per-class vectors checked against ``data.num_classes``."""
    loss = instantiate(without_family(resolve_class_weights(cfg, datamodule)), "loss")
    check_class_vectors(loss, cfg.data.num_classes)
    return loss


def try_factories(optimizer, scheduler) -> None:
    """Call the optimizer and scheduler factories once on a dummy parameter: a wrong argument or value
    fails here, with the config node named, instead of when training starts."""
    for where, factory in (("optimizer", optimizer), ("scheduler", scheduler)):
        if factory is None:
            continue
        try:
            trial = optimizer(params=[nn.Parameter(torch.zeros(1))])
            if where == "scheduler":
                factory(optimizer=trial, total_steps=10)
        except Exception as err:  # TypeError (argument), ValueError (value), …: all are the config's
            raise ConfigError(f"cannot build {where} from the config: {type(err).__name__}: {err}. "
                              f"Fix the {where} settings") from err  # fmt: skip


def input_normalisation(cfg: DictConfig) -> dict:
    """Mean/std of the data's ``normalize`` node (the transforms read the same node), for uint8 batches on the
    device and for pictures; a data config without one normalises as its evaluation transform says (ImageNet's
    statistics by default)."""
    node = cfg.data.get("normalize") or cfg.data.get("eval_transform") or {}
    return {f"input_{k}": list(node[k]) for k in ("mean", "std") if k in node}


def check_class_vectors(loss: nn.Module, num_classes: int) -> None:
    """Per-class vectors of a loss (class weights, focal α, …) must have ``num_classes`` entries."""
    for name, module in loss.named_modules():
        for attr in ("weight", "alpha", "class_weight"):
            value = getattr(module, attr, None)
            if isinstance(value, torch.Tensor) and value.dim() == 1 and value.numel() != 1:
                try:  # the losses' own rule (segloss.losses._checks), named by the config key
                    check_class_vector(f"loss.{name + '.' if name else ''}{attr}", value, num_classes,
                                       against=f"data.num_classes={num_classes}")  # fmt: skip
                except ValueError as err:
                    raise ConfigError(f"{err}, or a method name such as weight=median_frequency") from err


def _named_weight_nodes(loss_cfg: DictConfig):
    """``(node, key, method)`` for every ``weight``/``alpha`` of the loss config that names a method."""
    nodes = [loss_cfg]
    while nodes:
        node = nodes.pop()
        nodes.extend(value for value in node.values() if isinstance(value, DictConfig))
        for key in ("weight", "alpha"):
            if isinstance(node.get(key), str):
                yield node, key, node[key]


def resolve_class_weights(cfg: DictConfig, datamodule=None) -> DictConfig:
    """Copy of ``cfg.loss`` where every ``weight``/``alpha`` naming a method of
    :func:`segloss.losses.class_weights` is replaced by the weights computed from the training split's
    label counts (one pass over the masks, cached in ``paths.cache_dir``)."""
    loss_cfg = copy.deepcopy(cfg.loss)
    for node, key, method in _named_weight_nodes(loss_cfg):
        if method not in METHODS:
            raise ConfigError(f"loss {key}={method!r}: give a list of numbers or one of {METHODS}")
        if datamodule is None:
            raise ConfigError(f"loss {key}={method!r} needs the training data to count labels")
        node[key] = class_weights_from_data(datamodule, method, cfg.paths.cache_dir).tolist()
    return loss_cfg


def without_named_class_weights(cfg: DictConfig) -> DictConfig:
    """Copy of ``cfg`` whose loss names no class-weight method: for prediction, where the loss plays no
    part and counting the weights would need the training labels."""
    cfg = copy.deepcopy(cfg)
    for node, key, _ in _named_weight_nodes(cfg.loss):
        node[key] = None
    return cfg


def class_weights_from_data(datamodule, method: str, cache_dir: str):
    """Weights of ``method`` from the (cached) pixel counts of the datamodule's training split."""
    from segloss.data.label_stats import cached_label_counts, require_labelled

    datamodule.prepare_data()
    dataset = datamodule.dataset(root=datamodule.root, split=datamodule.splits["train"], transform=None)
    key = f"{type(dataset).__name__}|{datamodule.root}|{datamodule.splits['train']}"
    stats = cached_label_counts(dataset, datamodule.num_classes, datamodule.ignore_index, cache_dir, key)
    require_labelled(stats, f"the training labels of {datamodule.root}", datamodule.ignore_index)
    return class_weights(torch.tensor(stats["counts"]), method, torch.tensor(stats["image_pixels"]))


def build_trainer(
    cfg: DictConfig, loggers: list, callbacks=(), run_dir: Path | None = None, multirun: bool = False
) -> L.Trainer:
    """The Trainer of ``cfg.trainer`` with the ``callbacks`` group (plus ``callbacks``), ``loggers``, the
    cluster environment, ``trainer.precision=auto`` resolved for this machine (said once) and the CUDA
    float32 matmul precision set; process layouts that would hang are refused.

    A training (``run_dir`` given) also gets what makes resuming exact: atomic checkpoint writes,
    ``last.ckpt`` every ``save_every_n_steps`` (a separate ``ModelCheckpoint``, so the one that saves after
    each validation still does so at the same step) and on SIGTERM/SIGINT/SIGUSR1."""
    plugins = []
    if run_dir is not None:
        ckpt_dir = Path(run_dir) / "checkpoints"
        callbacks = [*callbacks, SignalCheckpoint(ckpt_dir, stop_signals(cfg))]
        if cfg.get("save_every_n_steps"):
            options = {"save_top_k": 0, "save_last": True, "enable_version_counter": False}
            callbacks.insert(0, ModelCheckpoint(ckpt_dir, every_n_train_steps=int(cfg.save_every_n_steps), **options))
        plugins.append(AtomicCheckpointIO())
    accelerator = cfg.trainer.get("accelerator", "auto")
    precision, reason = resolve_precision(cfg.trainer.get("precision", "auto"), accelerator)
    check_precision(precision, accelerator)
    if reason is not None:
        announce(f"trainer.precision=auto → {precision}: {reason} (set trainer.precision=… to choose)")
    set_matmul_precision(cfg.get("float32_matmul_precision"), accelerator)
    make_trainer = instantiate(
        cfg.trainer, "trainer", _partial_=True
    )  # objects are passed to the call, not to OmegaConf
    try:
        trainer = make_trainer(
            precision=precision,
            callbacks=[*instantiate_group(cfg.get("callbacks"), "callbacks"), *callbacks],
            logger=loggers,
            plugins=[*cluster_plugins(cfg.get("cluster")), *plugins] or None,
        )
    except (TypeError, ValueError) as err:  # Lightning's own checks of its arguments
        raise ConfigError(f"cannot build the trainer from the config: {err}. Fix the trainer settings") from err
    check_launch(trainer, multirun)
    on_cpu = isinstance(trainer.accelerator, CPUAccelerator)
    chooser = configure_threads(cfg, trainer.num_devices if on_cpu else 1, announce)
    if chooser is not None and run_dir is not None:
        trainer.callbacks.append(ThreadsFollowLoad(chooser))
    return trainer


@rank_zero_only
def announce(message: str) -> None:
    print(f"segloss: {message}", flush=True)
