"""Hydra callbacks of the entry points (``configs/hydra/default.yaml``).

Hydra creates the run (or sweep) folder before any code of a job runs, so a folder that is a file, or lies
under one, fails there with a bare ``FileExistsError``/``NotADirectoryError``. :class:`CheckOutputFolders`
checks it first and says which key to change. (Hydra turns an exception in a callback into a warning and
goes on, so the callback reports like ``report_user_errors`` does and exits with status 2.)
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from segloss.errors import ConfigError


def _check(folder: str, key: str) -> None:
    path = Path(folder).expanduser()
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                error = ConfigError(f"{key}={folder} is not a folder: {candidate} is a file; give a folder ({key}=…)")
                print(f"\nsegloss: error: {error}", file=sys.stderr)
                raise SystemExit(2)
            return


def _folder(config: DictConfig, key: str) -> str | None:
    """``key`` resolved, or None when it needs what Hydra sets only once the job starts (``${hydra:…}``)."""
    try:
        value = OmegaConf.select(config, key)
    except Exception:  # any resolution failure: Hydra resolves it later itself
        return None
    return None if value is None else str(value)


class CheckOutputFolders(Callback):
    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        folder = _folder(config, "hydra.run.dir")
        if folder is not None:
            _check(folder, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        folder = _folder(config, "hydra.sweep.dir")
        if folder is not None:
            _check(folder, "hydra.sweep.dir")
