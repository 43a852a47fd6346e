"""make download WEIGHTS=<encoder> through huggingface_hub against a hub emulated on 127.0.0.1 (HF_ENDPOINT): the
file is checked against the sha256 the hub publishes, lands in paths.weights_dir, and a net built offline
(HF_HUB_OFFLINE=1) reads exactly those weights; smp's, timm- and tu- encoders resolve as smp 0.6 and timm do."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
from huggingface_hub import constants as hf_constants
from safetensors.torch import save_file

from segloss.download.cli import run
from segloss.download.weights import resolve_weights
from segloss.errors import ConfigError, DownloadError, WeightsUnavailableError
from segloss.models.nets.smp_factory import build_smp_model
from tests.conftest import compose_config
from tests.http_server import FileServer

TIMM_COMMIT = "c0ffee" * 6 + "c0ff"  # what the emulated hub says timm's main branch points at


def no_network(*args, **kwargs):
    raise OSError("no network on this node")


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An emulated hub, with huggingface_hub's own cache empty. huggingface_hub reads HF_ENDPOINT once, on import:
    the tests in this process name the endpoint with weights_base_url=, a fresh process sees HF_ENDPOINT."""
    srv = FileServer()
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    yield srv
    srv.shutdown()
    srv.server_close()


def go_offline(monkeypatch) -> None:
    """HF_HUB_OFFLINE=1, and any request smp or timm would still make fails."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(smp.encoders, "hf_hub_download", no_network)
    monkeypatch.setattr(timm.models._hub, "hf_hub_download", no_network)


def saved(module: torch.nn.Module, path) -> dict:
    """Save ``module``'s freshly initialised state dict as safetensors at ``path``; returns it."""
    state = {k: v.clone().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path))
    return state


@pytest.fixture
def resnet18(hub, tmp_path):
    """A random resnet18 encoder's weights, served where smp 0.6 looks for resnet18's imagenet weights."""
    torch.manual_seed(7)
    state = saved(smp.encoders.get_encoder("resnet18"), tmp_path / "resnet18.safetensors")
    where = smp.encoders.encoders["resnet18"]["pretrained_settings"]["imagenet"]
    hub.add_hub_file(where["repo_id"], where["revision"], "model.safetensors", tmp_path / "resnet18.safetensors")
    return state, where


def download(hub, tmp_path, encoder: str, run_dir: str = "run") -> None:
    overrides = [f"weights={encoder}", f"paths.weights_dir={tmp_path / 'weights'}", f"weights_base_url={hub.url}"]
    run(compose_config("download", overrides, tmp_path / run_dir))


def test_weights_verified_against_the_hub_then_built_offline(hub, resnet18, tmp_path, monkeypatch):
    state, where = resnet18
    download(hub, tmp_path, "resnet18")
    cached = tmp_path / "weights" / "resnet18.imagenet.safetensors"
    published = hashlib.sha256((tmp_path / "resnet18.safetensors").read_bytes()).hexdigest()
    assert json.loads((tmp_path / "weights" / "manifest.json").read_text())[cached.name] == {
        "repo_id": where["repo_id"],
        "revision": where["revision"],
        "commit": where["revision"],
        "filename": "model.safetensors",
        "size": cached.stat().st_size,
        "sha256": published,
    }
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == published
    assert sorted(p.name for p in cached.parent.iterdir()) == ["manifest.json", cached.name]  # no staging left
    requests = len(hub.log)
    go_offline(monkeypatch)
    net = build_smp_model("Unet", 3, "resnet18", "imagenet", weights_dir=str(tmp_path / "weights"))
    loaded = net.net.encoder.state_dict()
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    two_channels = build_smp_model("Unet", 3, "resnet18", "imagenet", in_channels=2, weights_dir=str(cached.parent))
    assert two_channels.net.encoder.conv1.weight.shape[1] == 2
    download(hub, tmp_path, "resnet18", "run2")  # offline: re-checked against the recorded sha256, no request
    assert len(hub.log) == requests


def test_bytes_that_differ_from_the_hub_sha256_are_deleted(hub, resnet18, tmp_path):
    """The hub publishes the sha256 of the real file; the bytes that arrive (same size) are another file's."""
    _, where = resnet18
    tampered = tmp_path / "tampered.safetensors"
    data = bytearray((tmp_path / "resnet18.safetensors").read_bytes())
    data[-1] ^= 0xFF
    tampered.write_bytes(bytes(data))
    published = hashlib.sha256((tmp_path / "resnet18.safetensors").read_bytes()).hexdigest()
    hub.add_hub_file(where["repo_id"], where["revision"], "model.safetensors", tampered, sha256=published)
    with pytest.raises(DownloadError, match=rf"has sha256 [0-9a-f]{{64}}, the hub publishes {published}: deleted"):
        download(hub, tmp_path, "resnet18")
    assert list((tmp_path / "weights").iterdir()) == []


def test_a_mirror_without_the_hub_sha256_is_not_trusted(hub, resnet18, tmp_path):
    route = next(iter(hub.routes))
    hub.head_headers[route] = {"X-Repo-Commit": resnet18[1]["revision"], "ETag": '"not-a-sha256"'}
    with pytest.raises(DownloadError, match=r"publishes no sha256 .* so the file cannot be checked and is not fetched"):
        download(hub, tmp_path, "resnet18")
    assert hub.gets(route) == [] and not (tmp_path / "weights" / "resnet18.imagenet.safetensors").exists()


def test_offline_without_the_file_names_the_download_command(hub, tmp_path, monkeypatch):
    go_offline(monkeypatch)
    with pytest.raises(WeightsUnavailableError, match=r"HF_HUB_OFFLINE=1.*`make download WEIGHTS=resnet18`"):
        build_smp_model("Unet", 3, "resnet18", "imagenet", weights_dir=str(tmp_path / "weights"))
    with pytest.raises(DownloadError, match=r"HF_HUB_OFFLINE=1 and .*resnet18.imagenet.safetensors is not there: run "
                                            r"`make download WEIGHTS=resnet18`"):  # fmt: skip
        download(hub, tmp_path, "resnet18")
    assert hub.log == []


def test_timm_encoders_resolve_where_smp_and_timm_host_them():
    effnet = resolve_weights("timm-efficientnet-b0", "advprop")  # smp hosts this timm- encoder itself
    where = smp.encoders.encoders["timm-efficientnet-b0"]["pretrained_settings"]["advprop"]
    assert (effnet.repo_id, effnet.revision, effnet.filename, effnet.timm) == (
        where["repo_id"], where["revision"], "model.safetensors", False)  # fmt: skip
    assert effnet.local_name == "timm-efficientnet-b0.advprop.safetensors"
    regnet = resolve_weights("timm-regnetx_002", "imagenet")  # smp 0.6 builds it as tu-regnetx_002
    assert (regnet.repo_id, regnet.timm) == (timm.models.get_pretrained_cfg("regnetx_002").hf_hub_id, True)
    tagged = resolve_weights("tu-resnet18.a1_in1k", "imagenet")
    assert (tagged.repo_id, tagged.revision, tagged.filename, tagged.local_name) == (
        timm.models.get_pretrained_cfg("resnet18.a1_in1k").hf_hub_id, None, "model.safetensors",
        "tu-resnet18.a1_in1k.safetensors")  # fmt: skip
    assert resolve_weights("tu-resnet18", "imagenet") == replace(tagged, encoder="tu-resnet18")  # timm's default tag


@pytest.fixture
def tiny_timm(hub, tmp_path):
    """timm's tiny ``test_resnet`` (random weights), served on its main branch where its hf_hub_id points."""
    torch.manual_seed(3)
    state = saved(timm.create_model("test_resnet"), tmp_path / "test_resnet.safetensors")
    repo = timm.models.get_pretrained_cfg("test_resnet").hf_hub_id
    hub.add_hub_file(repo, "main", "model.safetensors", tmp_path / "test_resnet.safetensors", commit=TIMM_COMMIT)
    return state, repo


def test_a_tu_encoder_downloads_through_the_hub_and_loads_through_timm(hub, tiny_timm, tmp_path, monkeypatch):
    state, repo = tiny_timm
    download(hub, tmp_path, "tu-test_resnet")
    cfg = timm.models.get_pretrained_cfg("test_resnet")
    cached = tmp_path / "weights" / f"tu-test_resnet.{cfg.tag}.safetensors"
    entry = json.loads((tmp_path / "weights" / "manifest.json").read_text())[cached.name]
    assert (entry["repo_id"], entry["revision"], entry["commit"]) == (repo, "main", TIMM_COMMIT)
    assert entry["sha256"] == hashlib.sha256(cached.read_bytes()).hexdigest()
    go_offline(monkeypatch)
    for encoder in ("tu-test_resnet", f"tu-test_resnet.{cfg.tag}"):  # both names read the same file
        net = build_smp_model("Unet", 2, encoder, "imagenet", weights_dir=str(cached.parent))
        loaded = net.net.encoder.model.state_dict()  # all but the classifier, which a features-only net drops
        assert set(state) - set(loaded) == {f"{cfg.classifier}.weight", f"{cfg.classifier}.bias"}
        assert all(torch.equal(loaded[k], state[k]) for k in loaded)
    one_channel = build_smp_model(
        "Unet", 2, "tu-test_resnet", "imagenet", in_channels=1, weights_dir=str(cached.parent)
    )
    stem = one_channel.net.encoder.model.state_dict()[f"{cfg.first_conv}.weight"]
    assert torch.allclose(stem, state[f"{cfg.first_conv}.weight"].sum(1, keepdim=True))  # timm's adaptation


def test_encoders_without_hosted_weights_say_what_to_do(tmp_path):
    untrained = next(n for n in timm.list_models("darknet*") if not timm.models.get_pretrained_cfg(n).hf_hub_id)
    with pytest.raises(ConfigError, match=rf"'tu-{untrained}': timm hosts no pretrained weights .*weights=null"):
        resolve_weights(f"tu-{untrained}", "imagenet")
    with pytest.raises(ConfigError, match=r"'resnet18' has no 'instagram' weights .*\['imagenet', 'ssl', 'swsl'\]"):
        build_smp_model("Unet", 2, "resnet18", "instagram", weights_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"unknown encoder 'tu-no_such_net': timm has no model"):
        resolve_weights("tu-no_such_net", "imagenet")
    with pytest.raises(ConfigError, match=r"Invalid pretrained tag \(nope\) for resnet18"):
        resolve_weights("tu-resnet18.nope", "imagenet")


def test_hf_endpoint_set_before_the_process_starts_is_used(hub, tiny_timm, tmp_path):
    """As on a node: HF_ENDPOINT in the environment of a fresh process, which huggingface_hub reads on import."""
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(tmp_path / "hf_cache")}
    code = "import sys; from segloss.download.weights import download_weights; download_weights(*sys.argv[1:])"
    args = ["tu-test_resnet", "imagenet", str(tmp_path / "w")]
    subprocess.run([sys.executable, "-c", code, *args], env=env, check=True, timeout=120)
    cfg = timm.models.get_pretrained_cfg("test_resnet")
    got = (tmp_path / "w" / f"tu-test_resnet.{cfg.tag}.safetensors").read_bytes()
    assert got == (tmp_path / "test_resnet.safetensors").read_bytes()


def test_train_config_passes_the_weights_dir(tmp_path):
    cfg = compose_config("train", ["model=deeplabv3plus", f"paths.weights_dir={tmp_path}"], tmp_path / "run")
    assert cfg.model.net.weights_dir == str(tmp_path) and cfg.model.net.encoder_weights is None


def test_an_experiment_names_the_encoder_to_fetch():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from segloss.download.cli import encoders_to_fetch
    from segloss.utils.config import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("download", ["weights=resnet18", "weights_from=ce_voc"])
        assert encoders_to_fetch(cfg) == ["resnet18", "resnet50"]  # ce_voc: DeepLabV3+ R-50


def test_the_manifest_keeps_every_entry_and_a_corrupt_one_is_named(tmp_path):
    """Two downloads into one folder each add their entry (locked read-modify-write, atomic replace); a manifest
    that is not ours stops with the file and the fix instead of a JSON traceback."""
    from segloss.errors import WeightsUnavailableError
    from segloss.utils.weights_cache import read_manifest, record_in_manifest

    record_in_manifest(tmp_path, "a.safetensors", {"sha256": "1" * 64})
    record_in_manifest(tmp_path, "b.safetensors", {"sha256": "2" * 64})
    assert read_manifest(tmp_path) == {"a.safetensors": {"sha256": "1" * 64}, "b.safetensors": {"sha256": "2" * 64}}
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / "manifest.json").write_text('{"a.safetensors": {"sha')  # cut short by a stranger's tool
    with pytest.raises(WeightsUnavailableError, match=r"manifest.json is not the JSON .* delete it and run"):
        read_manifest(tmp_path)
