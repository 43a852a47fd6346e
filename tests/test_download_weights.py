"""make download WEIGHTS=<encoder>: smp encoder weights served on 127.0.0.1 land in paths.weights_dir, and a
net built offline with encoder_weights=imagenet reads exactly those weights."""

from __future__ import annotations

import hashlib
import json

import pytest
import segmentation_models_pytorch as smp
import torch
from safetensors.torch import save_file

from segloss.download.cli import run
from segloss.errors import DownloadError, WeightsUnavailableError
from segloss.models.nets.smp_factory import build_smp_model
from tests.conftest import compose_config
from tests.http_server import FileServer


def no_network(*args, **kwargs):
    raise OSError("no network on this node")


@pytest.fixture
def served_resnet18(tmp_path):
    """A randomly initialised resnet18 encoder's state dict, served where smp's repo/revision points."""
    srv = FileServer()
    torch.manual_seed(7)
    state = {k: v.clone().contiguous() for k, v in smp.encoders.get_encoder("resnet18").state_dict().items()}
    settings = smp.encoders.encoders["resnet18"]["pretrained_settings"]["imagenet"]
    path = tmp_path / "served.safetensors"
    save_file(state, str(path))
    route = f"/{settings['repo_id']}/resolve/{settings['revision']}/model.safetensors"
    srv.add(route, path)
    srv.head_headers[route] = {"X-Linked-Etag": f'"{hashlib.sha256(path.read_bytes()).hexdigest()}"'}  # as the hub
    yield srv, state
    srv.shutdown()
    srv.server_close()


def test_weights_download_then_offline_build(served_resnet18, tmp_path, monkeypatch):
    server, state = served_resnet18
    weights_dir = tmp_path / "weights"
    overrides = ["weights=resnet18", f"weights_base_url={server.url}", f"paths.weights_dir={weights_dir}"]
    run(compose_config("download", overrides, tmp_path / "run"))
    cached = weights_dir / "resnet18.imagenet.safetensors"
    manifest = json.loads((weights_dir / "manifest.json").read_text())
    assert manifest[cached.name]["size"] == cached.stat().st_size and manifest[cached.name]["verified"]
    assert manifest[cached.name]["sha256"] == hashlib.sha256(cached.read_bytes()).hexdigest()
    monkeypatch.setattr(smp.encoders, "hf_hub_download", no_network)  # the node is offline
    net = build_smp_model("Unet", 3, encoder_name="resnet18", encoder_weights="imagenet", weights_dir=str(weights_dir))
    loaded = net.net.encoder.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    two_channels = build_smp_model("Unet", 3, "resnet18", "imagenet", in_channels=2, weights_dir=str(weights_dir))
    assert two_channels.net.encoder.conv1.weight.shape[1] == 2
    run(compose_config("download", overrides, tmp_path / "run2"))  # cached and verified: no second request
    assert len(server.gets(next(iter(server.routes)))) == 1


def test_weights_that_differ_from_the_hub_s_sha256_are_refused(served_resnet18, tmp_path):
    """Without a published checksum, the first download's sha256 used to become the trusted manifest value."""
    server, _ = served_resnet18
    route = next(iter(server.routes))
    server.head_headers[route] = {"X-Linked-Etag": '"' + "0" * 64 + '"'}
    weights_dir = tmp_path / "weights"
    overrides = ["weights=resnet18", f"weights_base_url={server.url}", f"paths.weights_dir={weights_dir}"]
    with pytest.raises(DownloadError, match=r"failed verification: its sha256 is [0-9a-f]{64}, the config says 0{64}"):
        run(compose_config("download", overrides, tmp_path / "run"))
    assert not (weights_dir / "resnet18.imagenet.safetensors").exists() and not (weights_dir / "manifest.json").exists()


def test_offline_without_cache_names_the_download_command(tmp_path, monkeypatch):
    monkeypatch.setattr(smp.encoders, "hf_hub_download", no_network)
    with pytest.raises(WeightsUnavailableError, match=r"make download WEIGHTS=resnet18") as err:
        build_smp_model("Unet", 3, "resnet18", "imagenet", weights_dir=str(tmp_path / "empty"))
    assert "paths.weights_dir" in str(err.value)


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
