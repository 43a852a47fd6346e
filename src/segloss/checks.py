"""Check a composed config before anything is built: a wrong type or value, or a metric name that no
part logs, costs seconds and one message — not a traceback, and not an epoch.

:func:`check_config` collects every problem it finds and raises one :class:`ConfigError` that lists them,
each with the key, the value found, what is expected and an example override. It checks only keys that
the config holds, so it serves ``train``, ``eval`` and ``predict``. Deeper checks (dataset layout, loss
arguments, checkpoint fit) happen where those parts are built, still before any training step.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from segloss.errors import ConfigError
from segloss.models.inference import BINARY_THRESHOLD_RULE
from segloss.utils.loss_family import FAMILIES
from segloss.utils.metric_registry import logged_metrics as registry_logged_metrics
from segloss.utils.metric_registry import optimizable_metrics
from segloss.utils.precision import MATMUL_PRECISIONS, check_precision

_MISSING = object()
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def int_at_least(low: int, allow_none: bool = False) -> Callable:
    return lambda v: (allow_none and v is None) or (_is_int(v) and v >= low)


def number_above(low: float, allow_none: bool = False, inclusive: bool = False) -> Callable:
    return lambda v: (allow_none and v is None) or (_is_number(v) and (v >= low if inclusive else v > low))


def one_of(*choices, allow_none: bool = False) -> Callable:
    return lambda v: (allow_none and v is None) or v in choices


def is_bool(v) -> bool:
    return isinstance(v, bool)


def size_pair(v) -> bool:
    return isinstance(v, list | tuple | ListConfig) and len(v) == 2 and all(_is_int(x) and x > 0 for x in v)


# key, check, what is expected, an example override
RULES: list[tuple[str, Callable, str, str]] = [
    ("seed", int_at_least(0, allow_none=True), "a non-negative integer or null", "seed=42"),
    ("trainer.max_epochs", lambda v: _is_int(v) and (v >= 1 or v == -1),
     "an integer ≥ 1 (or -1 with trainer.max_steps > 0); 0 epochs would train nothing", "trainer.max_epochs=24"),
    ("trainer.max_steps", lambda v: _is_int(v) and (v >= 1 or v == -1),
     "an integer ≥ 1, or -1 for no step limit; 0 steps would train nothing", "trainer.max_steps=20000"),
    ("trainer.min_epochs", int_at_least(0, allow_none=True), "a non-negative integer", "trainer.min_epochs=1"),
    ("trainer.devices", lambda v: v == "auto" or (_is_int(v) and v >= 1) or isinstance(v, list | ListConfig),
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
    ("data.batch_size", int_at_least(1), "a positive integer (the global batch)", "data.batch_size=8"),
    ("data.val_batch_size", int_at_least(1, allow_none=True), "a positive integer or null", "data.val_batch_size=2"),
    ("data.num_workers", int_at_least(0), "an integer ≥ 0", "data.num_workers=4"),
    ("data.num_classes", int_at_least(1), "a positive integer", "data.num_classes=19"),
    ("data.ignore_index", lambda v: _is_int(v), "an integer outside [0, num_classes)", "data.ignore_index=255"),
    ("data.class_names", lambda v: isinstance(v, list | ListConfig) and all(isinstance(x, str) for x in v),
     "a list of class names", "data.class_names=[background,spleen]"),
    ("data.normalize_on_device", is_bool, "true or false", "data.normalize_on_device=true"),
    ("data.augment_on_device", is_bool, "true or false", "data.augment_on_device=true"),
    ("data.train_transform.crop_size", size_pair, "[height, width] in pixels",
     "data.train_transform.crop_size=[512,1024]"),
    ("data.train_transform.base_size", size_pair, "[height, width] in pixels",
     "data.train_transform.base_size=[1024,2048]"),
    ("loss.family", lambda v: v is None or v in FAMILIES, f"one of {list(FAMILIES)} (segloss.utils.loss_family)",
     "loss.family=region-based"),
    ("optimizer.lr", number_above(0), "a positive number", "optimizer.lr=0.001"),
    ("optimizer.weight_decay", number_above(0, inclusive=True), "a number ≥ 0", "optimizer.weight_decay=0.0001"),
    ("model.channels_last", is_bool, "true or false", "model.channels_last=true"),
    ("model.compile", is_bool, "true or false", "model.compile=false"),
    ("model.train_metrics", is_bool, "true or false", "model.train_metrics=true"),
    ("model.nonfinite", one_of("raise", "skip", "ignore"), "raise, skip or ignore", "model.nonfinite=raise"),
    ("model.nonfinite_defer", lambda v: v is None or is_bool(v), "true, false or null", "model.nonfinite_defer=null"),
    ("model.nonfinite_max_skips", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
     "a whole number ≥ 1", "model.nonfinite_max_skips=20"),
    BINARY_THRESHOLD_RULE,  # the module's own rule (segloss.models.inference)
    ("metrics.boundary_iou", is_bool, "true or false", "metrics.boundary_iou=true"),
    ("metrics.boundary_dilation", lambda v: isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < 1,
     "a fraction of the image diagonal in (0, 1)", "metrics.boundary_dilation=0.02"),
    ("metrics.calibration", is_bool, "true or false", "metrics.calibration=true"),
    ("metrics.surface_distance", is_bool, "true or false", "metrics.surface_distance=true"),
    ("metrics.small_objects", is_bool, "true or false", "metrics.small_objects=true"),
    ("metrics.small_object_area", lambda v: _is_int(v) and v > 0, "a positive number of pixels",
     "metrics.small_object_area=1024"),
    ("save_every_n_steps", int_at_least(1, allow_none=True), "a positive number of steps, or null",
     "save_every_n_steps=500"),
    ("resume", one_of("auto", "none", False, allow_none=True), "auto or null (for a given checkpoint use ckpt_path=…)",
     "resume=auto"),
    ("float32_matmul_precision", one_of(*MATMUL_PRECISIONS, allow_none=True),
     f"one of {list(MATMUL_PRECISIONS)} or null", "float32_matmul_precision=high"),
    ("threads", lambda v: v == "auto" or int_at_least(1)(v), "auto or a number of threads ≥ 1", "threads=2"),
]  # fmt: skip


def _value(cfg: DictConfig, key: str):
    try:
        return OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=False)
    except Exception as err:  # an interpolation that cannot be resolved
        raise ConfigError(f"{key} cannot be resolved: {err}") from err


def check_values(cfg: DictConfig) -> list[str]:
    """The problems of :data:`RULES` (keys absent from ``cfg`` are skipped)."""
    problems = []
    for key, check, expected, example in RULES:
        value = _value(cfg, key)
        if value is _MISSING or check(value):
            continue
        shown = OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig) else value
        problems.append(str(ConfigError.value(key, shown, expected, example)))
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


def logged_metrics(cfg: DictConfig, per_case: bool) -> set[str]:
    """Every metric name a training with ``cfg`` logs (what a callback's ``monitor`` may name)."""
    names = list(cfg.data.class_names)
    terms = list((_value(cfg, "loss.terms") or {}).keys()) if _value(cfg, "loss.terms") is not _MISSING else []
    logged = {"val/loss", "train/loss_step", "train/loss_epoch"}
    logged |= {f"val/loss/{t}" for t in terms} | {f"train/loss/{t}_{s}" for t in terms for s in ("step", "epoch")}
    switches = _value(cfg, "metrics")
    switches = OmegaConf.to_container(switches) if isinstance(switches, DictConfig) else None
    logged |= registry_logged_metrics(names, per_case, switches)  # segloss.utils.metric_registry, as switched
    logged |= {f"{m}_best" for m in optimizable_metrics(names, per_case)}
    logged |= {"train/mIoU", "train/mDice", "train/acc", "train/skipped_batches"}
    return logged


def check_metrics(cfg: DictConfig) -> list[str]:
    """``optimized_metric`` must be a validation score of this run; the checkpoint follows it; every other
    callback ``monitor`` names a metric that is logged."""
    optimized = _value(cfg, "optimized_metric")
    if optimized is _MISSING or _value(cfg, "data.class_names") is _MISSING:
        return []
    per_case = per_case_data(cfg)
    allowed = optimizable_metrics(list(cfg.data.class_names), per_case)
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
