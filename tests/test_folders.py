"""ImageMaskFolderDataset on tiny Kvasir-SEG / ISIC style trees (see tests/trees/folders.py)."""

from __future__ import annotations

import hashlib
import json

import hydra
import numpy as np
import pytest
import torch
from PIL import Image

from segloss.data.folders import ImageMaskFolderDataset, hashed_split
from segloss.errors import ConfigError, DatasetFormatError, DatasetNotFoundError
from tests.trees.folders import write_folder_tree

STEMS = [f"cju{i:04d}polyp" for i in range(30)]


@pytest.fixture
def kvasir(tmp_path):
    root = tmp_path / "Kvasir-SEG"
    return root, write_folder_tree(root, STEMS, seed=1)


def test_noisy_jpeg_masks_threshold_to_exact_binary_labels(kvasir):
    root, truth = kvasir
    ds = ImageMaskFolderDataset(root, "all")
    assert [s[0] for s in ds.samples] == sorted(STEMS)
    raw = np.asarray(Image.open(ds.samples[0][2]))
    assert raw.ndim == 3 and ((raw > 0) & (raw < 255)).any()  # RGB JPEG with compression noise, as Kvasir ships
    for index, sample in enumerate(ds):
        assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 24, 32)
        assert sample["mask"].dtype == torch.int64
        assert np.array_equal(sample["mask"].numpy(), truth[sample["name"]])
        assert np.array_equal(ds.load_mask(index).numpy(), truth[sample["name"]])
    assert ds.CLASS_NAMES == ("background", "foreground") and ds.PALETTE == ((0, 0, 0), (255, 255, 255))
    assert ds.IGNORE_INDEX == 255 and ds.image_size(0) == (24, 32)


def test_png_masks_with_isic_suffix(tmp_path):
    stems = ["ISIC_0000000", "ISIC_0000001"]
    truth = write_folder_tree(tmp_path, stems, size=(20, 12), mask_format="png", mask_suffix="_segmentation")
    ds = ImageMaskFolderDataset(tmp_path, "all", class_names=["background", "lesion"], mask_suffix="_segmentation")
    assert ds.samples[1][2].name == "ISIC_0000001_segmentation.png" and ds.CLASS_NAMES == ("background", "lesion")
    for sample in ds:
        assert np.array_equal(sample["mask"].numpy(), truth[sample["name"]])
    with pytest.raises(DatasetFormatError, match=r"2 images in .* have no mask") as err:
        ImageMaskFolderDataset(tmp_path, "all")  # the suffix is needed to pair them
    assert "ISIC_0000000.jpg" in str(err.value) and "ISIC_0000000_segmentation.png" in str(err.value)


def test_hashed_split_follows_the_documented_formula():
    for stem in STEMS:
        u = int.from_bytes(hashlib.sha256(f"7:{stem}".encode()).digest()[:8], "big") / 2**64
        assert hashed_split(stem, 7, 0.2) == ("val" if u < 0.2 else "train")
    shares = [np.mean([hashed_split(f"img{i}", seed, 0.2) == "val" for i in range(2000)]) for seed in (0, 1)]
    assert all(0.17 < share < 0.23 for share in shares)


def test_seeded_split_is_disjoint_covering_stable_and_unmoved_by_new_files(kvasir):
    root, _ = kvasir
    train = [s[0] for s in ImageMaskFolderDataset(root, "train").samples]
    val = [s[0] for s in ImageMaskFolderDataset(root, "val").samples]
    assert val and train and not set(train) & set(val) and sorted(train + val) == sorted(STEMS)
    assert [s[0] for s in ImageMaskFolderDataset(root, "val").samples] == val
    other_seed = [s[0] for s in ImageMaskFolderDataset(root, "val", seed=1).samples]
    assert other_seed != val
    write_folder_tree(root, [f"new{i}" for i in range(10)], seed=2)
    grown = [s[0] for s in ImageMaskFolderDataset(root, "val").samples]
    assert [stem for stem in grown if stem in STEMS] == val


def test_split_file_is_honoured(kvasir):
    root, _ = kvasir
    (root / "splits.json").write_text(json.dumps({"train": STEMS[3:], "val": [STEMS[2], STEMS[0]], "test": []}))
    ds = ImageMaskFolderDataset(root, "val", split_file="splits.json")
    assert [s[0] for s in ds.samples] == [STEMS[2], STEMS[0]]
    assert len(ImageMaskFolderDataset(root, "train", split_file=root / "splits.json")) == 27
    with pytest.raises(ConfigError, match=r"split 'test' of .* is empty"):
        ImageMaskFolderDataset(root, "test", split_file="splits.json")
    with pytest.raises(ConfigError, match="has no split 'holdout'"):
        ImageMaskFolderDataset(root, "holdout", split_file="splits.json")
    (root / "splits.json").write_text(json.dumps({"val": ["ghost_stem"]}))
    with pytest.raises(DatasetFormatError, match=r"1 stems .*\['ghost_stem'\]"):
        ImageMaskFolderDataset(root, "val", split_file="splits.json")


def test_unpaired_files_are_counted_with_examples(kvasir):
    root, _ = kvasir
    (root / "masks" / f"{STEMS[4]}.jpg").rename(root / "masks" / "orphan.jpg")
    with pytest.raises(DatasetFormatError) as err:
        ImageMaskFolderDataset(root, "all")
    text = str(err.value)
    assert f"1 images in {root / 'images'} have no mask" in text and f"{STEMS[4]}.jpg" in text
    assert f"1 masks in {root / 'masks'} have no image" in text and "orphan.jpg" in text


def test_missing_root_and_folders_name_path_layout_and_source(tmp_path):
    for root, problem in ((tmp_path / "nowhere", "the folder does not exist"), (tmp_path, "there is no")):
        with pytest.raises(DatasetNotFoundError) as err:
            ImageMaskFolderDataset(root, "train", name="Kvasir-SEG")
        text = str(err.value)
        assert f"data.root={root}" in text and problem in text
        assert "images/<stem>.<jpg|png|tif…> and masks/<stem>.<png|jpg|gif…>" in text
        assert "https://datasets.simula.no/kvasir-seg/" in text
    assert f"there is no {tmp_path / 'images'}" in text


def test_index_masks_keep_values_and_reject_unknown_ones(tmp_path):
    write_folder_tree(tmp_path, ["a", "b"], mask_format="png")
    labels = np.array([[0, 1, 2, 255]], dtype=np.uint8).repeat(24, axis=0).repeat(8, axis=1)  # 24×32
    Image.fromarray(labels).save(tmp_path / "masks" / "a.png")
    ds = ImageMaskFolderDataset(tmp_path, "all", class_names=["bg", "organ", "tumour"], binary=False)
    assert np.array_equal(ds[0]["mask"].numpy(), labels) and ds.PALETTE[1] == (128, 0, 0)
    labels[5, 5] = 3
    Image.fromarray(labels).save(tmp_path / "masks" / "a.png")
    with pytest.raises(DatasetFormatError, match=r"\[3\]") as err:
        ds.load_mask(0)
    assert str(tmp_path / "masks" / "a.png") in str(err.value)
    Image.fromarray(np.zeros((24, 32, 3), dtype=np.uint8)).save(tmp_path / "masks" / "b.png")
    with pytest.raises(DatasetFormatError, match=r"is a RGB image.*binary=True") as err:
        ds.load_mask(1)
    assert str(tmp_path / "masks" / "b.png") in str(err.value)


def test_binary_threshold_is_grey_128(tmp_path):
    write_folder_tree(tmp_path, ["a"], mask_format="png")
    grey = np.array([[0, 127, 128, 255]], dtype=np.uint8).repeat(24, axis=0).repeat(8, axis=1)
    Image.fromarray(np.stack([grey] * 3, axis=2)).save(tmp_path / "masks" / "a.png")  # RGB, converted to grey
    mask = ImageMaskFolderDataset(tmp_path, "all").load_mask(0).numpy()
    assert mask[0].tolist() == [0] * 16 + [1] * 16


def test_zero_one_masks_are_refused_when_binary(tmp_path):
    write_folder_tree(tmp_path, ["a"], mask_format="png")
    Image.fromarray(np.eye(24, 32, dtype=np.uint8)).save(tmp_path / "masks" / "a.png")
    with pytest.raises(DatasetFormatError, match="holds 0/1 values, not 0/255; read such masks with binary=False"):
        ImageMaskFolderDataset(tmp_path, "all").load_mask(0)
    with pytest.raises(ConfigError, match="binary masks have 2 classes"):
        ImageMaskFolderDataset(tmp_path, "all", class_names=["a", "b", "c"])


def test_kvasir_config_builds_a_datamodule_that_yields_batches(kvasir, make_cfg):
    root, _ = kvasir
    overrides = ["data=kvasir", f"data.root={root}", "data.num_workers=0", "data.pin_memory=false", "data.batch_size=4"]
    cfg = make_cfg([*overrides, "data.train_transform.base_size=[24,32]", "data.train_transform.crop_size=[16,16]"])
    assert cfg.data.num_classes == 2 and list(cfg.data.class_names) == ["background", "polyp"]
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup("fit")
    train, val = ({s[0] for s in dm.datasets[k].samples} for k in ("train", "val"))
    assert not train & val and train | val == set(STEMS) and dm.datasets["val"].CLASS_NAMES == ("background", "polyp")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (4, 16, 16) and batch["mask"].dtype == torch.int64
    assert set(batch["mask"].unique().tolist()) <= {0, 1, 255}
    val_batch = next(iter(dm.val_dataloader()))
    assert val_batch["image"].shape == (1, 3, 24, 32) and set(val_batch["mask"].unique().tolist()) == {0, 1}
