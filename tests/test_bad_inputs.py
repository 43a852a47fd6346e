"""Bad input, one clear error each: it names the problem and the fix (config, data, tensors, checkpoints)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import MissingConfigException
from PIL import Image

from segloss.build import check_class_vectors
from segloss.data.cityscapes import CityscapesDataset
from segloss.data.datamodule import SegmentationDataModule
from segloss.data.folders import ImageMaskFolderDataset
from segloss.data.transforms import train_transform
from segloss.data.voc import VOCDataset
from segloss.errors import ConfigError, DatasetFormatError, DatasetNotFoundError, NonFiniteLossError
from segloss.losses import CrossEntropyLoss, FocalLoss
from segloss.models.module import SegmentationModule
from segloss.models.nets.unet import UNet
from segloss.utils.checkpoints import load_weights, read_checkpoint
from segloss.utils.config import CONFIG_DIR
from segloss.utils.precision import check_precision
from tests.conftest import TINY_SYNTHETIC, fit, run_cli
from tests.helpers.modules import plain_module
from tests.trees.folders import write_folder_tree
from tests.trees.voc import write_voc_tree

# ---------------------------------------------------------------- config


@pytest.mark.parametrize("group,valid", [("experiment", "focal_cityscapes"), ("loss", "focal"),
                                         ("model", "deeplabv3plus"), ("data", "cityscapes")])  # fmt: skip
def test_an_unknown_name_lists_the_valid_ones(group, valid):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"), pytest.raises(MissingConfigException) as err:
        compose("train", overrides=[f"{group}=no_such_{group}"])
    assert f"no_such_{group}" in str(err.value) and f"Available options in '{group}'" in str(err.value)
    assert valid in str(err.value)


def _datamodule(root, **kwargs) -> SegmentationDataModule:
    args = {"dataset": CityscapesDataset, "root": str(root), "num_classes": 19,
            "class_names": [str(i) for i in range(19)], **kwargs}  # fmt: skip
    return SegmentationDataModule(**args)


def test_num_classes_that_the_dataset_does_not_have(cityscapes_tree):
    with pytest.raises(ConfigError, match=r"data.num_classes=5 but CityscapesDataset has 19 classes"):
        _datamodule(cityscapes_tree[0], num_classes=5, class_names=list("abcde")).verify()


def test_num_classes_that_the_net_does_not_output():
    module = SegmentationModule(net=UNet(num_classes=4, base_channels=4, depth=2), loss=CrossEntropyLoss(),
                                optimizer=None, num_classes=3)  # fmt: skip
    with pytest.raises(ConfigError, match=r"net outputs 4 channels but data.num_classes=3; set model.net.num_classes"):
        module.model_step({"image": torch.randn(1, 3, 8, 8), "mask": torch.zeros(1, 8, 8, dtype=torch.long)})


@pytest.mark.parametrize("loss,attr", [(CrossEntropyLoss(weight=[1.0, 2.0]), "weight"),
                                       (FocalLoss(alpha=[0.2, 0.3, 0.5, 0.1]), "alpha")])  # fmt: skip
def test_per_class_vectors_of_the_wrong_length(loss, attr):
    with pytest.raises(ConfigError, match=rf"loss.{attr} has \d entries but data.num_classes=3; give one value"):
        check_class_vectors(loss, 3)


def test_ignore_index_that_is_a_class(tmp_path):
    with pytest.raises(ConfigError, match=r"ignore_index=3 is a valid class id .* use a value outside"):
        _datamodule(tmp_path, ignore_index=3)


def test_a_crop_larger_than_the_largest_scaled_frame():
    with pytest.raises(ConfigError, match=r"crop_size=\[512, 1024\] .* larger than the frame at the largest scale"):
        train_transform(crop_size=(512, 1024), base_size=(256, 512), scale_range=(0.5, 1.5))


def test_a_global_batch_that_does_not_split_over_the_processes(tmp_path):
    datamodule = _datamodule(tmp_path, batch_size=6)
    datamodule.check_world_size(2)
    datamodule.check_world_size(3)
    with pytest.raises(ConfigError, match=r"data.batch_size=6 is the global batch .* 4 processes"):
        datamodule.check_world_size(4)


@pytest.mark.parametrize("precision,message", [("16-mixed", r"float16\) needs a CUDA GPU.*auto, bf16-mixed or 32-true"),
                                               ("fp8", r"'fp8' is not one of")])  # fmt: skip
def test_a_precision_this_device_cannot_run(precision, message):
    with pytest.raises(ConfigError, match=message):
        check_precision(precision, "cpu")


def test_a_config_error_inside_instantiate_reaches_the_user_without_a_traceback(tmp_path):
    proc = run_cli("train", [f"hydra.run.dir={tmp_path}", "data.num_classes=5"], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "segloss: error: data.class_names has 19 names but data.num_classes=5" in proc.stderr


# ---------------------------------------------------------------- data


def test_a_missing_dataset_root(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"(?s)Cityscapes .*does not exist.*leftImg8bit"):
        CityscapesDataset(tmp_path / "nowhere")


def test_an_empty_split(tmp_path):
    (tmp_path / "leftImg8bit" / "train" / "aachen").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match=r"no \*_leftImg8bit.png files in .*train/<city>/"):
        CityscapesDataset(tmp_path, "train")


def test_images_without_masks_are_named(cityscapes_tree):
    root, _ = cityscapes_tree
    next((root / "gtFine" / "train" / "aachen").glob("*labelIds.png")).unlink()
    with pytest.raises(DatasetFormatError, match=r"1 of 4 images .* have no label file, e.g. .*aachen_0000\d\d"):
        CityscapesDataset(root, "train")


def test_masks_without_images_are_named(tmp_path):
    write_folder_tree(tmp_path, ["a", "b", "c"], mask_format="png")
    (tmp_path / "images" / "b.jpg").unlink()
    with pytest.raises(DatasetFormatError, match=r"1 masks in .* have no image \(e.g. \['b.png'\]\)"):
        ImageMaskFolderDataset(tmp_path, split="all")


def test_an_image_and_mask_of_different_sizes(tmp_path):
    write_folder_tree(tmp_path, ["a", "b"], mask_format="png")
    Image.new("L", (7, 5)).save(tmp_path / "masks" / "a.png")
    dataset = ImageMaskFolderDataset(tmp_path, split="all")
    with pytest.raises(DatasetFormatError, match=r"image .*a.jpg is \(24, 32\) but its mask .*a.png is \(5, 7\)"):
        dataset[[s[0] for s in dataset.samples].index("a")]


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_a_truncated_image_file_is_named(tmp_path, suffix):
    write_folder_tree(tmp_path, ["a", "b"], mask_format="png")
    path = tmp_path / "images" / "a.jpg"
    if suffix == "png":
        path.unlink()
        path = tmp_path / "images" / "a.png"
        Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    dataset = ImageMaskFolderDataset(tmp_path, split="all")
    with pytest.raises(DatasetFormatError, match=rf"cannot read image .*a.{suffix}"):
        dataset[[s[0] for s in dataset.samples].index("a")]


def test_an_unreadable_nifti_volume_is_named(tmp_path):
    from segloss.data.medical import MSDSliceDataset
    from tests.trees.msd import write_msd_task

    write_msd_task(tmp_path / "Task09_Spleen", cases=3)
    broken = sorted((tmp_path / "Task09_Spleen" / "imagesTr").glob("case_*.nii.gz"))[0]
    broken.write_bytes(b"not a nifti file")
    with pytest.raises(DatasetFormatError, match=rf"{broken.name}"):
        MSDSliceDataset(tmp_path / "Task09_Spleen", split="train", cache_dir=tmp_path / "cache")


def test_label_values_outside_the_classes_report_values_and_file(cityscapes_tree):
    root, _ = cityscapes_tree
    mask_path = next((root / "gtFine" / "val" / "frankfurt").glob("*labelIds.png"))
    Image.fromarray(np.full((8, 16), 77, np.uint8)).save(mask_path)
    dataset = CityscapesDataset(root, "val")
    index = [s[2] for s in dataset.samples].index(mask_path)
    with pytest.raises(DatasetFormatError, match=rf"{mask_path.name} holds values \[77\] that are not Cityscapes"):
        dataset[index]


def test_index_mask_values_outside_the_classes(tmp_path):
    write_folder_tree(tmp_path, ["a", "b"], mask_format="png")
    Image.fromarray(np.full((24, 32), 9, np.uint8)).save(tmp_path / "masks" / "a.png")
    dataset = ImageMaskFolderDataset(tmp_path, split="all", binary=False, class_names=["bg", "fg", "edge"])
    with pytest.raises(DatasetFormatError, match=r"a.png holds label values \[9\] that are neither"):
        dataset[[s[0] for s in dataset.samples].index("a")]


def test_a_palette_mask_saved_as_rgb(tmp_path):
    write_voc_tree(tmp_path, {"train": ["2007_000032"], "val": ["2007_000033"]})
    mask = tmp_path / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000032.png"
    Image.open(mask).convert("RGB").save(mask)
    with pytest.raises(DatasetFormatError, match=r"2007_000032.png is a RGB image; expected a single-channel"):
        VOCDataset(tmp_path, "train")[0]


# ---------------------------------------------------------------- tensors


def test_nan_in_the_inputs_stops_with_the_images_named():
    image = torch.randn(2, 3, 8, 8)
    image[1, 0, 0, 0] = float("nan")
    batch = {"image": image, "mask": torch.zeros(2, 8, 8, dtype=torch.long), "name": ["x_01", "x_02"]}
    with pytest.raises(NonFiniteLossError, match=r"loss is nan .*images \['x_01', 'x_02'\].*inputs finite: False"):
        plain_module().training_step(batch, 0)


def test_infinite_logits_are_reported():
    module = plain_module()
    module.net.register_forward_hook(lambda mod, inp, out: out * float("inf"))
    batch = {"image": torch.randn(1, 3, 8, 8), "mask": torch.zeros(1, 8, 8, dtype=torch.long), "name": ["y"]}
    with pytest.raises(NonFiniteLossError, match=r"inputs finite: True, logits finite: False"):
        module.training_step(batch, 0)


def test_float_targets_are_refused_with_the_conversion_to_use():
    with pytest.raises(ValueError, match=r"target must be an integer class-index tensor .* convert masks with .long"):
        CrossEntropyLoss()(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4))


# ---------------------------------------------------------------- checkpoints


def _save(tmp_path: Path, module) -> Path:
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": module.state_dict()}, path)
    return path


def test_a_checkpoint_with_another_class_count_names_the_shapes(tmp_path):
    other = SegmentationModule(net=UNet(num_classes=5, base_channels=4, depth=2), loss=CrossEntropyLoss(),
                               optimizer=None, num_classes=5)  # fmt: skip
    with pytest.raises(ConfigError, match=r"shape mismatches \['net.head.weight: \(5, 4, 1, 1\) in checkpoint vs \(3"):
        load_weights(plain_module(), _save(tmp_path, other))


def test_a_checkpoint_of_another_architecture_names_the_keys(tmp_path):
    other = SegmentationModule(net=UNet(num_classes=3, base_channels=4, depth=3), loss=CrossEntropyLoss(),
                               optimizer=None, num_classes=3)  # fmt: skip
    with pytest.raises(ConfigError, match=r"unexpected keys \['net.down.2"):
        load_weights(plain_module(), _save(tmp_path, other))


@pytest.mark.parametrize("content,message", [(None, "does not exist"), (b"\x80\x02garbage", "cannot read checkpoint")])
def test_a_missing_or_truncated_checkpoint(tmp_path, content, message):
    path = tmp_path / "x.ckpt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        read_checkpoint(path)


def test_resuming_from_a_checkpoint_of_another_model_stops_before_training(tmp_path):
    other = _save(tmp_path, plain_module())
    with pytest.raises(ConfigError, match=r"does not fit the configured model"):
        fit([*TINY_SYNTHETIC, f"paths.data_dir={tmp_path / 'data'}", f"ckpt_path={other}"], tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()
