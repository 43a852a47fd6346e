"""Checkpoints written atomically: a temporary file next to the target, flushed to disk, then renamed.

A kill, a full disk or a node failure in the middle of a save leaves the previous checkpoint as it
was (``os.replace`` is atomic within a file system). Lightning's own writer goes through an fsspec
transaction whose temporary file lives in the system temp folder; when that is another file system
the final move is a copy, and a kill during it leaves a truncated checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` that never leaves a partial file at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O plugin (``Trainer(plugins=[AtomicCheckpointIO()])``) for local paths;
    loading stays Lightning's."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_torch_save(checkpoint, path)
