"""A run folder's configuration, rebuilt safely (``make report``'s disagreement panels).

**A run folder is data, not code** (docs/security.md): its ``.hydra/config.yaml`` is read with ``yaml.safe_load``,
resolved (interpolations included) before anything is built, and refused — nothing imported, nothing called —
when any ``_target_`` in what is built (data, model, loss) is not one that this project's own configs name.
Pretrained-weight downloads are switched off: the checkpoint supplies every weight.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from segloss.errors import ConfigError

if TYPE_CHECKING:
    from omegaconf import DictConfig

# The parts of a run's config that building its module and reading its validation images need (the trainer,
# callbacks and loggers are not replayed).
KEPT = ("data", "model", "loss", "inference", "metrics", "paths", "optimized_metric")


@lru_cache(maxsize=1)
def allowed_targets() -> frozenset[str]:
    """Every ``_target_`` that this project's configs (``segloss.utils.config.CONFIG_DIR``) name, plus the
    module class that ``segloss.build`` supplies itself: what a run folder's config may build."""
    from segloss.models.module import SegmentationModule
    from segloss.utils.config import CONFIG_DIR

    found = {f"{SegmentationModule.__module__}.{SegmentationModule.__name__}"}

    def walk(tree) -> None:
        if isinstance(tree, dict):
            for key, value in tree.items():
                if key == "_target_" and isinstance(value, str):
                    found.add(value)
                walk(value)
        elif isinstance(tree, list):
            for value in tree:
                walk(value)

    for path in sorted(Path(CONFIG_DIR).rglob("*.yaml")):
        try:
            walk(yaml.safe_load(path.read_text()))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue  # a config that does not parse adds no target
    return frozenset(found)


def foreign_targets(tree, where: str = "") -> list[tuple[str, object]]:
    """``(key path, value)`` of every ``_target_`` in ``tree`` (plain dicts and lists) that is not in
    :func:`allowed_targets`."""
    found = []
    if isinstance(tree, dict):
        for key, value in tree.items():
            here = f"{where}.{key}" if where else str(key)
            if key == "_target_":
                if not isinstance(value, str) or value not in allowed_targets():
                    found.append((here, value))
            else:
                found.extend(foreign_targets(value, here))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            found.extend(foreign_targets(value, f"{where}[{i}]"))
    return found


def replay_config(run_dir: Path) -> DictConfig:
    """The parts of a run's configuration that build its module and read its data (:data:`KEPT`), from
    ``run_dir/.hydra/config.yaml`` (``yaml.safe_load``), resolved now (``paths.output_dir`` = the run folder;
    ``DATA_ROOT``/``PROJECT_ROOT`` as set now) and checked before anything is built: every ``_target_`` must be
    one of :func:`allowed_targets`. Pretrained weights are not asked for (``encoder_weights``/``weights_backbone``
    set to null: the checkpoint holds every weight).

    Raises:
        ConfigError: no or an unreadable config, one that does not resolve, or a foreign ``_target_``.
    """
    from omegaconf import OmegaConf

    from segloss.utils.config import CONFIG_DIR, set_environment

    path = Path(run_dir) / ".hydra" / "config.yaml"
    try:
        stored = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{path} does not exist: the run's configuration (written by segloss.train) is needed to rebuild its "
            "model and read its validation images"
        ) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read {path}: {str(err).splitlines()[0]}; repair or remove that run") from None
    missing = [key for key in ("data", "model", "loss") if not isinstance((stored or {}).get(key), dict)]
    if not isinstance(stored, dict) or missing:
        raise ConfigError(f"{path} is not a training configuration (no {', '.join(missing) or 'mapping'})")
    kept = {key: stored[key] for key in KEPT if key in stored}
    paths = dict(kept["paths"]) if isinstance(kept.get("paths"), dict) else {}
    kept["paths"] = {**paths, "output_dir": str(run_dir), "work_dir": os.getcwd()}  # Hydra's run-time values
    set_environment()  # PROJECT_ROOT, which paths.root_dir reads
    try:
        resolved = OmegaConf.to_container(OmegaConf.create(kept), resolve=True)
    except Exception as err:  # the file is data: whatever OmegaConf says about it, it is that file's fault
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"cannot resolve {path}: {reason}; repair that run's configuration") from None
    foreign = foreign_targets(resolved)
    if foreign:
        listed = ", ".join(f"{key}={value!r}" for key, value in foreign)
        raise ConfigError(
            f"refusing to rebuild the run in {run_dir}: its {path.name} names {listed}, which this project's configs "
            f"({CONFIG_DIR}) do not. A run folder is data, not code (docs/security.md): only the classes and "
            "functions of the project's own configs are built from it. If you trust that run, evaluate it by hand "
            "(make eval CKPT=…)"
        )
    net = resolved["model"].get("net")
    if isinstance(net, dict):
        for key in ("encoder_weights", "weights_backbone"):
            if key in net:
                net[key] = None
    return OmegaConf.create(resolved)
