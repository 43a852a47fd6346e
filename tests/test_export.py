"""``segloss.export`` writes the net as ONNX or TorchScript with the normalisation and padding inside: uint8
images of any batch and size in, the module's whole-image logits out (parity checked and recorded), for the
seed U-Net, an smp net with a binary sigmoid head, and never over an existing file."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

from segloss.build import build_module
from segloss.errors import ConfigError, ExportParityError
from segloss.export import export
from segloss.models.exported import ExportedNet
from segloss.utils.config import PROJECT_ROOT
from tests.conftest import compose_config, write_cityscapes_tree

UNET = ["model=unet", "model.net.base_channels=4", "model.net.depth=2"]  # 19 classes (synthetic_city), stride 4
SMP_BINARY = ["data=kvasir", "model=smp", "model.net.encoder_name=resnet18", "+model.net.encoder_depth=3",
              "+model.net.decoder_channels=[16,8,4]", "model.net.num_classes=1"]  # fmt: skip
# Deep supervision and a sliding window in the config: neither is exported (eval-mode main logits, whole images).
AUX_AND_SLIDE = ["model.aux={weights:[0.5]}", "inference=slide", "inference.crop_size=[16,16]",
                 "inference.stride=[8,8]"]  # fmt: skip
VAL_SIZE = (23, 37)  # no multiple of the U-Net's stride: the padding is exercised on the validation images too


def checkpoint(overrides: list[str], root, name: str, spread: bool) -> tuple:
    """``(module, ckpt path)``: a freshly built module (weights spread for distinct logits) saved as a checkpoint."""
    torch.manual_seed(0)
    module = build_module(compose_config("export", overrides, root / "run"), with_optimizer=False).eval()
    if spread:
        with torch.no_grad():
            for param in module.net.parameters():
                param.normal_(0, 0.3)
    ckpt = root / f"{name}.ckpt"
    torch.save({"state_dict": module.state_dict()}, ckpt)
    return module, ckpt


@pytest.fixture(scope="module")
def unet(tmp_path_factory):
    """The seed U-Net's checkpoint (with an auxiliary head, a sliding window configured) and a data folder holding
    3 synthetic_city validation images of VAL_SIZE."""
    root = tmp_path_factory.mktemp("unet")
    write_cityscapes_tree(root / "data" / "synthetic_city", {"val": {"frankfurt": 3}}, size=VAL_SIZE)
    overrides = [*UNET, f"paths.data_dir={root / 'data'}", *AUX_AND_SLIDE]
    module, ckpt = checkpoint(overrides, root, "unet", spread=True)

    def cfg(*extra: str):
        return compose_config("export", [*overrides, f"ckpt_path={ckpt}", *extra], root / "run")

    return module, cfg, root


def by_hand(module, images: np.ndarray) -> torch.Tensor:
    """(x/255 − mean)/std with the data config's values, in float64, then the net: what the file must fold in."""
    mean = torch.tensor(module.input_mean, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(module.input_std, dtype=torch.float64).view(1, -1, 1, 1)
    with torch.no_grad():
        return module.net(((torch.from_numpy(images).double() / 255 - mean) / std).float())


def close(got: np.ndarray, expected: torch.Tensor) -> bool:
    """Equal up to float32 rounding: |difference| ≤ 1e-5 of the logits' scale (a wrong normalisation is ~1)."""
    scale = max(1.0, float(expected.abs().max()))
    return got.shape == tuple(expected.shape) and float(np.abs(got - expected.numpy()).max()) <= 1e-5 * scale


def random_images(batch: int, height: int, width: int) -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (batch, 3, height, width), dtype=np.uint8)


def test_onnx_of_the_seed_unet_gives_the_module_logits_at_any_batch_and_size(unet, capsys):
    module, cfg, root = unet
    result = export(cfg(f"output={root / 'out' / 'unet.onnx'}"))
    path, parity = result["path"], result["parity"]
    assert [(c["batch"], c["height"], c["width"]) for c in parity["checks"]] == [(2, *VAL_SIZE), (1, *VAL_SIZE),
                                                                                  (3, 75, 101)]  # fmt: skip
    assert parity["images"].startswith("3 validation image(s)") and parity["passed"]
    assert parity["relative_diff"] < 1e-5 and parity["labels_agree"] == 1.0
    assert min(c["max_abs_logit"] for c in parity["checks"]) > 0.5  # spread logits: agreeing classes say more
    assert "inference.mode=slide" in result["not_exported"][0] and "sliding window" in capsys.readouterr().out

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inputs,), (outputs,) = session.get_inputs(), session.get_outputs()
    assert (inputs.name, inputs.type, inputs.shape) == ("image", "tensor(uint8)", ["batch", 3, "height", "width"])
    assert (outputs.name, outputs.shape) == ("logits", ["batch", 19, "height", "width"])  # main output only
    for batch, height, width in [(4, 17, 29), (1, 1, 1)]:  # neither size nor batch seen so far
        images = random_images(batch, height, width)
        got = session.run(None, {"image": images})[0]
        assert got.dtype == np.float32 and close(got, by_hand(module, images))  # normalisation, padding inside

    meta = json.loads(result["metadata"].read_text())
    assert meta == json.loads((root / "out" / "unet.onnx.json").read_text())
    assert (meta["format"], meta["opset"], meta["padding"]["multiple"], meta["binary"]) == ("onnx", 20, 4, False)
    assert meta["normalisation"]["mean"] == [0.485, 0.456, 0.406] and meta["class_names"][0] == "road"
    assert meta["checkpoint"] == {
        "path": str(root / "unet.ckpt"),
        "sha256": hashlib.sha256((root / "unet.ckpt").read_bytes()).hexdigest(),
    }
    assert meta["versions"]["onnxruntime"] == ort.__version__ and meta["parity"]["relative_diff"] < 1e-5
    assert sorted(p.name for p in path.parent.iterdir()) == ["unet.onnx", "unet.onnx.json"]  # no temporary left


def test_torchscript_next_to_the_checkpoint_and_never_over_an_existing_file(unet):
    module, cfg, root = unet
    result = export(cfg("format=torchscript", "parity_images=1"))
    assert result["path"] == root / "unet.pt" and result["metadata"] == root / "unet.pt.json"
    assert [c["batch"] for c in result["parity"]["checks"]] == [1, 2] and result["parity"]["relative_diff"] < 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice
        loaded = torch.jit.load(str(result["path"]))
    images = random_images(3, 40, 9)
    with torch.no_grad():
        assert close(loaded(torch.from_numpy(images)).numpy(), by_hand(module, images))
    with pytest.raises(ConfigError, match=r"unet\.pt already exists; pass overwrite=true"):
        export(cfg("format=torchscript"))
    with pytest.raises(ConfigError, match=r"cannot write there .* choose output="):  # a file where a folder must be
        export(cfg("format=torchscript", f"output={root / 'unet.pt' / 'net.pt'}"))
    assert sorted(p.name for p in root.glob("unet.pt*")) == ["unet.pt", "unet.pt.json"]  # nothing else left


def test_an_smp_net_with_a_binary_sigmoid_head(tmp_path):
    module, ckpt = checkpoint([*SMP_BINARY, f"paths.data_dir={tmp_path}"], tmp_path, "polyp", spread=False)
    cfg = compose_config("export", [*SMP_BINARY, f"paths.data_dir={tmp_path}", f"ckpt_path={ckpt}",
                                    "parity_images=1"], tmp_path / "run")  # fmt: skip
    result = export(cfg)  # no Kvasir on disk: random images
    assert result["parity"]["images"].startswith("1 random image(s) 3×128×192")
    assert [c["batch"] for c in result["parity"]["checks"]] == [1, 2]  # a second batch size and size
    assert result["parity"]["relative_diff"] < 1e-5 and result["parity"]["labels_agree"] == 1.0
    assert (result["binary"], result["output"]["shape"]) == (True, ["batch", 1, "height", "width"])
    assert "class 1 where logit > 0 " in result["rule"] and result["padding"]["multiple"] == 8
    session = ort.InferenceSession(str(result["path"]), providers=["CPUExecutionProvider"])
    images = random_images(1, 70, 45)
    assert close(session.run(None, {"image": images})[0], by_hand(module, images))


def test_a_file_that_misses_the_normalisation_fails_the_parity_check_and_is_not_written(unet, monkeypatch):
    _, cfg, root = unet

    def unnormalised(cls, module):  # scale 1, shift 0: the net gets 0–255
        return cls(module.net, torch.ones_like(module.input_scale), torch.zeros_like(module.input_shift), 4)

    monkeypatch.setattr(ExportedNet, "of", classmethod(unnormalised))
    with pytest.raises(ExportParityError, match=r"relative to the logits' scale .* nothing was written"):
        export(cfg("format=torchscript", "parity_images=1", f"output={root / 'bad' / 'bad.pt'}"))
    assert list((root / "bad").iterdir()) == []


def test_wrong_options_are_named_before_anything_is_built(unet):
    _, cfg, root = unet
    base = cfg(f"output={root / 'never' / 'net.onnx'}")
    for key, value, message in [("format", "tflite", "format='tflite' must be onnx or torchscript"),
                                ("opset", 12, "opset=12 must be an ONNX opset from 18 to 23"),
                                ("parity_images", 0, "parity_images=0 must be a number of images ≥ 1"),
                                ("tolerance", 0, "tolerance=0 must be a positive")]:  # fmt: skip
        wrong = base.copy()
        wrong[key] = value
        with pytest.raises(ConfigError, match=re.escape(message)):
            export(wrong)
    assert not (root / "never").exists()


def test_a_3d_net_is_refused(tmp_path):
    overrides = ["data=msd3d", "model=unet3d", "inference=gaussian", f"paths.data_dir={tmp_path}"]
    _, ckpt = checkpoint(overrides, tmp_path, "volumes", spread=False)
    with pytest.raises(ConfigError, match=r"3D \(volume\) net: .* label volumes with `make predict`"):
        export(compose_config("export", [*overrides, f"ckpt_path={ckpt}"], tmp_path / "run"))
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["volumes.ckpt"]


def test_cli_wrong_format_is_one_clear_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SEGLOSS_TRACEBACK"}
    proc = subprocess.run(
        [sys.executable, "-m", "segloss.export", f"ckpt_path={tmp_path / 'x.ckpt'}", "format=tensorrt",
         f"paths.log_dir={tmp_path / 'logs'}"],
        capture_output=True, text=True, env=env, cwd=PROJECT_ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["segloss: error: format='tensorrt' must be onnx or torchscript (e.g. format=torchscript)"]
