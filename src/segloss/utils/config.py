"""Where the configs live, run-time environment defaults and Hydra instantiation helpers."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from segloss.errors import ConfigError, SeglossError

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # src/segloss in a clone, site-packages/segloss when installed


def find_roots(package_dir: Path = PACKAGE_DIR, cwd: Path | None = None) -> tuple[Path, Path]:
    """``(project_root, config_dir)``: where runs, data and caches go, and where the configs are.

    - **A clone** (``src/segloss`` two levels under a folder with ``pyproject.toml`` and ``configs/``): the
      clone's root and its top-level ``configs/``, which the user edits.
    - **An installed package** (a wheel, not editable): the current directory (``logs/``, ``data/``,
      ``.cache/`` are made there, as a run from the clone's root does) and the YAML files shipped inside the
      package (``segloss/configs``).

    ``PROJECT_ROOT`` and ``SEGLOSS_CONFIG_DIR`` in the environment override either. A user's own configs go
    on Hydra's search path beside these (``--config-dir DIR``; docs/install.md), they never replace them.
    """
    clone = package_dir.parents[1]
    if (clone / "pyproject.toml").is_file() and (clone / "configs" / "train.yaml").is_file():
        root, configs = clone, clone / "configs"
    else:
        root, configs = (cwd or Path.cwd()).resolve(), package_dir / "configs"
    root = Path(os.environ["PROJECT_ROOT"]) if os.environ.get("PROJECT_ROOT") else root
    configs = Path(os.environ["SEGLOSS_CONFIG_DIR"]) if os.environ.get("SEGLOSS_CONFIG_DIR") else configs
    return root, configs


PROJECT_ROOT, CONFIG_DIR = find_roots()


def set_environment() -> None:
    """Defaults that the configs and loggers read: the project root and W&B offline mode.

    W&B runs offline unless the user chose otherwise (``WANDB_MODE=online`` or ``wandb login``
    followed by setting the mode); offline runs are written under the run directory.
    """
    os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    if not OmegaConf.has_resolver("rank_suffix"):
        OmegaConf.register_new_resolver("rank_suffix", rank_suffix)


def rank_suffix() -> str:
    """``""`` in the first process of a run, ``"_rank<N>"`` in the others (``${rank_suffix:}`` in the
    Hydra log file name keeps the ranks of a DDP run from writing one file at once)."""
    from segloss.utils.ranks import launch_rank  # the environment only: no Lightning import for a log name

    rank = launch_rank()
    return f"_rank{rank}" if rank else ""


def instantiate(node: DictConfig, where: str, **kwargs):
    """``hydra.utils.instantiate(node)`` whose failures name the config node (``model.net`` …) and the cause
    as a :class:`ConfigError` (a :class:`SeglossError` raised by the target passes through as it is)."""
    from hydra.errors import InstantiationException

    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, SeglossError):
            raise cause from err
        target = node.get("_target_", "?") if isinstance(node, DictConfig) else "?"
        reason = f"{type(cause).__name__}: {cause}" if cause is not None else str(err).splitlines()[0]
        raise ConfigError(
            f"cannot build {where} ({target}) from the config: {reason}. Fix the {where} settings"
        ) from err


def instantiate_group(cfg: DictConfig | None, group: str = "") -> list:
    """Instantiate every entry with a ``_target_`` of a config group such as ``callbacks`` or ``logger``."""
    if not cfg:
        return []
    return [
        instantiate(node, f"{group}.{key}" if group else str(key))
        for key, node in cfg.items()
        if isinstance(node, DictConfig) and "_target_" in node
    ]


def save_resolved_config(cfg: DictConfig, output_dir: str | Path) -> Path:
    """Write the fully resolved config next to the run's outputs (``config.yaml``), secrets redacted
    (:mod:`segloss.utils.secrets`)."""
    from segloss.utils.secrets import redact, scrub_files

    path = Path(output_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(redact(OmegaConf.to_container(cfg, resolve=True))), path)
    scrub_files(Path(output_dir) / ".hydra")  # Hydra's copies: the command-line overrides as typed
    return path


@contextmanager
def report_user_errors(exit_code: int = 2) -> Iterator[None]:
    """Turn a :class:`SeglossError` — also one that Hydra's ``instantiate`` wrapped — into its message on
    stderr and a non-zero exit (no traceback); ``SEGLOSS_TRACEBACK=1`` re-raises for debugging."""
    try:
        yield
    except Exception as err:
        user_error = find_user_error(err)
        if user_error is None or os.environ.get("SEGLOSS_TRACEBACK"):
            raise
        print(f"\nsegloss: error: {user_error}", file=sys.stderr)
        sys.exit(exit_code)


def find_user_error(err: BaseException | None) -> SeglossError | None:
    """``err`` or the :class:`SeglossError` it was raised from (Hydra wraps errors of ``_target_`` calls)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, SeglossError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
