"""``segloss.predict`` labels a folder of images with a checkpoint: palette PNGs whose pixel values are
the net's argmax, the folder structure kept, no dataset needed, unreadable files reported together,
nothing overwritten, whole or sliding-window inference, and a one-line error from the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segloss.build import build_module
from segloss.data.cityscapes_labels import PALETTE
from segloss.data.image_io import read_image
from segloss.data.transforms import Normalise
from segloss.errors import ConfigError, DatasetFormatError
from segloss.models.inference import slide_inference
from segloss.predict import predict
from segloss.utils.config import PROJECT_ROOT

TINY = ["model=unet", "model.net.base_channels=4", "model.net.depth=2"]
GOOD = {"a.png": (20, 28), "sub/b.BMP": (17, 33), "sub/deeper/c.tif": (32, 24), "sub/d.JPG": (12, 40)}
BROKEN = ["broken.png", "sub/deeper/broken.jpeg"]


@pytest.fixture
def setup(make_cfg, tmp_path):
    """A tiny checkpoint, an empty data folder, and ``cfg(input, output, *extra)`` composing a predict config."""
    data_dir = tmp_path / "empty_data"
    data_dir.mkdir()
    torch.manual_seed(0)
    module = build_module(make_cfg([*TINY, f"paths.data_dir={data_dir}"], name="predict"), with_optimizer=False)
    module.eval()
    with torch.no_grad():  # default init predicts class 0 everywhere on noise; spread the logits
        for param in module.net.parameters():
            param.normal_(0, 0.5)
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": module.state_dict()}, ckpt)

    def cfg(input_dir: Path, output_dir: Path, *extra: str):
        overrides = [*TINY, f"paths.data_dir={data_dir}", f"ckpt_path={ckpt}", f"input_dir={input_dir}"]
        exact = ["trainer.precision=32-true"]  # predictions compared exactly with a float32 forward
        return make_cfg([*overrides, f"output_dir={output_dir}", "device=cpu", *exact, *extra], name="predict")

    return module, cfg, data_dir


def write_inputs(root: Path, broken: bool = True) -> dict[str, np.ndarray]:
    """The GOOD images (random RGB) in nested folders, a text file that is not an image, and corrupt files."""
    rng = np.random.default_rng(0)
    arrays = {}
    for name, size in GOOD.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        arrays[name] = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(arrays[name]).save(root / name)
    (root / "sub" / "notes.txt").write_text("not an image")
    if broken:
        for name in BROKEN:
            (root / name).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return arrays


def expected(module, path: Path, slide: bool = False) -> np.ndarray:
    image = Normalise()(read_image(path)).unsqueeze(0)
    with torch.no_grad():
        logits = slide_inference(module, image, (16, 16), (8, 8)) if slide else module(image)
    return logits.argmax(1)[0].numpy()


def mask_of(path: Path) -> tuple[str, np.ndarray, list[int]]:
    with Image.open(path) as img:
        return img.mode, np.asarray(img), img.getpalette()


def test_writes_argmax_palette_pngs_and_reports_every_unreadable_file(setup, tmp_path):
    module, cfg, data_dir = setup
    inputs, out = tmp_path / "in", tmp_path / "out"
    arrays = write_inputs(inputs)
    with pytest.raises(DatasetFormatError) as err:
        predict(cfg(inputs, out, "overlay=true"))
    message = str(err.value)
    assert "2 image(s) could not be read" in message and "4 prediction(s) written" in message
    for name in BROKEN:
        assert str(inputs / name) in message
    assert err.value.failed == [inputs / name for name in BROKEN]
    assert err.value.written == [out / Path(name).with_suffix(".png") for name in sorted(GOOD)]

    flat_palette = [v for colour in PALETTE for v in colour]  # synthetic_city uses the Cityscapes colours
    for name, (height, width) in GOOD.items():
        mode, values, palette = mask_of((out / name).with_suffix(".png"))
        assert mode == "P" and values.shape == (height, width)
        np.testing.assert_array_equal(values, expected(module, inputs / name))
        assert palette[: len(flat_palette)] == flat_palette
        assert (out / name).with_name(f"{Path(name).stem}_overlay.png").is_file()
    assert len(np.unique(mask_of(out / "a.png")[1])) > 1  # an untrained net still predicts several classes

    with Image.open(out / "a_overlay.png") as img:
        overlay = np.asarray(img)
    colours = np.asarray(PALETTE, dtype=np.uint16)[mask_of(out / "a.png")[1]]
    np.testing.assert_array_equal(overlay, (arrays["a.png"].astype(np.uint16) + colours + 1) // 2)
    assert sorted(p.name for p in out.rglob("*")) == sorted(
        ["sub", "deeper"] + [n for g in GOOD for n in (f"{Path(g).stem}.png", f"{Path(g).stem}_overlay.png")]
    )
    assert list(data_dir.iterdir()) == []  # the dataset was never needed nor generated


def test_a_dangling_link_is_named_not_dropped(setup, tmp_path, capsys):
    """A symbolic link to a deleted image used to vanish from the count ("4 of 4 images labelled", exit 0)."""
    _, cfg, _ = setup
    inputs, out = tmp_path / "in", tmp_path / "out"
    write_inputs(inputs, broken=False)
    (inputs / "sub" / "gone.png").symlink_to(tmp_path / "deleted.png")
    with pytest.raises(DatasetFormatError) as err:
        predict(cfg(inputs, out))
    assert "1 image(s) could not be read" in str(
        err.value
    ) and f"{inputs / 'sub' / 'gone.png'}: a symbolic link" in str(err.value)
    assert err.value.failed == [inputs / "sub" / "gone.png"] and len(err.value.written) == len(GOOD)
    assert f"{len(GOOD)} of {len(GOOD) + 1} images labelled" in capsys.readouterr().out


def test_sliding_window_writes_the_slide_inference(setup, tmp_path):
    module, cfg, _ = setup
    inputs, out = tmp_path / "in", tmp_path / "out"
    write_inputs(inputs, broken=False)
    slide = ["inference=slide", "inference.crop_size=[16,16]", "inference.stride=[8,8]"]
    result = predict(cfg(inputs, out, *slide))
    assert result.pop("frames_per_s") > 0
    assert result == {
        "written": [out / Path(n).with_suffix(".png") for n in sorted(GOOD)],
        "overlays": [],
        "failed": [],
    }
    for name in GOOD:
        np.testing.assert_array_equal(
            mask_of((out / name).with_suffix(".png"))[1], expected(module, inputs / name, True)
        )


def test_never_overwrites_and_checks_the_folders(setup, tmp_path):
    module, cfg, _ = setup
    inputs, out = tmp_path / "in", tmp_path / "out"
    write_inputs(inputs, broken=False)
    predict(cfg(inputs, out))
    (out / "a.png").write_bytes(b"user's file")
    with pytest.raises(ConfigError, match=r"already exists.*overwrite=true") as err:
        predict(cfg(inputs, out))
    assert str(out / "a.png") in str(err.value) and (out / "a.png").read_bytes() == b"user's file"
    # overwrite=true replaces it; a loss with class weights by name needs no training labels either
    predict(cfg(inputs, out, "overwrite=true", "loss=wce"))
    np.testing.assert_array_equal(mask_of(out / "a.png")[1], expected(module, inputs / "a.png"))

    with pytest.raises(ConfigError, match="inside input_dir"):
        predict(cfg(inputs, inputs / "predictions"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"holds no images .*\.png \.jpg \.jpeg \.tif \.tiff \.bmp"):
        predict(cfg(tmp_path / "empty", tmp_path / "out2"))
    with pytest.raises(ConfigError, match="is not a folder"):
        predict(cfg(tmp_path / "missing", tmp_path / "out2"))
    (tmp_path / "notes.txt").write_text("a file")  # used to be a NotADirectoryError at the first write
    for out in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "masks"):
        with pytest.raises(ConfigError, match=rf"output_dir={out} is not a folder: {tmp_path / 'notes.txt'} is a file"):
            predict(cfg(inputs, out))
    (inputs / "a.jpg").write_bytes(b"")
    with pytest.raises(ConfigError, match="would both be written to"):
        predict(cfg(inputs, tmp_path / "out3"))


def test_cli_empty_folder_is_one_clear_line(tmp_path):
    (tmp_path / "empty").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "SEGLOSS_TRACEBACK"}
    proc = subprocess.run(
        [sys.executable, "-m", "segloss.predict", f"ckpt_path={tmp_path / 'x.ckpt'}",
         f"input_dir={tmp_path / 'empty'}", f"output_dir={tmp_path / 'out'}", f"paths.log_dir={tmp_path / 'logs'}"],
        capture_output=True, text=True, env=env, cwd=PROJECT_ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("segloss: error: input_dir=") and str(tmp_path / "empty") in lines[0]
    assert ".tiff" in lines[0] and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "precision,flags,dtype",
    [("auto", set(), None), ("auto", {"avx512_bf16"}, torch.bfloat16), ("bf16-mixed", set(), torch.bfloat16),
     ("32-true", {"amx_bf16"}, None)],
)  # fmt: skip
def test_prediction_runs_under_the_training_precision(setup, tmp_path, monkeypatch, precision, flags, dtype):
    from segloss.predict import autocast_dtype
    from segloss.utils import precision as P

    monkeypatch.setattr(P, "cpu_flags", lambda *_: flags)
    monkeypatch.delenv(P.FORCE_CPU_BF16, raising=False)  # the detection itself is under test
    _, cfg, _ = setup
    config = cfg(tmp_path / "in", tmp_path / "out", f"trainer.precision={precision}")
    assert autocast_dtype(config, torch.device("cpu")) == dtype


def test_a_bf16_prediction_labels_every_image(setup, tmp_path):
    _, cfg, _ = setup
    inputs, out = tmp_path / "in", tmp_path / "out"
    write_inputs(inputs, broken=False)
    result = predict(cfg(inputs, out, "trainer.precision=bf16-mixed"))
    assert len(result["written"]) == len(GOOD) and all(p.is_file() for p in result["written"])
    for name in GOOD:
        assert mask_of((out / name).with_suffix(".png"))[1].shape == GOOD[name]


def test_make_predict_takes_paths_with_non_ascii_letters_spaces_and_commas(tmp_path):
    """`make predict INPUT=/data/été` used to stop in Hydra's override lexer; the Makefile quotes the paths."""
    inputs = tmp_path / "été, 2024 = new"
    inputs.mkdir()
    proc = subprocess.run(
        ["make", "-s", "predict", f"CKPT={tmp_path / 'x.ckpt'}", f"INPUT={inputs}", f"OUTPUT={tmp_path / 'out'}",
         f"ARGS=paths.log_dir={tmp_path / 'logs'}"],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert f"segloss: error: input_dir={inputs} holds no images" in proc.stderr  # the path arrived whole


def same_size_inputs(root: Path) -> list[str]:
    """Five images: three of one size, then two of another (sorted order), random RGB."""
    rng = np.random.default_rng(1)
    names = {"p1.png": (24, 32), "p2.png": (24, 32), "p3.png": (24, 32), "q1.png": (16, 40), "q2.png": (16, 40)}
    root.mkdir(parents=True)
    for name, size in names.items():
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / name)
    return sorted(names)


def test_images_of_one_size_go_through_the_net_together_and_give_the_per_image_labels(setup, tmp_path):
    """Trainer.predict with batch_size=2: batches [p1 p2] [p3] [q1 q2] (one size each, in order), each a single
    forward of the net, and every mask equal to the image's own forward."""
    module, cfg, _ = setup
    inputs, out = tmp_path / "in", tmp_path / "out"
    names = same_size_inputs(inputs)
    from segloss.models.module import SegmentationModule

    shapes = []
    real = SegmentationModule.forward
    SegmentationModule.forward = lambda self, x: (shapes.append(tuple(x.shape)), real(self, x))[1]
    try:
        result = predict(cfg(inputs, out, "batch_size=2", "overlay=true"))
    finally:
        SegmentationModule.forward = real
    assert shapes == [(2, 3, 24, 32), (1, 3, 24, 32), (2, 3, 16, 40)]
    assert result["written"] == [out / n for n in names] and len(result["overlays"]) == 5
    for name in names:
        np.testing.assert_array_equal(mask_of(out / name)[1], expected(module, inputs / name))


@pytest.mark.slow
def test_two_processes_label_each_image_once_and_equal_one_process(setup, tmp_path):
    """trainer=ddp_cpu with 2 processes: the batches are dealt round-robin, every mask written once, the same
    bytes as the one-process prediction."""
    from tests.conftest import run_cli

    _, cfg, data_dir = setup
    inputs = tmp_path / "in"
    names = same_size_inputs(inputs)
    one = cfg(inputs, tmp_path / "one", "batch_size=2")
    predict(one)
    run_cli("predict", [*TINY, f"paths.data_dir={data_dir}", f"ckpt_path={one.ckpt_path}", f"input_dir={inputs}",
                        f"output_dir={tmp_path / 'two'}", "batch_size=2", "trainer=ddp_cpu", "trainer.devices=2",
                        f"hydra.run.dir={tmp_path / 'run'}"], timeout=120)  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == names
    for name in names:
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name


def test_batches_are_dealt_round_robin_each_image_once_and_an_idle_process_gets_an_empty_batch(tmp_path):
    """Five images in batches [0 1] [2] [3 4] over 4 processes: ranks 0–2 one batch each, rank 3 one empty batch
    (Lightning refuses a loader of length zero), which the module and the writer pass through."""
    from types import SimpleNamespace

    from segloss.data.image_folder import ImageFolderData

    names = same_size_inputs(tmp_path / "in")
    as_float = lambda item: {**item, "image": item["image"].float()}  # noqa: E731
    data = ImageFolderData([tmp_path / "in" / n for n in names], as_float, batch_size=2)
    seen = []
    for rank in range(4):
        data.trainer = SimpleNamespace(global_rank=rank, world_size=4)
        batches = list(data.predict_dataloader())
        assert len(batches) == 1
        seen.append(batches[0]["index"])
    assert seen == [[0, 1], [2], [3, 4], []]
