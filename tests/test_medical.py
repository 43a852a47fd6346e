"""MSDSliceDataset on tiny MSD tasks written as real .nii.gz volumes with a non-canonical affine."""

from __future__ import annotations

import json
import pickle
import sys

import hydra
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from segloss.data import medical
from segloss.data import medical_preprocess as mp
from segloss.data.medical import MSDSliceDataset
from segloss.data.transforms import eval_transform
from segloss.errors import ConfigError, DatasetFormatError, DatasetNotFoundError
from tests.trees.msd import save_nifti, world_order_slices, write_msd_task

Q = 2 * 4.0 / 255  # quantisation step of the uint8 encoding for z_clip = 4


def decoded(dataset: MSDSliceDataset, index: int, channel: int = 0) -> np.ndarray:
    return mp.decode_uint8(dataset[index]["image"][channel].numpy(), dataset.z_clip)


@pytest.fixture
def ct_task(tmp_path):
    root = tmp_path / "Task98_Tiny"
    return root, write_msd_task(root, cases=10, seed=1)


def test_label_and_image_slices_equal_the_volumes_seen_in_world_orientation(ct_task):
    root, written = ct_task
    dataset = MSDSliceDataset(root, split="all")
    assert len(dataset) == 10 * 6 and dataset.cases == sorted(written)
    for index, (case, z) in enumerate(dataset.samples):
        expected = world_order_slices(written[case]["label"])[z]
        # axis 0 was written pointing Anterior and axis 1 to the Left: rows reverse axis 0, columns keep axis 1
        np.testing.assert_array_equal(expected, written[case]["label"][::-1, :, z])
        item = dataset[index]
        assert item["mask"].dtype == torch.int64 and item["image"].dtype == torch.uint8
        assert item["image"].shape == (3, 24, 20) and dataset.image_size(index) == (24, 20)
        assert item["name"] == f"{case}_z{z:03d}" and item["case"] == case
        np.testing.assert_array_equal(item["mask"].numpy(), expected)
        np.testing.assert_array_equal(dataset.load_mask(index).numpy(), expected)
        assert torch.equal(item["image"][0], item["image"][1]) and torch.equal(item["image"][0], item["image"][2])
    assert dataset.CLASS_NAMES == ["background", "organ", "tumour"] and dataset.IGNORE_INDEX == 255
    assert dataset.PALETTE[0] == (0, 0, 0) and len(set(dataset.PALETTE)) == 3


def test_case_split_never_leaks_slices_and_is_stable_for_a_seed(ct_task):
    root, written = ct_task
    train, val = MSDSliceDataset(root, "train"), MSDSliceDataset(root, "val")
    assert len(val.cases) == 2 and len(train.cases) == 8
    assert set(train.cases).isdisjoint(val.cases) and set(train.cases) | set(val.cases) == set(written)
    assert {case for case, _ in train.samples} == set(train.cases)
    assert {s["case"] for s in (train[i] for i in range(len(train)))}.isdisjoint(val.cases)
    assert val.samples == [(case, z) for case in val.cases for z in range(6)]
    assert MSDSliceDataset(root, "val").cases == val.cases
    other_seeds = [tuple(MSDSliceDataset(root, "val", seed=s).cases) for s in (1, 2, 3)]
    assert any(cases != tuple(val.cases) for cases in other_seeds)
    assert medical.split_cases([f"c{i}" for i in range(5)], 0.2, 0) == medical.split_cases(
        [f"c{i}" for i in (4, 2, 0, 3, 1)], 0.2, 0
    )


@pytest.mark.parametrize(
    ("fg_ratio", "total"), [(None, 48), (1.0, 16), (0.5, 32), (0.8, 20), (0.3, 48), (0.4, 40), (0.7, 23)]
)
def test_fg_ratio_keeps_every_foreground_slice_and_subsamples_background(ct_task, fg_ratio, total):
    root, _ = ct_task  # 8 train cases x 6 slices, 2 foreground slices each: 16 foreground, 32 background-only
    train = MSDSliceDataset(root, "train", fg_ratio=fg_ratio)
    foreground = sum(bool(train.load_mask(i).any()) for i in range(len(train)))
    assert (len(train), foreground) == (total, 16)
    assert MSDSliceDataset(root, "train", fg_ratio=fg_ratio).samples == train.samples
    assert len(MSDSliceDataset(root, "val", fg_ratio=fg_ratio)) == 12  # whole validation volumes


def test_ct_window_and_z_score_match_numpy(ct_task):
    root, written = ct_task
    dataset = MSDSliceDataset(root, "all")
    train_cases = MSDSliceDataset(root, "train").cases
    fg = np.concatenate([written[c]["image"][written[c]["label"] > 0] for c in train_cases]).astype(np.float64)
    lo, hi = np.percentile(fg, [0.5, 99.5])
    mean, std = np.clip(fg, lo, hi).mean(), np.clip(fg, lo, hi).std()
    stats = dataset.intensity_stats[0]
    np.testing.assert_allclose([stats["lo"], stats["hi"], stats["mean"], stats["std"]], [lo, hi, mean, std], 1e-9)
    for index in (0, 7, 33, 59):
        case, z = dataset.samples[index]
        expected = (np.clip(world_order_slices(written[case]["image"])[z], lo, hi) - mean) / std
        assert np.abs(decoded(dataset, index) - np.clip(expected, -4, 4)).max() <= Q / 2 + 1e-5
    fixed = MSDSliceDataset(root, "all", ct_window=[-100, 300]).intensity_stats[0]
    clipped = np.clip(fg, -100, 300)
    assert (fixed["lo"], fixed["hi"]) == (-100.0, 300.0)
    np.testing.assert_allclose([fixed["mean"], fixed["std"]], [clipped.mean(), clipped.std()], 1e-9)


def test_mr_volumes_get_a_per_volume_nonzero_z_score(tmp_path):
    written = write_msd_task(tmp_path / "Task97_MR", cases=3, modality="T2", seed=2)
    dataset = MSDSliceDataset(tmp_path / "Task97_MR", "all")
    assert dataset.intensity_stats == [None]
    for index in (0, 9, 17):
        case, z = dataset.samples[index]
        volume = written[case]["image"].astype(np.float64)
        nonzero = volume[volume != 0]
        expected = (world_order_slices(volume)[z] - nonzero.mean()) / nonzero.std()
        assert np.abs(decoded(dataset, index) - np.clip(expected, -4, 4)).max() <= Q / 2 + 1e-5


def test_uint8_encoding_round_trips_within_half_a_step_through_the_transform(ct_task):
    z = np.random.default_rng(0).normal(0, 3, 10_000)
    assert np.abs(mp.decode_uint8(mp.encode_uint8(z, 4.0), 4.0) - np.clip(z, -4, 4)).max() <= Q / 2 + 1e-12
    assert mp.encode_uint8(np.array([-9.0, -4.0, 0.0, 4.0, 9.0]), 4.0).tolist() == [0, 0, 128, 255, 255]
    dataset = MSDSliceDataset(ct_task[0], "all", transform=eval_transform(mean=[0.5] * 3, std=[0.125] * 3))
    raw = MSDSliceDataset(ct_task[0], "all")
    item = dataset[3]
    assert item["image"].dtype == torch.float32 and item["case"] == raw[3]["case"]
    np.testing.assert_allclose(item["image"][0].numpy(), decoded(raw, 3), atol=1e-5)


def test_modalities_one_is_repeated_and_more_than_three_need_a_choice(tmp_path):
    names = ["FLAIR", "T1w", "t1gd", "T2w"]
    written = write_msd_task(tmp_path / "Task01_Brain", cases=2, modality=names, seed=3)
    with pytest.raises(ConfigError) as err:
        MSDSliceDataset(tmp_path / "Task01_Brain", "all")
    assert "0=FLAIR, 1=T1w, 2=t1gd, 3=T2w" in str(err.value) and "data.dataset.modalities" in str(err.value)
    with pytest.raises(ConfigError, match=r"modalities=\[4\]"):
        MSDSliceDataset(tmp_path / "Task01_Brain", "all", modalities=[4])
    dataset = MSDSliceDataset(tmp_path / "Task01_Brain", "all", modalities=[2, 0])
    case, z = dataset.samples[4]
    for channel, modality in enumerate([2, 0, 0]):  # two chosen, the last one repeated
        volume = written[case]["image"][..., modality].astype(np.float64)
        nonzero = volume[volume != 0]
        expected = (world_order_slices(volume)[z] - nonzero.mean()) / nonzero.std()
        assert np.abs(decoded(dataset, 4, channel) - np.clip(expected, -4, 4)).max() <= Q / 2 + 1e-5


def snapshot(folder):
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_cache_is_reused_keyed_by_settings_and_never_written_in_the_dataset(tmp_path, monkeypatch):
    root, cache = tmp_path / "Task96_Cache", tmp_path / "cache"
    write_msd_task(root, cases=3, seed=4)
    before = snapshot(root)
    first = MSDSliceDataset(root, "all", cache_dir=cache)
    assert len(list(cache.rglob("*.npy"))) == 9 and len(list(cache.rglob("ct_stats-*.json"))) == 1
    medical._STATS_MEMO.clear()

    def no_nifti(*args, **kwargs):
        raise AssertionError("a cached case was decompressed again")

    monkeypatch.setattr(mp, "_read", no_nifti)
    second = MSDSliceDataset(root, "all", cache_dir=cache)
    assert second.samples == first.samples
    for index in (0, 8, 17):
        assert torch.equal(second[index]["image"], first[index]["image"])
        assert torch.equal(second[index]["mask"], first[index]["mask"])
    monkeypatch.undo()
    other = MSDSliceDataset(root, "all", cache_dir=cache, z_clip=3.0)
    assert len(list(cache.rglob("*.npy"))) == 18 and not list(cache.rglob("*.tmp"))
    assert not torch.equal(other[2]["image"], first[2]["image"])
    assert snapshot(root) == before
    with pytest.raises(ConfigError, match="inside the dataset folder"):
        MSDSliceDataset(root, "all", cache_dir=root / "cache")


def test_a_truncated_cache_file_is_written_again(tmp_path):
    """A cache .npy cut short (a full disk, a killed run) used to fail every later run ("mmap length …")."""
    root, cache = tmp_path / "Task95_Cut", tmp_path / "cache"
    write_msd_task(root, cases=3, seed=5)
    first = MSDSliceDataset(root, "all", cache_dir=cache)
    expected = [first[i]["image"].clone() for i in (0, 9)]
    image = sorted(cache.rglob("*.image.npy"))[0]
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    medical._STATS_MEMO.clear()
    again = MSDSliceDataset(root, "all", cache_dir=cache)
    assert [torch.equal(again[i]["image"], e) for i, e in zip((0, 9), expected)] == [True, True]
    assert image.stat().st_size > 0 and np.load(image).ndim == 4


def test_items_load_in_forked_workers_and_after_pickling(tmp_path):
    root = tmp_path / "Task95_Workers"
    write_msd_task(root, cases=2, seed=5)
    dataset = MSDSliceDataset(root, "all", cache_dir=tmp_path / "cache")
    loader = DataLoader(dataset, batch_size=4, num_workers=2, multiprocessing_context="fork")
    batches = list(loader)
    assert sum(len(b["case"]) for b in batches) == 12 and batches[0]["image"].shape == (4, 3, 24, 20)
    assert torch.equal(batches[1]["mask"][0], dataset[4]["mask"])
    clone = pickle.loads(pickle.dumps(dataset))
    assert torch.equal(clone[5]["image"], dataset[5]["image"])


def test_missing_root_dataset_json_or_images_name_path_layout_and_source(tmp_path):
    root = tmp_path / "Task94_Missing"
    for setup, problem in [
        (lambda: None, "the folder does not exist"),
        (lambda: root.mkdir(), "there is no"),
        (lambda: (root / "dataset.json").write_text("{}"), "imagesTr"),
    ]:
        setup()
        with pytest.raises(DatasetNotFoundError) as err:
            MSDSliceDataset(root)
        message = str(err.value)
        assert str(root) in message and problem in message and "labelsTr/<case>.nii.gz" in message
        assert "http://medicaldecathlon.com/" in message


def test_malformed_dataset_json_and_missing_listed_files(ct_task):
    root, _ = ct_task
    meta = root / "dataset.json"
    info = json.loads(meta.read_text())
    for key in ("labels", "training"):
        meta.write_text(json.dumps({k: v for k, v in info.items() if k != key}))
        with pytest.raises(DatasetFormatError, match=f'{meta}.*has no "{key}" entry'):
            MSDSliceDataset(root)
    meta.write_text('{"labels": {"0": "background",')
    with pytest.raises(DatasetFormatError, match=f"{meta} is not valid JSON"):
        MSDSliceDataset(root)
    meta.write_text(json.dumps(info))
    (root / "labelsTr" / "case_003.nii.gz").unlink()
    with pytest.raises(DatasetFormatError, match=r"1 of 20 files listed in .*labelsTr/case_003\.nii\.gz"):
        MSDSliceDataset(root)


def test_bad_label_value_and_shape_mismatch_name_the_files(ct_task):
    root, written = ct_task
    label = written["case_002"]["label"].copy()
    label[0, 0, 0] = 7
    save_nifti(root / "labelsTr" / "case_002.nii.gz", label)
    with pytest.raises(DatasetFormatError, match=r"case_002\.nii\.gz holds label values \[7\]"):
        MSDSliceDataset(root, "all")
    save_nifti(root / "labelsTr" / "case_002.nii.gz", written["case_002"]["label"][:, :, :5])
    with pytest.raises(DatasetFormatError, match=r"imagesTr/case_002\.nii\.gz.*labelsTr/case_002\.nii\.gz"):
        MSDSliceDataset(root, "all")


@pytest.mark.parametrize("modality", ["CT", "MRI"])
def test_a_non_finite_voxel_is_refused_naming_the_case_and_the_count(tmp_path, modality):
    """One NaN in one CT training case used to make the CT statistics NaN and blank every case (MR: that one)."""
    root = tmp_path / "Task97_Nan"
    written = write_msd_task(root, cases=6, modality=modality, seed=3)
    image = written["case_004"]["image"].copy()
    image[3, 4, 2], image[0, 0, 0] = np.nan, np.inf
    save_nifti(root / "imagesTr" / "case_004.nii.gz", image)
    with pytest.raises(DatasetFormatError, match=r"imagesTr/case_004\.nii\.gz holds 2 non-finite voxel\(s\)"):
        MSDSliceDataset(root, "all")


def test_missing_nibabel_says_how_to_install_it(ct_task, monkeypatch):
    monkeypatch.setitem(sys.modules, "nibabel", None)
    with pytest.raises(ImportError, match=r"pip install segloss\[medical\]"):
        MSDSliceDataset(ct_task[0], "all")
    with pytest.raises(ConfigError, match="no labels"):
        MSDSliceDataset(ct_task[0], "test")


def test_msd_config_builds_a_datamodule_that_yields_batches(make_cfg, tmp_path):
    root = tmp_path / "Task09_Spleen"
    write_msd_task(root, cases=5, labels=("background", "spleen"), seed=6)
    overrides = [
        "data=msd",
        f"data.root={root}",
        f"data.dataset.cache_dir={tmp_path / 'cache'}",
        "data.num_workers=0",
        "data.train_transform.crop_size=[16,16]",
        "data.train_transform.base_size=[24,20]",
        "data.batch_size=2",
        "data.pin_memory=false",
    ]
    cfg = make_cfg(overrides)
    assert cfg.data.dataset.fg_ratio == 0.5 and cfg.data.train_transform.hflip == 0
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].shape == (2, 3, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (2, 16, 16) and set(batch["case"]) <= set(datamodule.datasets["train"].cases)
    val = next(iter(datamodule.val_dataloader()))
    assert val["image"].shape[1:] == (3, 24, 20) and val["case"][0] == datamodule.datasets["val"].cases[0]
    assert len(datamodule.datasets["train"]) == 16  # 4 train cases: 8 foreground slices and 8 of background
    with pytest.raises(ConfigError, match="num_classes=3"):
        hydra.utils.instantiate(make_cfg([*overrides, "data.num_classes=3", "data.class_names=[a,b,c]"]).data).setup()
