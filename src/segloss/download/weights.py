"""``make download WEIGHTS=resnet50[,…]``: pretrained encoder weights into ``paths.weights_dir``.

segmentation-models-pytorch 0.6 loads ``encoder_weights="imagenet"`` of its own encoders from the Hugging
Face hub: ``hf_hub_download(repo_id, "model.safetensors", revision)`` with ``repo_id`` and ``revision``
from ``segmentation_models_pytorch.encoders.encoders[name]["pretrained_settings"][weights]`` (e.g.
``smp-hub/resnet50.imagenet``). The same file is fetched here from
``<weights_base_url>/<repo_id>/resolve/<revision>/model.safetensors`` (resumable, like the datasets). smp
publishes no checksum; the pinned revision fixes the content, and the sha256 of the file is recorded in
``manifest.json`` and checked on every later run. ``tu-`` (timm) encoders are not handled here yet.
"""

from __future__ import annotations

import json
from pathlib import Path

from segloss.download.fetch import Remote, console, fetch
from segloss.errors import DownloadError
from segloss.utils.weights_cache import MANIFEST, read_manifest, weights_file


def smp_source(encoder: str, weights: str) -> tuple[str, str]:
    """(repo_id, revision) of smp's pretrained ``weights`` for ``encoder``."""
    from segmentation_models_pytorch.encoders import encoders

    if encoder.startswith("tu-") or encoder.startswith("timm-"):
        raise DownloadError(
            f"encoder {encoder!r}: timm encoders are not fetched by make download yet; on a machine with network "
            "run the training once to fill the Hugging Face cache (HF_HOME) and copy it to the offline node"
        )
    if encoder not in encoders:
        raise DownloadError(f"unknown smp encoder {encoder!r}; known: {', '.join(sorted(encoders)[:12])}, …")
    settings = encoders[encoder]["pretrained_settings"]
    if weights not in settings:
        raise DownloadError(f"encoder {encoder!r} has no {weights!r} weights; it has {sorted(settings)}")
    return settings[weights]["repo_id"], settings[weights]["revision"]


def download_weights(encoder: str, weights: str, weights_dir: Path, base_url: str) -> Path:
    """Fetch (or re-verify) the weights file of ``encoder`` into ``weights_dir``; returns its path."""
    repo_id, revision = smp_source(encoder, weights)
    target = weights_file(weights_dir, encoder, weights)
    url = f"{base_url.rstrip('/')}/{repo_id}/resolve/{revision}/model.safetensors"
    known = read_manifest(weights_dir).get(target.name, {})
    remote = Remote(url, target.name, known.get("size"), None, known.get("sha256"))
    path, sha256 = fetch(remote, target.parent, None, f"weights_base_url=<mirror>, now {base_url}")
    manifest = read_manifest(weights_dir)
    manifest[target.name] = {"url": url, "size": path.stat().st_size, "sha256": sha256}
    (target.parent / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    console.print(f"[green]{encoder}[/green] ({weights}) weights at {path} (sha256 {sha256})")
    return path
