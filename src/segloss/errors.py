"""Errors that are the user's to fix: the command line prints their message alone (no traceback).

Each message names the problem, where it was found and the fix.
"""

from __future__ import annotations

from pathlib import Path


class SeglossError(Exception):
    """Base of the errors that the entry points report as a plain message."""


class ConfigError(SeglossError, ValueError):
    """A config value is wrong or inconsistent."""


class DatasetNotFoundError(SeglossError, FileNotFoundError):
    """The dataset root is missing or does not hold the expected layout."""

    def __init__(self, name: str, root: str | Path, problem: str, layout: str, source: str) -> None:
        root = Path(root).expanduser()
        super().__init__(
            f"{name} not found: {problem}. Looked in data.root={root} (set it with the override "
            f"data.root=/path/to/{name.lower().replace(' ', '_')}, or set DATA_ROOT to the folder that holds "
            f"{root.name}/). Expected layout under the root: {layout}. Where to get it: {source}"
        )
        self.root = root


class DatasetFormatError(SeglossError, ValueError):
    """A file of the dataset is unreadable, unpaired or holds values that are not labels."""
