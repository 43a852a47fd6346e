"""``make download WEIGHTS=resnet50[,…]``: pretrained encoder weights into ``paths.weights_dir``, through
``huggingface_hub`` and checked against the hub's own sha256.

:func:`resolve_weights` finds the file where segmentation-models-pytorch 0.6 and timm load it from:

- smp's encoders (``resnet50``, ``timm-efficientnet-b0``, …): ``model.safetensors`` of the repo id and pinned
  revision in ``segmentation_models_pytorch.encoders.encoders[name]["pretrained_settings"][weights]``;
- ``tu-<timm model>``, and the ``timm-`` names that smp builds as ``tu-`` encoders (``timm-regnetx_002``): the
  ``hf_hub_id`` (``repo@revision`` or the main branch) and ``hf_hub_filename`` (default ``model.safetensors``)
  of timm's pretrained config; the weights tag is part of the name (``tu-resnet18.a1_in1k``).

Where neither library hosts the weights on the hub, a :class:`ConfigError` names the encoder and the way out.

:func:`download_weights` asks the hub for the file's metadata first (``get_hf_file_metadata``: the commit and,
for an LFS file, its sha256), fetches that commit's file with ``hf_hub_download`` (which resumes a cut
connection within the run) into a staging folder in ``paths.weights_dir`` and moves it in only when its sha256
is the one the hub published; otherwise the file is deleted. ``manifest.json`` records repo, revision, commit,
size and that sha256, so a later run re-checks the file without network. ``HF_ENDPOINT`` (or
``weights_base_url=``) points at a mirror; under ``HF_HUB_OFFLINE=1`` nothing is requested.
"""

from __future__ import annotations

import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from segloss.download.fetch import console, file_digest
from segloss.errors import ConfigError, DownloadError, SeglossError
from segloss.utils.weights_cache import read_manifest, record_in_manifest

SMP_FILE = "model.safetensors"  # what smp 0.6 loads from its repos, and timm's default
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class WeightsSource:
    """Where one encoder's pretrained weights are on the hub, and their file name in ``paths.weights_dir``."""

    encoder: str  # as configured (model.net.encoder_name)
    repo_id: str
    revision: str | None  # smp pins a commit; None: the repo's main branch (timm)
    filename: str
    local_name: str
    timm: bool  # loaded by timm (tu- encoders), not into an smp encoder


def resolve_weights(encoder: str, weights) -> WeightsSource:
    """The hub file of ``weights`` (smp's tag: ``imagenet``, ``ssl``, …) for ``encoder``, as smp 0.6 finds it."""
    from segmentation_models_pytorch.encoders import encoders, is_equivalent_to_timm_universal

    name = encoder
    if is_equivalent_to_timm_universal(name):  # smp builds these timm- encoders as tu- ones (mobilenetv3: tf_)
        name = name.replace("timm-", "tu-tf_" if "mobilenetv3" in name else "tu-", 1)
    if name.startswith("tu-"):
        return _timm_source(encoder, name.removeprefix("tu-"))
    if name not in encoders:
        raise ConfigError(
            f"unknown encoder {encoder!r}: smp has no such encoder (e.g. {', '.join(sorted(encoders)[:6])}, …) and "
            "timm models are named tu-<model>; fix model.net.encoder_name"
        )
    settings = encoders[name]["pretrained_settings"]
    if weights not in settings or not settings[weights].get("repo_id"):
        raise ConfigError(
            f"encoder {encoder!r} has no {weights!r} weights on the hub (smp hosts {sorted(settings) or 'none'}): "
            "set model.net.encoder_weights (make download weights_variant=) to one of those, or to null to train "
            "it from scratch"
        )
    where = settings[weights]
    return WeightsSource(encoder, where["repo_id"], where.get("revision"), SMP_FILE, f"{encoder}.{weights}.safetensors",
                         timm=False)  # fmt: skip


def _timm_source(encoder: str, model: str) -> WeightsSource:
    """The hub file timm loads for ``model`` (``resnet18`` or ``resnet18.a1_in1k``)."""
    import timm

    if not timm.models.is_model(model):
        raise ConfigError(f"unknown encoder {encoder!r}: timm has no model {model!r}; fix model.net.encoder_name")
    try:
        cfg = timm.models.get_pretrained_cfg(model)
    except RuntimeError as err:  # an unknown tag ("Invalid pretrained tag (x) for resnet18.")
        raise ConfigError(
            f"encoder {encoder!r}: {err} timm.list_pretrained('{model.split('.')[0]}*') lists the tags; fix "
            "model.net.encoder_name"
        ) from err
    if cfg is None or not cfg.hf_hub_id:
        elsewhere = f" (timm has them at {cfg.url}, which make download does not fetch)" if cfg and cfg.url else ""
        raise ConfigError(
            f"encoder {encoder!r}: timm hosts no pretrained weights for {model} on the Hugging Face hub{elsewhere}; "
            "choose an encoder that has them (timm.list_pretrained() for tu-, smp's table for the others) or set "
            "model.net.encoder_weights=null to train it from scratch"
        )
    repo_id, _, revision = cfg.hf_hub_id.partition("@")
    filename = cfg.hf_hub_filename or SMP_FILE
    tagged = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    return WeightsSource(encoder, repo_id, revision or None, filename, f"tu-{tagged}{Path(filename).suffix}", True)


def download_weights(encoder: str, weights, weights_dir: Path, base_url: str | None = None) -> Path:
    """Fetch (or re-check) ``encoder``'s ``weights`` into ``weights_dir``; returns the file. ``base_url``: a hub
    mirror (None: huggingface_hub's endpoint, ``HF_ENDPOINT`` or https://huggingface.co)."""
    from huggingface_hub import constants

    source = resolve_weights(encoder, weights)
    target = Path(weights_dir).expanduser() / source.local_name
    recorded = read_manifest(target.parent).get(target.name, {})
    if target.is_file() and recorded.get("sha256") and (recorded.get("commit") or recorded.get("verified")):
        if file_digest(target, "sha256") == recorded["sha256"]:
            console.print(f"[green]{encoder}[/green] weights at {target} (sha256 {recorded['sha256']}, the hub's)")
            return target
        console.print(f"[yellow]{target} no longer has the sha256 the hub published; fetching it again[/yellow]")
        target.unlink()
    if constants.HF_HUB_OFFLINE:
        raise DownloadError(
            f"HF_HUB_OFFLINE=1 and {target} is not there: run `make download WEIGHTS={encoder}` where the Hugging "
            f"Face hub (or a mirror, HF_ENDPOINT) is reachable, without HF_HUB_OFFLINE, and copy {target.parent} here"
        )
    endpoint = (base_url or constants.ENDPOINT).rstrip("/")
    sha256, commit = _published(source, endpoint)
    if not (target.is_file() and file_digest(target, "sha256") == sha256):  # else: copied in by hand, and right
        _fetch(source, commit, sha256, target, endpoint)
    record_in_manifest(target.parent, target.name, {
        "repo_id": source.repo_id, "revision": source.revision or "main", "commit": commit,
        "filename": source.filename, "size": target.stat().st_size, "sha256": sha256})  # fmt: skip
    console.print(f"[green]{encoder}[/green] weights at {target} ({source.repo_id}@{commit[:12]}, sha256 {sha256})")
    return target


def _fetch(source: WeightsSource, commit: str, sha256: str, target: Path, endpoint: str) -> None:
    """``hf_hub_download`` of ``source`` at ``commit`` into a staging folder beside ``target`` (same disk), moved
    to ``target`` only when its sha256 is the hub's. The staging folder is removed whatever happens (and a killed
    download's, left behind, by the next one)."""
    from huggingface_hub import hf_hub_download

    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}."
    for stale in target.parent.glob(f"{prefix}*.download"):  # left by a download that was killed
        pid = stale.name[len(prefix) : -len(".download")]
        if not (pid.isdigit() and _alive(int(pid))):
            shutil.rmtree(stale, ignore_errors=True)
    staging = target.parent / f".{target.name}.{os.getpid()}.download"  # one per process: two may run at once
    try:
        with _hub_errors(source, endpoint):
            path = hf_hub_download(source.repo_id, source.filename, revision=commit, local_dir=staging,
                                   endpoint=endpoint)  # fmt: skip
        if (actual := file_digest(Path(path), "sha256")) != sha256:
            raise DownloadError(
                f"{source.filename} of {source.repo_id} (commit {commit}) from {endpoint} has sha256 {actual}, the "
                f"hub publishes {sha256}: deleted, nothing was stored. Re-run the same command; if it happens again "
                "the mirror (HF_ENDPOINT, weights_base_url) or a proxy alters the file: fetch from the hub itself"
            )
        os.replace(path, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` (> 0) still runs (another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _published(source: WeightsSource, endpoint: str) -> tuple[str, str]:
    """(sha256, commit) the hub publishes for ``source``: the LFS file's sha256 (``X-Linked-Etag``) and the commit
    its revision points at (``X-Repo-Commit``). A file without a published sha256 is refused."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(source.repo_id, source.filename, revision=source.revision, endpoint=endpoint)
    with _hub_errors(source, endpoint):
        meta = get_hf_file_metadata(url)
    sha256 = (meta.etag or "").lower()
    if not _SHA256.fullmatch(sha256) or not meta.commit_hash:
        raise DownloadError(
            f"{url} publishes no sha256 (X-Linked-Etag: {meta.etag!r}) or commit (X-Repo-Commit: "
            f"{meta.commit_hash!r}), so the file cannot be checked and is not fetched: point HF_ENDPOINT (or "
            "weights_base_url=) at the hub or at a mirror that passes on its headers"
        )
    return sha256, meta.commit_hash


@contextmanager
def _hub_errors(source: WeightsSource, endpoint: str):
    """Turn a failed hub request into a one-line :class:`DownloadError` naming the file, the endpoint and the fix."""
    try:
        yield
    except SeglossError:
        raise
    except Exception as err:  # huggingface_hub's, its HTTP client's and OS errors alike: the file was not fetched
        reason = (str(err).strip().splitlines() or [""])[0]
        raise DownloadError(
            f"could not fetch {source.filename} of {source.repo_id} from {endpoint} ({type(err).__name__}: "
            f"{reason}). Check the network and the name, and re-run, or point HF_ENDPOINT (or weights_base_url=) at a "
            "reachable mirror"
        ) from err
