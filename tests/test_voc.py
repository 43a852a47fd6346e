"""VOCDataset on tiny trees in the official VOCdevkit layout (see tests/trees/voc.py)."""

from __future__ import annotations

import hydra
import numpy as np
import pytest
import torch
from PIL import Image

from segloss.data.voc import VOCDataset, voc_colormap
from segloss.errors import DatasetFormatError, DatasetNotFoundError
from tests.trees.voc import PALETTE_BYTES, write_voc_tree

SPLITS = {"train": ["2007_000032", "2007_000039", "2008_000008"], "val": ["2007_000033", "2009_000012"]}
SBD_ONLY = ["2008_000002", "2008_000003", "2010_000001"]


@pytest.fixture
def voc_tree(tmp_path):
    written = write_voc_tree(tmp_path / "data", SPLITS, size=(10, 14), seed=3, with_aug=SBD_ONLY)
    return tmp_path / "data", written


def test_masks_are_palette_indices_with_borders_kept(voc_tree):
    root, written = voc_tree
    ds = VOCDataset(root, "train")
    assert [s[0] for s in ds.samples] == SPLITS["train"]
    assert Image.open(ds.samples[0][2]).mode == "P"  # the fixture really wrote palette PNGs
    for index, sample in enumerate(ds):
        expected = written["SegmentationClass"][sample["name"]]
        assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 10, 14)
        assert sample["mask"].dtype == torch.int64
        assert np.array_equal(sample["mask"].numpy(), expected)
        assert np.array_equal(ds.load_mask(index).numpy(), expected)
        assert (sample["mask"] == 255).any() and ((sample["mask"] > 0) & (sample["mask"] < 21)).any()
    assert ds.image_size(0) == (10, 14)


def test_palette_is_the_devkit_colour_map():
    assert len(VOCDataset.PALETTE) == len(VOCDataset.CLASS_NAMES) == 21
    assert VOCDataset.CLASS_NAMES[15] == "person" and VOCDataset.CLASS_NAMES[20] == "tvmonitor"
    expected = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 15: (192, 128, 128), 20: (0, 64, 128)}
    assert {i: VOCDataset.PALETTE[i] for i in expected} == expected
    assert voc_colormap(256)[255] == (224, 224, 192)  # the colour of the 255 object borders


@pytest.mark.parametrize("sub", ["", "VOCdevkit", "VOCdevkit/VOC2012"])
def test_every_root_variant_resolves_to_voc2012(voc_tree, sub):
    root, _ = voc_tree
    ds = VOCDataset(root / sub if sub else root, "val")
    assert ds.voc_dir == root / "VOCdevkit" / "VOC2012"
    assert [s[0] for s in ds.samples] == SPLITS["val"]


def test_trainaug_is_derived_from_aug_masks_and_train_minus_val(voc_tree):
    root, written = voc_tree
    voc = root / "VOCdevkit" / "VOC2012"
    (voc / "SegmentationClassAug" / f"{SPLITS['train'][0]}.png").unlink()  # MMSeg's converter writes SBD ids only
    ds = VOCDataset(root, "trainaug")
    assert [s[0] for s in ds.samples] == sorted(SPLITS["train"] + SBD_ONLY)
    assert not {s[0] for s in ds.samples} & set(SPLITS["val"])  # val ids have aug masks but are excluded
    for index, (name, _, mask_path) in enumerate(ds.samples):
        folder = "SegmentationClass" if name in SPLITS["train"] else "SegmentationClassAug"
        assert mask_path.parent.name == folder
        assert np.array_equal(ds.load_mask(index).numpy(), written[folder][name])


def test_trainaug_txt_wins_over_derivation(voc_tree):
    root, written = voc_tree
    sets = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
    (sets / "trainaug.txt").write_text(f"{SBD_ONLY[1]}\n{SPLITS['train'][2]}\n")
    ds = VOCDataset(root, "trainaug")
    assert [s[0] for s in ds.samples] == [SBD_ONLY[1], SPLITS["train"][2]]
    assert np.array_equal(ds[0]["mask"].numpy(), written["SegmentationClassAug"][SBD_ONLY[1]])


def _expect_not_found(root, split="train", source="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/") -> str:
    with pytest.raises(DatasetNotFoundError) as err:
        VOCDataset(root, split)
    text = str(err.value)
    assert f"data.root={root}" in text
    assert "VOCdevkit/VOC2012/{JPEGImages/<id>.jpg, SegmentationClass/<id>.png" in text
    assert "ImageSets/Segmentation/{train,val,trainval}.txt" in text
    assert source in text
    return text


def test_missing_or_malformed_roots_name_path_layout_and_source(tmp_path):
    assert "the folder does not exist" in _expect_not_found(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    assert f"none of {tmp_path / 'empty'}" in _expect_not_found(tmp_path / "empty")
    voc = tmp_path / "bare" / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    assert f"there is no {voc / 'ImageSets' / 'Segmentation'}" in _expect_not_found(voc.parent)


def test_missing_split_files_are_named(voc_tree):
    root, _ = voc_tree
    sets = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
    assert f"there is no split file {sets / 'trainval.txt'}" in _expect_not_found(root, "trainval")
    (sets / "val.txt").unlink()
    assert f"there is no split file {sets / 'val.txt'}" in _expect_not_found(root, "val")
    assert f"deriving trainaug needs {sets / 'val.txt'}" in _expect_not_found(root / "VOCdevkit", "trainaug")


def test_trainaug_without_aug_masks_points_to_sbd(tmp_path):
    write_voc_tree(tmp_path, SPLITS, size=(6, 6))
    text = _expect_not_found(tmp_path, "trainaug", source="http://home.bharathh.info/pubs/codes/SBD/download.html")
    assert "SegmentationClassAug" in text and "MMSegmentation" in text


def test_ids_without_jpeg_or_mask_are_counted_with_examples(voc_tree):
    root, _ = voc_tree
    voc = root / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages" / "2007_000039.jpg").unlink()
    (voc / "SegmentationClass" / "2008_000008.png").unlink()
    with pytest.raises(DatasetFormatError) as err:
        VOCDataset(root, "train")
    text = str(err.value)
    assert "2 of 3 ids of split 'train'" in text
    assert str(voc / "JPEGImages" / "2007_000039.jpg") in text
    assert str(voc / "SegmentationClass" / "2008_000008.png") in text
    assert "remove those ids from the split file" in text


def test_label_value_outside_the_classes_names_value_and_file(voc_tree):
    root, _ = voc_tree
    path = root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000033.png"
    bad = np.zeros((10, 14), dtype=np.uint8)
    bad[2, 3] = 21
    png = Image.fromarray(bad)
    png.putpalette(PALETTE_BYTES)
    png.save(path)
    ds = VOCDataset(root, "val")
    with pytest.raises(DatasetFormatError, match=r"\[21\]") as err:
        ds.load_mask(0)
    assert str(path) in str(err.value)


def test_colour_mask_is_refused_with_a_hint(voc_tree):
    root, _ = voc_tree
    path = root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000033.png"
    Image.open(path).convert("RGB").save(path)
    with pytest.raises(DatasetFormatError) as err:
        VOCDataset(root, "val")[0]
    assert str(path) in str(err.value) and "RGB" in str(err.value) and "palette" in str(err.value)


def test_image_and_mask_size_mismatch(voc_tree):
    root, _ = voc_tree
    path = root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2009_000012.png"
    Image.fromarray(np.zeros((9, 14), dtype=np.uint8)).save(path)
    with pytest.raises(DatasetFormatError, match=r"is \(10, 14\) but its mask .* is \(9, 14\)"):
        VOCDataset(root, "val")[1]


def test_save_prediction_round_trip(tmp_path):
    pred = np.arange(22 * 3, dtype=np.int64).reshape(6, 11) % 22
    pred[pred == 21] = 255
    path = VOCDataset.save_prediction(pred, tmp_path / "results/VOC2012/Segmentation/comp6_test_cls/2008_000001.png")
    with Image.open(path) as img:
        assert img.mode == "P"
        assert np.array_equal(np.asarray(img), pred)
        colours = np.asarray(img.convert("RGB"))
    assert tuple(colours[1, 4]) == (192, 128, 128)  # pred[1, 4] = 15 = person
    assert tuple(colours[1, 10]) == (224, 224, 192)  # pred[1, 10] = 255 = border
    same = VOCDataset.save_prediction(pred, tmp_path / "preds", "2008_000001")  # PredictionWriter's call
    assert same == tmp_path / "preds" / "2008_000001.png" and np.array_equal(np.asarray(Image.open(same)), pred)
    with pytest.raises(DatasetFormatError, match=r"\[21\]"):
        VOCDataset.save_prediction(np.full((2, 2), 21), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="H×W integer"):
        VOCDataset.save_prediction(np.zeros((2, 2, 3), dtype=np.uint8), tmp_path / "bad.png")


@pytest.mark.parametrize(("config", "train_ids"), [("voc", SPLITS["train"]), ("voc_aug", SPLITS["train"] + SBD_ONLY)])
def test_data_configs_build_a_datamodule_that_yields_batches(voc_tree, make_cfg, config, train_ids):
    root, _ = voc_tree
    cfg = make_cfg(
        [
            f"data={config}",
            f"data.root={root}",
            "data.num_workers=0",
            "data.pin_memory=false",
            "data.batch_size=2",
            "data.train_transform.base_size=[10,14]",
            "data.train_transform.crop_size=[8,8]",
        ]
    )
    assert cfg.data.num_classes == 21 and cfg.data.val_batch_size == 1
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup("fit")
    assert sorted(s[0] for s in dm.datasets["train"].samples) == sorted(train_ids)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 8, 8) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (2, 8, 8) and batch["mask"].dtype == torch.int64
    assert set(batch["mask"].unique().tolist()) <= {*range(21), 255}
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (1, 3, 10, 14) and val["name"] == [SPLITS["val"][0]]
