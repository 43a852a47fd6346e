"""Checkpoints: read safely, checked against the model, written atomically.

**Reading.** A checkpoint is data from outside (a colleague, a download, a shared drive). Loading it with
``weights_only=True`` means Python's unpickler builds only tensors and plain containers, so a file
crafted to run code when unpickled is refused instead of executed. segloss's own checkpoints hold
only such values (the module saves plain hyperparameters), so nothing is lost.

**Writing.** A temporary file next to the target, flushed to disk, then renamed: a kill, a full disk or a
node failure in the middle of a save leaves the previous checkpoint as it was (``os.replace`` is atomic
within a file system). Lightning's own writer goes through an fsspec transaction whose temporary file
lives in the system temp folder; when that is another file system the final move is a copy, and a kill
during it leaves a truncated checkpoint.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from torch import nn

from segloss.errors import CheckpointWriteError, ConfigError


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint at ``path`` as plain data; :class:`ConfigError` when missing, unreadable or unsafe."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = sorted(p.name for p in path.glob("**/*.ckpt"))[:5]
        raise ConfigError(
            f"ckpt_path={path} is a folder; name a checkpoint file in it"
            + (f" (it holds {', '.join(found)}{', …' if len(found) == 5 else ''})" if found else " (it holds no .ckpt)")
            + ", e.g. ckpt_path=…/checkpoints/last.ckpt"
        )
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist; pass ckpt_path=…/checkpoints/<file>.ckpt")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        raise ConfigError(
            f"refusing to load {path}: it holds Python objects other than tensors and plain values, which "
            "unpickling could execute (segloss loads checkpoints with torch.load(weights_only=True)). Only a "
            "checkpoint written by segloss/Lightning from a trusted source should be used; re-save its "
            f"state_dict with torch.save if you trust it. ({str(err).splitlines()[0]})"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise ConfigError(f"cannot read checkpoint {path} (truncated or not a torch file?): {err}") from err
    if not isinstance(checkpoint, dict):
        raise ConfigError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a Lightning checkpoint dict")
    return checkpoint


def check_fits(module: nn.Module, state: dict, path: str | Path) -> None:
    """:class:`ConfigError` naming the missing/unexpected keys and shape mismatches of ``state`` vs ``module``."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k}: {tuple(state[k].shape)} in checkpoint vs {tuple(own[k].shape)}"
        for k in own
        if k in state and hasattr(state[k], "shape") and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        raise ConfigError(
            f"checkpoint {path} does not fit the configured model (wrong model or num_classes?): "
            f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}, shape mismatches {mismatched[:5]}; "
            "use the experiment/overrides the checkpoint was trained with"
        )


def load_weights(module: nn.Module, ckpt_path: str | Path) -> dict:
    """Load a checkpoint's ``state_dict`` (safely) into ``module``; returns the checkpoint."""
    checkpoint = read_checkpoint(ckpt_path)
    state = checkpoint.get("state_dict", checkpoint)
    check_fits(module, state, ckpt_path)
    module.load_state_dict(state)
    return checkpoint


TMP_PATTERN = ".*.tmp"  # the temporary files of atomic_torch_save: .<name>.<pid>.tmp


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` that never leaves a partial file at ``path``; a write that fails (a full
    disk: torch reports it as ``RuntimeError: [enforce fail at inline_container.cc…]``) raises
    :class:`CheckpointWriteError` naming the file, the free space and the fix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except (RuntimeError, OSError) as err:
        free = shutil.disk_usage(path.parent).free
        raise CheckpointWriteError(
            f"could not write the checkpoint {path} ({str(err).splitlines()[0][:160]}); {free:,} bytes are free "
            f"in {path.parent}. Free space there or move paths.output_dir (paths.log_dir) to a larger disk; the "
            "previous checkpoint is intact, and resume=auto continues from it"
        ) from err
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the ``.<name>.<pid>.tmp`` files a killed save left in ``folder`` (called when a training takes
    the folder's lock: no other save can be writing them)."""
    stale = [p for p in Path(folder).glob(TMP_PATTERN) if p.is_file() and p.name.endswith(".tmp")]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O plugin (``Trainer(plugins=[AtomicCheckpointIO()])``) for local paths;
    loading stays Lightning's."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_torch_save(checkpoint, path)
