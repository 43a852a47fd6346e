"""Where pretrained encoder weights are cached for nodes without internet, and how runs read them.

``make download WEIGHTS=<encoder>`` (:mod:`segloss.download.weights`) writes the file that smp or timm would
fetch from the Hugging Face hub to ``<paths.weights_dir>/<name>`` (``<encoder>.<weights>.safetensors`` for smp's
encoders, ``tu-<timm model>.<tag>.safetensors`` for timm's) and records its repo, commit, size and the hub's
sha256 in ``<paths.weights_dir>/manifest.json``. :func:`load_cached_encoder` puts an smp encoder's file into a
net's encoder (timm's files are loaded by timm itself), so an offline node trains with the published weights.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from segloss.errors import WeightsUnavailableError

MANIFEST = "manifest.json"


def read_manifest(weights_dir: str | Path) -> dict:
    """The entries of ``manifest.json`` in ``weights_dir`` by file name (empty when there is none)."""
    path = Path(weights_dir).expanduser() / MANIFEST
    if not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsUnavailableError(
            f"{path} is not the JSON `make download WEIGHTS=` writes ({err}); delete it and run the download again"
        ) from None
    if not isinstance(entries, dict):
        raise WeightsUnavailableError(f"{path} holds no entries by file name; delete it and run the download again")
    return entries


def record_in_manifest(weights_dir: Path, name: str, entry: dict) -> None:
    """Add ``entry`` for file ``name`` to the manifest: under a lock (two downloads into one folder keep both
    entries) and by atomic replace (a download killed while writing leaves the previous manifest whole)."""
    import fcntl
    import os

    weights_dir = Path(weights_dir).expanduser()
    folder = os.open(weights_dir, os.O_RDONLY)  # the lock is on the folder itself: no lock file is left in it
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        entries = read_manifest(weights_dir)
        entries[name] = entry
        tmp = weights_dir / f".{MANIFEST}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
        os.replace(tmp, weights_dir / MANIFEST)
    finally:
        os.close(folder)  # releases the lock


def load_cached_encoder(encoder: nn.Module, path: Path) -> None:
    """Load the state dict in ``path`` into ``encoder`` (strict: every key and shape must match)."""
    from safetensors.torch import load_file

    state = load_file(str(path), device="cpu")
    try:
        encoder.load_state_dict(state)
    except RuntimeError as err:
        raise WeightsUnavailableError(
            f"the cached weights {path} do not fit the encoder ({str(err).splitlines()[0]} …). Delete the file and "
            f"fetch it again with `make download WEIGHTS={path.name.split('.')[0]}`, or set "
            "model.net.encoder_weights=null"
        ) from err
