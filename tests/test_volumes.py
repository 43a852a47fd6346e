"""MSDVolumeDataset, VolumeAugment and the synthetic 3D tasks on tiny MSD trees written as real .nii.gz volumes."""

from __future__ import annotations

import json

import hydra
import numpy as np
import pytest
import torch

from segloss.data import volume_preprocess as vp
from segloss.data.datamodule import PadCollate
from segloss.data.medical import split_cases
from segloss.data.synthetic_volumes import SyntheticVolumes, main, write_task
from segloss.data.volume_augment import VolumeAugment
from segloss.data.volumes import MSDVolumeDataset, crop_padded, patch_origin
from segloss.errors import ConfigError, DatasetFormatError, DatasetNotFoundError
from segloss.utils.seeding import seeded_rngs
from tests.trees.msd import AFFINE, save_nifti, world_order_slices, write_msd_task

NO_AUGMENT = dict(p_flip=0, p_rotation=0, p_scale=0, p_noise=0, p_brightness=0, p_contrast=0, p_gamma=0,
                  p_gamma_inverted=0)  # fmt: skip


def display(volume: np.ndarray) -> np.ndarray:
    """A volume written with tests.trees.msd.AFFINE (X×Y×Z[×C]) in the dataset's D×H×W order, from the affine."""
    if volume.ndim == 4:
        return np.stack([world_order_slices(volume[..., c]) for c in range(volume.shape[-1])])
    return world_order_slices(volume)


@pytest.fixture(scope="module")
def spleen(tmp_path_factory):
    """A synthetic spleen-like task (CT) of 6 cases, written once for the module."""
    root = tmp_path_factory.mktemp("vol") / "Synthetic3D_Spleen"
    return root, write_task(root, "spleen", cases=6, seed=0)


# --- resampling ------------------------------------------------------------------------------------------------
def test_resampling_gives_the_expected_shape_and_nearest_labels_keep_their_values(tmp_path):
    root = tmp_path / "Task90_Resample"
    write_msd_task(root, cases=3, modality="MRI", shape=(24, 20, 6), seed=1)  # spacing (z, y, x) = (2.5, 0.7, 0.8)
    dataset = MSDVolumeDataset(root, "all", spacing=[1.25, 1.4, 0.4], patches=False)
    assert dataset.target_spacing == (1.25, 1.4, 0.4)
    for case in dataset.cases:  # raw D×H×W = 6×24×20 (Z, Y=array axis 0, X=array axis 1) → ×2, ×0.5, ×2
        assert dataset.shapes[case] == (12, 12, 40)
        np.testing.assert_allclose(dataset.spacing[case], (1.25, 1.4, 0.4))
        item = dataset[dataset.cases.index(case)]
        assert item["image"].shape == (1, 12, 12, 40) and item["mask"].dtype == torch.int64
        assert set(item["mask"].unique().tolist()) == {0, 1, 2}  # nothing invented between classes
    assert vp.resampled_shape((6, 24, 20), (2.5, 0.7, 0.8), (1.25, 1.4, 0.4)) == (12, 12, 40)
    assert vp.resampled_shape((11, 5, 5), (3.0, 1.0, 1.0), (2.0, 1.0, 100.0)) == (16, 5, 1)
    label = np.random.default_rng(0).integers(0, 4, (5, 6, 7)).astype(np.uint8)
    image = np.random.default_rng(1).normal(size=(2, 5, 6, 7)).astype(np.float32)
    up_image, up_label = vp.resample(image, label, (10, 12, 14))
    np.testing.assert_array_equal(up_label[::2, ::2, ::2], label)  # ×2 nearest: each voxel repeated
    assert up_image.shape == (2, 10, 12, 14) and up_label.dtype == np.uint8
    same_image, same_label = vp.resample(image, label, (5, 6, 7))
    assert same_image is image and same_label is label


def test_median_spacing_comes_from_the_training_cases(spleen):
    root, written = spleen
    dataset = MSDVolumeDataset(root, "val", patches=False)
    train, _ = split_cases(list(written), 0.2, 0)
    expected = np.median([written[c]["spacing"][::-1] for c in train], axis=0)  # (x, y, z) → (z, y, x)
    np.testing.assert_allclose(dataset.target_spacing, expected, rtol=1e-6)
    with pytest.raises(ConfigError, match=r"data.dataset.spacing=\[1, -2, 1\]"):
        MSDVolumeDataset(root, "val", spacing=[1, -2, 1])


# --- normalisation ---------------------------------------------------------------------------------------------
def test_ct_normalisation_clips_to_training_foreground_percentiles_and_z_scores(tmp_path):
    root = tmp_path / "Task91_CT"
    written = write_msd_task(root, cases=5, seed=2)  # CT, spacing (2.5, 0.7, 0.8): resampled to itself
    dataset = MSDVolumeDataset(root, "all", spacing=[2.5, 0.7, 0.8], patches=False)
    train, _ = split_cases(list(written), 0.2, 0)
    foreground = np.concatenate([written[c]["image"][written[c]["label"] > 0] for c in train]).astype(np.float64)
    lo, hi = np.percentile(foreground, [0.5, 99.5])
    mean, std = foreground.mean(), foreground.std()  # nnU-Net: statistics of the unclipped foreground voxels
    stats = dataset.intensity_stats[0]
    np.testing.assert_allclose([stats["lo"], stats["hi"], stats["mean"], stats["std"]], [lo, hi, mean, std], 1e-9)
    for index, case in enumerate(dataset.cases):
        expected = (np.clip(display(written[case]["image"]), lo, hi) - mean) / std
        np.testing.assert_allclose(dataset[index]["image"][0].numpy(), expected, atol=1e-4)
        np.testing.assert_array_equal(dataset[index]["mask"].numpy(), display(written[case]["label"]))


def test_mri_is_z_scored_per_volume_over_the_nonzero_mask_or_all_voxels(tmp_path):
    root = tmp_path / "Task92_MR"
    written = write_msd_task(root, cases=3, modality="T2", seed=3)  # zeros outside a central block
    nonzero = MSDVolumeDataset(root, "all", spacing=[2.5, 0.7, 0.8], patches=False)
    every = MSDVolumeDataset(root, "all", spacing=[2.5, 0.7, 0.8], patches=False, zscore_mask="all")
    assert nonzero.intensity_stats == [None]
    for index, case in enumerate(nonzero.cases):
        volume = display(written[case]["image"]).astype(np.float64)
        inside = volume != 0
        expected = np.where(inside, (volume - volume[inside].mean()) / volume[inside].std(), 0.0)
        np.testing.assert_allclose(nonzero[index]["image"][0].numpy(), expected, atol=1e-4)
        expected_all = (volume - volume.mean()) / volume.std()
        np.testing.assert_allclose(every[index]["image"][0].numpy(), expected_all, atol=1e-4)


def test_four_modalities_come_out_as_channels_in_dataset_json_order(tmp_path):
    root = tmp_path / "Task01_Brain"
    names = ["FLAIR", "T1w", "t1gd", "T2w"]
    written = write_msd_task(root, cases=2, modality=names, seed=4)
    meta = json.loads((root / "dataset.json").read_text())
    assert [meta["modality"][str(i)] for i in range(4)] == names
    dataset = MSDVolumeDataset(root, "all", spacing=[2.5, 0.7, 0.8], patches=False, zscore_mask="all")
    item = dataset[1]
    assert item["image"].shape == (4, 6, 24, 20) and item["name"] == item["case"] == dataset.cases[1]
    for channel in range(4):
        volume = display(written[dataset.cases[1]]["image"][..., channel]).astype(np.float64)
        np.testing.assert_allclose(item["image"][channel].numpy(), (volume - volume.mean()) / volume.std(), atol=1e-4)
    chosen = MSDVolumeDataset(root, "all", spacing=[2.5, 0.7, 0.8], patches=False, zscore_mask="all", modalities=[2, 0])
    torch.testing.assert_close(chosen[1]["image"], item["image"][[2, 0]])


# --- patches ---------------------------------------------------------------------------------------------------
def test_foreground_oversampling_centres_about_a_third_of_the_patches(spleen):
    root, _ = spleen
    dataset = MSDVolumeDataset(root, "train", patch_size=[8, 12, 12], samples_per_epoch=40)
    assert len(dataset) == 40 and len(dataset.cases) == 5
    rng, draws, centred, holding = np.random.default_rng(123), 600, 0, 0
    for i in range(draws):
        case, origin, forced = dataset.draw_patch(i, rng)
        label = np.asarray(dataset._array(case, "label"))
        window = crop_padded(label, origin, dataset.patch_size, 0)
        centred += forced
        holding += forced and bool(window.any())
    assert centred == holding  # every centred patch holds foreground
    assert 140 <= centred <= 260  # Binomial(600, 1/3): mean 200, sd 11.5; the seed makes it one fixed number
    never = MSDVolumeDataset(root, "train", patch_size=[8, 12, 12], oversample_foreground=0.0)
    assert not any(never.draw_patch(i, rng)[2] for i in range(50))
    locations = np.array([[1, 2, 3, 4], [2, 9, 9, 9]], dtype=np.int32)
    origin, forced = patch_origin((20, 20, 20), (4, 6, 6), np.random.default_rng(0), locations)
    assert forced and origin in {(0, 0, 1), (7, 6, 6)}  # the voxel sits at patch // 2 (clipped at the border)


def test_patches_are_padded_with_zero_and_ignore_index_where_the_volume_is_smaller():
    rng = np.random.default_rng(0)
    for _ in range(20):
        origin, _ = patch_origin((4, 10, 10), (8, 6, 10), rng)
        assert origin[0] == -2 and 0 <= origin[1] <= 4 and origin[2] == 0
    label = np.ones((4, 10, 10), dtype=np.uint8)
    window = crop_padded(label, (-2, 0, 0), (8, 6, 10), 255, np.int64)
    assert window.dtype == np.int64 and (window[:2] == 255).all() and (window[6:] == 255).all()
    assert (window[2:6] == 1).all()
    image = crop_padded(np.full((1, 4, 10, 10), 3.0, np.float32), (-2, 0, 0), (8, 6, 10), 0.0)
    assert image.shape == (1, 8, 6, 10) and (image[:, :2] == 0).all() and (image[:, 2:6] == 3).all()
    volumes = [{"image": torch.ones(2, *size), "mask": torch.ones(size, dtype=torch.int64), "case": str(size)}
               for size in [(3, 4, 5), (4, 2, 5)]]  # fmt: skip
    batch = PadCollate(255)(volumes)  # whole volumes of different sizes, padded along D, H and W
    assert batch["image"].shape == (2, 2, 4, 4, 5) and batch["size"].tolist() == [[3, 4, 5], [4, 2, 5]]
    assert batch["image"][0, :, 3].abs().sum() == 0 and (batch["mask"][0, 3] == 255).all()
    assert (batch["mask"][1, :, 2:] == 255).all() and (batch["mask"][1, :, :2] == 1).all()


def test_training_items_are_patches_seeded_per_item(spleen):
    root, _ = spleen
    dataset = MSDVolumeDataset(root, "train", transform=VolumeAugment(), patch_size=[16, 32, 32])
    with seeded_rngs(7):
        first = dataset[2]
    with seeded_rngs(7):
        again = dataset[2]
    assert first["image"].shape == (1, 16, 32, 32) and first["image"].dtype == torch.float32
    assert first["mask"].shape == (16, 32, 32) and first["mask"].dtype == torch.int64
    assert first["spacing"].dtype == torch.float64 and first["case"] == dataset.cases[2]
    assert first["name"].startswith(f"{dataset.cases[2]}_patch")
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["mask"], again["mask"])
    assert set(first["mask"].unique().tolist()) <= {0, 1, 255}
    batch = PadCollate(255)([first, again])
    assert batch["image"].shape == (2, 1, 16, 32, 32) and batch["mask"].shape == (2, 16, 32, 32)


def test_patch_larger_than_every_training_volume_is_refused(spleen):
    root, _ = spleen
    with pytest.raises(ConfigError, match=r"patch_size=\[64, 32, 32\] is larger than every train volume"):
        MSDVolumeDataset(root, "train", patch_size=[64, 32, 32])
    with pytest.raises(ConfigError, match=r"data.dataset.patch_size=\[16, 32\]"):
        MSDVolumeDataset(root, "train", patch_size=[16, 32])


# --- augmentation ----------------------------------------------------------------------------------------------
def sample_volume(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    mask = torch.from_numpy(rng.integers(0, 3, (6, 8, 10))).long()
    mask[0, 0, :3] = 255
    return {"image": torch.from_numpy(rng.normal(size=(2, 6, 8, 10)).astype(np.float32)), "mask": mask, "name": "x"}


def test_flips_are_exact():
    sample = sample_volume()
    flipped = VolumeAugment(**{**NO_AUGMENT, "p_flip": 1.0})(sample, rng=np.random.default_rng(0))
    assert torch.equal(flipped["image"], sample["image"].flip([1, 2, 3]))
    assert torch.equal(flipped["mask"], sample["mask"].flip([0, 1, 2])) and flipped["name"] == "x"
    only_w = VolumeAugment(**{**NO_AUGMENT, "p_flip": 1.0, "flip_axes": [2]})(sample, rng=np.random.default_rng(0))
    assert torch.equal(only_w["image"], sample["image"].flip(3))
    unchanged = VolumeAugment(**NO_AUGMENT)(sample, rng=np.random.default_rng(0))
    assert torch.equal(unchanged["image"], sample["image"]) and torch.equal(unchanged["mask"], sample["mask"])


def test_rotation_and_scaling_keep_label_values_and_are_reproducible_by_seed():
    sample = sample_volume(1)
    augment = VolumeAugment(p_rotation=1.0, p_scale=1.0, p_noise=1.0, p_brightness=1.0, p_contrast=1.0, p_gamma=1.0)
    outputs = [augment(sample, rng=np.random.default_rng(s)) for s in (5, 5, 6)]
    for out in outputs:
        assert out["image"].shape == (2, 6, 8, 10) and out["mask"].shape == (6, 8, 10)
        assert set(out["mask"].unique().tolist()) <= {0, 1, 2, 255} and torch.isfinite(out["image"]).all()
    assert torch.equal(outputs[0]["image"], outputs[1]["image"]) and torch.equal(outputs[0]["mask"], outputs[1]["mask"])
    assert not torch.equal(outputs[0]["image"], outputs[2]["image"])
    with seeded_rngs(11):
        a = augment(sample)
    with seeded_rngs(11):
        b = augment(sample)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    # The region a drawn affine reads: the patch plus one voxel of slack per side, more where it turns or zooms out.
    turn = VolumeAugment(**{**NO_AUGMENT, "p_rotation": 1.0, "rotation_degrees": [90, 0, 0]})
    matrix = turn._affine(np.random.default_rng(0))
    assert turn.region_size(np.eye(3), (6, 8, 10)) == (8, 10, 12)
    size = turn.region_size(matrix, (6, 8, 10))
    assert size[0] == 8 and size[1] >= 10 and size[2] >= 12  # rotating about D needs no more slices
    assert turn.region_size(1.4 * np.eye(3), (6, 8, 10)) == (10, 14, 16)


# --- synthetic tasks, cache, errors ----------------------------------------------------------------------------
def test_synthetic_tasks_are_deterministic_and_read_by_the_dataset(tmp_path, spleen):
    root, written = spleen
    again = write_task(tmp_path / "again", "spleen", cases=2, seed=0)
    assert np.array_equal(again["spleen_000"]["image"], written["spleen_000"]["image"])
    assert written["spleen_000"]["image"].dtype == np.int16 and len(set(v["spacing"] for v in written.values())) > 1
    assert MSDVolumeDataset(root, "val", patches=False).CLASS_NAMES == ["background", "spleen"]
    brats = write_task(tmp_path / "brats", "brats", cases=3, seed=1)
    for volume in brats.values():  # nested: whole tumour ⊃ tumour core ⊃ enhancing, every class present
        label = volume["label"]
        assert volume["image"].shape == (*label.shape, 4) and set(np.unique(label)) == {0, 1, 2, 3}
        assert (volume["image"][label > 0] > 0).all() and (volume["image"][..., 0] == 0).any()
    augment = VolumeAugment()
    dataset = MSDVolumeDataset(tmp_path / "brats", "all", augment, patch_size=[8, 16, 16], patches=True)
    with seeded_rngs(0):
        item = dataset[0]
    assert item["image"].shape == (4, 8, 16, 16) and dataset.CLASS_NAMES[3] == "enhancing tumour"
    main(["--task", "hippocampus", "--out", str(tmp_path / "hippo"), "--cases", "2"])
    hippo = MSDVolumeDataset(tmp_path / "hippo", "all", patches=False)
    assert len(hippo) == 2 and set(hippo[0]["mask"].unique().tolist()) <= {0, 1, 2} and hippo.intensity_stats == [None]
    assert SyntheticVolumes("hippocampus", 2, 0).ensure(tmp_path / "hippo") == tmp_path / "hippo"
    with pytest.raises(ConfigError, match="other parameters"):
        SyntheticVolumes("hippocampus", 3, 0).ensure(tmp_path / "hippo")
    with pytest.raises(ConfigError, match="not a generated synthetic 3D task"):
        SyntheticVolumes("spleen").ensure(tmp_path / "brats")


def test_the_cache_is_reused_and_a_cut_short_file_is_rebuilt(spleen, tmp_path, monkeypatch):
    root, _ = spleen
    cache = tmp_path / "cache"
    first = MSDVolumeDataset(root, "val", patches=False, cache_dir=cache)
    files = sorted(cache.rglob("*.npy"))
    assert len(files) == 4 and len(list(cache.rglob("ct_stats-*.json"))) == 1
    expected = first[0]["image"].clone()
    vp._STATS_MEMO.clear()
    monkeypatch.setattr(vp, "preprocess_case", lambda *a, **k: pytest.fail("a cached case was preprocessed again"))
    assert torch.equal(MSDVolumeDataset(root, "val", patches=False, cache_dir=cache)[0]["image"], expected)
    monkeypatch.undo()
    image = next(p for p in files if p.name.endswith(".image.npy"))
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    again = MSDVolumeDataset(root, "val", patches=False, cache_dir=cache)
    assert torch.equal(again[0]["image"], expected) and np.load(image).ndim == 4 and not list(cache.rglob("*.tmp"))
    with pytest.raises(ConfigError, match="inside the dataset folder"):
        MSDVolumeDataset(root, "val", cache_dir=root / "cache")


def test_clear_errors_for_missing_dataset_json_and_undeclared_labels(tmp_path):
    root = tmp_path / "Task93_Bad"
    written = write_msd_task(root, cases=3, seed=5)
    label = written["case_001"]["label"].copy()
    label[1, 1, 1] = 5
    save_nifti(root / "labelsTr" / "case_001.nii.gz", label, AFFINE)
    with pytest.raises(DatasetFormatError, match=r"case_001\.nii\.gz holds label values \[5\]"):
        MSDVolumeDataset(root, "all", patches=False)
    (root / "dataset.json").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"there is no .*dataset\.json"):
        MSDVolumeDataset(root, "all")
    with pytest.raises(ConfigError, match="no labels"):
        MSDVolumeDataset(root, "test")


def test_msd3d_config_generates_the_synthetic_task_and_yields_5d_batches(make_cfg, tmp_path):
    cfg = make_cfg(["data=msd3d", f"data.root={tmp_path / 'Synthetic3D_Spleen'}", "data.generator.cases=5",
                    f"data.dataset.cache_dir={tmp_path / 'cache'}"])  # fmt: skip
    assert cfg.data.batch_size == 2 and cfg.data.normalize_on_device is False
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.verify()  # generates the tree (data.generator), builds train and val
    assert (tmp_path / "Synthetic3D_Spleen" / "dataset.json").is_file()
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].shape == (2, 1, 16, 32, 32) and batch["mask"].shape == (2, 16, 32, 32)
    val = next(iter(datamodule.val_dataloader()))
    assert val["image"].dim() == 5 and val["mask"].shape == val["image"].shape[:1] + val["image"].shape[2:]
    assert val["case"] == [datamodule.datasets["val"].cases[0]] and val["index"].tolist() == [0]
