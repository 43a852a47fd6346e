"""``make download WEIGHTS=resnet50[,…]``: pretrained encoder weights into ``paths.weights_dir``.

segmentation-models-pytorch 0.6 loads ``encoder_weights="imagenet"`` of its own encoders from the Hugging
Face hub: ``hf_hub_download(repo_id, "model.safetensors", revision)`` with ``repo_id`` and ``revision``
from ``segmentation_models_pytorch.encoders.encoders[name]["pretrained_settings"][weights]`` (e.g.
``smp-hub/resnet50.imagenet``). The same file is fetched here from
``<weights_base_url>/<repo_id>/resolve/<revision>/model.safetensors`` (resumable, like the datasets). The
expected sha256 is the hub's own: a ``HEAD`` of that URL (not following its redirect to the CDN) answers the
LFS object's sha256 in ``X-Linked-Etag`` — what ``huggingface_hub`` checks too — so a corrupt or altered
file is refused instead of becoming the trusted value. A mirror that does not send it gets the file
recorded as ``"verified": false`` in ``manifest.json``, with a warning; every later run checks the recorded
sha256. ``tu-`` (timm) encoders are not handled here yet.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path

from segloss.download.fetch import USER_AGENT, Remote, console, fetch
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


class _Stay(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # the hub's own answer (with X-Linked-Etag) is the redirect itself


def published_sha256(url: str) -> str | None:
    """The sha256 the hub publishes for ``url`` (``X-Linked-Etag``, or an ``ETag`` that is one), or None."""
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.build_opener(_Stay()).open(request, timeout=30) as response:
            headers = response.headers
    except urllib.error.HTTPError as err:
        headers = err.headers
        err.close()
    except (urllib.error.URLError, OSError):
        return None
    for name in ("X-Linked-Etag", "ETag"):
        value = (headers.get(name) or "").strip().removeprefix("W/").strip('"').lower()
        if re.fullmatch(r"[0-9a-f]{64}", value):
            return value
    return None


def download_weights(encoder: str, weights: str, weights_dir: Path, base_url: str) -> Path:
    """Fetch (or re-verify) the weights file of ``encoder`` into ``weights_dir``; returns its path."""
    repo_id, revision = smp_source(encoder, weights)
    target = weights_file(weights_dir, encoder, weights)
    url = f"{base_url.rstrip('/')}/{repo_id}/resolve/{revision}/model.safetensors"
    known = read_manifest(weights_dir).get(target.name, {})
    published = None if known.get("sha256") and target.is_file() else published_sha256(url)
    expected = published or known.get("sha256")
    remote = Remote(url, target.name, known.get("size"), None, expected)
    path, sha256 = fetch(remote, target.parent, None, f"weights_base_url=<mirror>, now {base_url}")
    verified = bool(published) or bool(known.get("verified"))
    if not verified:
        console.print(f"[yellow]{url} publishes no sha256 (X-Linked-Etag): {path.name} is recorded unverified, "
                      f"sha256 {sha256}[/yellow]")  # fmt: skip
    manifest = read_manifest(weights_dir)
    manifest[target.name] = {"url": url, "size": path.stat().st_size, "sha256": sha256, "verified": verified}
    (target.parent / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    console.print(f"[green]{encoder}[/green] ({weights}) weights at {path} (sha256 {sha256})")
    return path
