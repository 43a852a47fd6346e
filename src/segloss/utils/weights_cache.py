"""Where pretrained encoder weights are cached for nodes without internet, and how runs read them.

``make download WEIGHTS=<encoder>`` writes ``<paths.weights_dir>/<encoder>.<weights>.safetensors`` (the file
that segmentation-models-pytorch would fetch from the Hugging Face hub) and records its URL, size and
sha256 in ``<paths.weights_dir>/manifest.json``. :func:`load_cached_encoder` puts such a file into a net's
encoder, so an offline node trains with the published ImageNet weights.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from segloss.errors import WeightsUnavailableError

MANIFEST = "manifest.json"


def weights_file(weights_dir: str | Path, encoder: str, weights: str) -> Path:
    return Path(weights_dir).expanduser() / f"{encoder}.{weights}.safetensors"


def read_manifest(weights_dir: str | Path) -> dict:
    path = Path(weights_dir).expanduser() / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


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
