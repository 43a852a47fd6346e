"""Folders that segloss generates itself (the synthetic datasets): a marker file records how they were made,
so a folder is reused only when it holds exactly what was asked for, and never written into otherwise."""

from __future__ import annotations

import json
from pathlib import Path

from segloss.errors import ConfigError


def generated_format(root: Path, marker: str, params: dict, what: str, delete: str, point: str) -> int | None:
    """The format version recorded in ``root/marker`` when it was generated with ``params`` (1 where the marker
    predates versions), or None when ``root`` is missing or empty (generate it). ``what`` names the dataset in
    the messages, ``delete`` and ``point`` are the advice they end with.

    Raises:
        ConfigError: ``root`` holds one made with other parameters, or something that is not generated.
    """
    path = root / marker
    if path.is_file():
        found = json.loads(path.read_text())
        made_as = found.pop("format", 1)
        if found == params:
            return made_as
        raise ConfigError(f"{root} holds {what} made with other parameters ({found}), not {params}. {delete}")
    if root.exists() and any(root.iterdir()):
        raise ConfigError(f"{root} exists and is not a generated {what.removeprefix('a ')} (no {marker}); refusing "
                          f"to write into it. {point}")  # fmt: skip
    return None
