"""Check a composed config before anything is built: a wrong type or value, or a metric name that no
part logs, costs seconds and one message — not a traceback, and not an epoch.

:func:`check_config` collects every problem it finds and raises one :class:`ConfigError` that lists them,
each with the key, the value found, what is expected and an example override. It checks only keys that
the config holds, so it serves ``train``, ``eval`` and ``predict``. Deeper checks (dataset layout, loss
arguments, checkpoint fit) happen where those parts are built, still before any training step.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from segloss.errors import ConfigError
from segloss.utils.metric_registry import logged_metrics as registry_logged_metrics
from segloss.utils.metric_registry import optimizable_metrics
from segloss.utils.precision import MATMUL_PRECISIONS, check_precision
from segloss.utils.rules import Rule, int_at_least, is_int, number_above, one_of

_MISSING = object()
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


# Rules of values whose consumer is not segloss's (the Trainer, the optimizer) or that span nodes; the rules of
# values segloss's own constructors consume live with them (:func:`consumer_rules`).
RULES: list[Rule] = [Rule(*rule) for rule in [
    ("seed", int_at_least(0, allow_none=True), "a non-negative integer or null", "seed=42"),
    ("trainer.max_epochs", lambda v: is_int(v) and (v >= 1 or v == -1),
     "an integer ≥ 1 (or -1 with trainer.max_steps > 0); 0 epochs would train nothing", "trainer.max_epochs=24"),
    ("trainer.max_steps", lambda v: is_int(v) and (v >= 1 or v == -1),
     "an integer ≥ 1, or -1 for no step limit; 0 steps would train nothing", "trainer.max_steps=20000"),
    ("trainer.min_epochs", int_at_least(0, allow_none=True), "a non-negative integer", "trainer.min_epochs=1"),
    ("trainer.devices", lambda v: v == "auto" or (is_int(v) and v >= 1) or isinstance(v, list | ListConfig),
     "a positive integer, a list of device ids or auto", "trainer.devices=2"),
    ("trainer.num_nodes", int_at_least(1), "a positive integer", "trainer.num_nodes=1"),
    ("trainer.accelerator", one_of(*ACCELERATORS), f"one of {list(ACCELERATORS)}", "trainer.accelerator=cpu"),
    ("trainer.log_every_n_steps", int_at_least(1), "a positive integer", "trainer.log_every_n_steps=10"),
    ("trainer.check_val_every_n_epoch", int_at_least(1, allow_none=True), "a positive integer or null",
     "trainer.check_val_every_n_epoch=1"),
    ("trainer.val_check_interval", number_above(0, allow_none=True), "a positive number or null",
     "trainer.val_check_interval=1000"),
    ("trainer.accumulate_grad_batches", int_at_least(1), "a positive integer", "trainer.accumulate_grad_batches=2"),
    ("trainer.gradient_clip_val", number_above(0, allow_none=True, inclusive=True), "a number ≥ 0 or null",
     "trainer.gradient_clip_val=1.0"),
    ("optimizer.lr", number_above(0), "a positive number", "optimizer.lr=0.001"),
    ("optimizer.weight_decay", number_above(0, inclusive=True), "a number ≥ 0", "optimizer.weight_decay=0.0001"),
    ("save_every_n_steps", int_at_least(1, allow_none=True), "a positive number of steps, or null",
     "save_every_n_steps=500"),
    ("resume", one_of("auto", "none", False, allow_none=True), "auto or null (for a given checkpoint use ckpt_path=…)",
     "resume=auto"),
    ("float32_matmul_precision", one_of(*MATMUL_PRECISIONS, allow_none=True),
     f"one of {list(MATMUL_PRECISIONS)} or null", "float32_matmul_precision=high"),
    ("threads", lambda v: v == "auto" or int_at_least(1)(v), "auto or a number of threads ≥ 1", "threads=2"),
    ("test_after_training", lambda v: isinstance(v, bool), "true or false", "test_after_training=true"),
]]  # fmt: skip


def consumer_rules() -> list[Rule]:
    """The rules that segloss's constructors apply to the values they consume (module, non-finite policy,
    metrics, datamodule, training transform, CRF, loss family): the same objects as the constructors'
    ``RULES``, read from :mod:`segloss.utils.consumer_rules`, which imports neither torch nor Lightning."""
    from segloss.utils import consumer_rules as homes
    from segloss.utils.loss_family import FAMILY_RULE

    tables = (homes.DATAMODULE, homes.TRAIN_TRANSFORM, homes.MODULE, homes.NONFINITE, homes.QUALITY,
              homes.EVALUATION, homes.CRF, {"family": FAMILY_RULE})  # fmt: skip
    return [rule for table in tables for rule in table.values()]


# problems are listed group by group
ORDER = ("seed", "trainer", "data", "loss", "optimizer", "model", "metrics", "inference")


def _group_position(rule: Rule) -> int:
    group = rule.key.split(".")[0]
    return ORDER.index(group) if group in ORDER else len(ORDER)


def _value(cfg: DictConfig, key: str):
    try:
        return OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=False)
    except Exception as err:  # an interpolation that cannot be resolved
        raise ConfigError(f"{key} cannot be resolved: {err}") from err


def check_values(cfg: DictConfig) -> list[str]:
    """The problems of :data:`RULES` (keys absent from ``cfg`` are skipped)."""
    problems = []
    for key, check, expected, example in sorted([*RULES, *consumer_rules()], key=_group_position):
        value = _value(cfg, key)
        if value is _MISSING or check(value):
            continue
        shown = OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig) else value
        problems.append(str(ConfigError.value(key, shown, expected, example)))
    if _value(cfg, "test_after_training") is True and _value(cfg, "data.splits.test") in (None, _MISSING):
        problems.append("test_after_training=true but the data config has no test split (data.splits.test is null); "
                        "name one (e.g. data.splits.test=val to score the best checkpoint on the validation split "
                        "again) or set test_after_training=false")  # fmt: skip
    max_epochs, max_steps = _value(cfg, "trainer.max_epochs"), _value(cfg, "trainer.max_steps")
    if max_epochs == -1 and max_steps == -1:
        problems.append("trainer.max_epochs=-1 and trainer.max_steps=-1 would train forever; set one of them")
    return problems


def check_extras(cfg: DictConfig) -> list[str]:
    """A logger whose package is an optional extra of segloss, chosen where the extra is not installed."""
    import importlib.util

    loggers = cfg.get("logger") or {}
    wants_tensorboard = any(
        isinstance(node, DictConfig) and str(node.get("_target_", "")).endswith("TensorBoardLogger")
        for node in loggers.values()
    ) if isinstance(loggers, DictConfig) else False  # fmt: skip
    if wants_tensorboard and not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
        return ["the TensorBoard logger needs the tensorboard package: pip install 'segloss[tensorboard]' "
                "(or choose another logger, e.g. logger=csv)"]  # fmt: skip
    return []


def check_paths(cfg: DictConfig) -> list[str]:
    """A folder that resolves to an empty path would put datasets, logs or caches at the filesystem root; one
    that is a file (or lies under a file) fails deep inside whatever writes there first."""
    problems = []
    for key in ("paths.data_dir", "paths.log_dir", "paths.cache_dir", "data.root", "paths.output_dir"):
        value = _value(cfg, key)
        if value is _MISSING or value is None:
            continue
        if str(value).strip():
            blocker = file_in_the_way(Path(str(value)).expanduser())
            if blocker is not None:
                source = " (from DATA_ROOT)" if key == "paths.data_dir" and os.environ.get("DATA_ROOT") else ""
                problems.append(f"{key}={value}{source} is not a folder: {blocker} is a file; give a folder")
            continue
        if key == "paths.data_dir" and os.environ.get("DATA_ROOT") == "":
            problems.append("the environment variable DATA_ROOT is set but empty, so datasets would be written at "
                            "the filesystem root; unset it (`unset DATA_ROOT`) or set it to the folder that holds "
                            "the datasets")  # fmt: skip
        else:
            problems.append(f"{key} is empty; give a folder (e.g. {key}=/path/to/folder)")
    return problems


def file_in_the_way(path: Path) -> Path | None:
    """``path`` or the nearest of its existing ancestors when that is a file (not a folder), else None."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def per_case_data(cfg: DictConfig) -> bool:
    """Whether the data config's dataset yields 3D cases (its class has ``PER_CASE = True``)."""
    target = _value(cfg, "data.dataset._target_")
    if not isinstance(target, str):
        return False
    try:
        import hydra

        return bool(getattr(hydra.utils.get_class(target), "PER_CASE", False))
    except (ImportError, ValueError, AttributeError):
        return False  # a wrong _target_ is reported when the data is built


def region_names(cfg: DictConfig) -> list[str]:
    """The names of ``data.regions`` (overlapping regions trained with one sigmoid each), in order; [] without."""
    regions = _value(cfg, "data.regions")
    return [str(name) for name in regions] if isinstance(regions, DictConfig) else []


def logged_metrics(cfg: DictConfig, per_case: bool) -> set[str]:
    """Every metric name a training with ``cfg`` logs (what a callback's ``monitor`` may name)."""
    names = list(cfg.data.class_names)
    terms = list((_value(cfg, "loss.terms") or {}).keys()) if _value(cfg, "loss.terms") is not _MISSING else []
    logged = {"val/loss", "train/loss_step", "train/loss_epoch"}
    logged |= {f"val/loss/{t}" for t in terms} | {f"train/loss/{t}_{s}" for t in terms for s in ("step", "epoch")}
    switches = _value(cfg, "metrics")
    switches = OmegaConf.to_container(switches) if isinstance(switches, DictConfig) else None
    regions = region_names(cfg)
    logged |= registry_logged_metrics(names, per_case, switches, regions)  # segloss.utils.metric_registry, switched
    logged |= {f"{m}_best" for m in optimizable_metrics(names, per_case, regions)}
    logged |= {"train/mIoU", "train/mDice", "train/acc", "train/skipped_batches"}
    return logged


def check_metrics(cfg: DictConfig) -> list[str]:
    """``optimized_metric`` must be a validation score of this run; the checkpoint follows it; every other
    callback ``monitor`` names a metric that is logged."""
    optimized = _value(cfg, "optimized_metric")
    if optimized is _MISSING or _value(cfg, "data.class_names") is _MISSING:
        return []
    per_case = per_case_data(cfg)
    allowed = optimizable_metrics(list(cfg.data.class_names), per_case, region_names(cfg))
    problems = []
    if optimized not in allowed:
        shown = [m for m in allowed if m.count("/") == 1]
        why = " (the validation loss is not comparable across losses)" if str(optimized).startswith("val/loss") else ""
        problems.append(f"optimized_metric={optimized!r} is not a validation score of this run{why}; choose one of "
                        f"{shown} or val/IoU/<class>, val/Dice/<class> (e.g. optimized_metric=val/mIoU)")  # fmt: skip
    logged = logged_metrics(cfg, per_case)
    for name, node in (_value(cfg, "callbacks") or {}).items() if _value(cfg, "callbacks") is not _MISSING else []:
        if not isinstance(node, DictConfig) or node.get("monitor") is None:
            continue
        monitor = node.monitor
        if name == "model_checkpoint" and monitor != optimized:
            problems.append(f"callbacks.model_checkpoint.monitor={monitor!r} differs from "
                            f"optimized_metric={optimized!r}: the checkpoint, the results table and the sweep "
                            f"objective follow one metric; set optimized_metric={monitor} instead")  # fmt: skip
        elif name == "model_checkpoint" and node.get("mode", "min") != "max":
            problems.append(f"callbacks.model_checkpoint.mode={node.get('mode')!r}: validation scores are maximised; "
                            "use mode=max")  # fmt: skip
        elif monitor not in logged:
            close = sorted(m for m in logged if m.split("/")[0] == str(monitor).split("/")[0] and m.count("/") == 1)
            problems.append(f"callbacks.{name}.monitor={monitor!r} names no logged metric; e.g. {close[:8]}")
    return problems


def check_config(cfg: DictConfig) -> None:
    """Raise one :class:`ConfigError` listing every problem found (see the module docstring)."""
    problems = check_paths(cfg) + check_values(cfg) + check_extras(cfg)
    if not problems:
        problems += check_metrics(cfg)
    precision, accelerator = _value(cfg, "trainer.precision"), _value(cfg, "trainer.accelerator")
    if precision is not _MISSING:
        try:
            check_precision(precision, "auto" if accelerator is _MISSING else accelerator)
        except ConfigError as err:
            problems.append(str(err))
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            problems.append(f"trainer.accelerator={accelerator} but no CUDA GPU is available here; use trainer=cpu "
                            "(or trainer.accelerator=auto)")  # fmt: skip
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} problems in the config:\n" + "\n".join(f"  - {p}" for p in problems))
