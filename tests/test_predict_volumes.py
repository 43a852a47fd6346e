"""``segloss.predict`` on NIfTI volumes (segloss.predict_volumes): a 3D net (data=msd3d, Gaussian sliding window on
the resampled, normalised volume) and a 2D slice net (data=msd, here region-trained on 4-channel BraTS-like volumes)
write ``<name>.nii.gz`` label maps on the input's grid with its affine; the maps equal the module's own predictions
on the datasets' preprocessing; nothing is overwritten, mixed folders and missing training data are named."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from segloss.build import build_module
from segloss.data import medical_preprocess as mp
from segloss.data.synthetic_volumes import write_task
from segloss.data.volume_preprocess import read_image_volume, resample_labels
from segloss.errors import ConfigError, UnreadableImagesError
from segloss.predict import predict
from segloss.predict_volumes import to_input_grid
from tests.conftest import compose_config

nib = pytest.importorskip("nibabel")

NET3D = ["experiment=demo_msd3d", "data.generator=null", "data.dataset.patch_size=[8,16,16]",
         "model.net.base_channels=4", "model.net.depth=2", "threads=1"]  # fmt: skip
REGIONS = ["experiment=dice_bce_brats_regions", "model.net.base_channels=4", "model.net.depth=2", "model.aux=null",
           "threads=1", "data.val_batch_size=5"]  # fmt: skip
SLICES = ["experiment=base_msd_unet", "model.net.base_channels=4", "model.net.depth=2", "model.aux=null",
          "threads=1"]  # fmt: skip


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tasks")
    write_task(root / "Task09_Spleen", "spleen", cases=4, seed=0)
    write_task(root / "Task01_BrainTumour", "brats", cases=4, seed=0)
    return root


def checkpoint(overrides: list[str], folder: Path) -> tuple:
    """A module of ``overrides`` with spread random weights and no biases (so its maps hold both background and
    foreground), saved."""
    torch.manual_seed(0)
    module = build_module(compose_config("predict", overrides, folder / "build"), with_optimizer=False).eval()
    with torch.no_grad():
        for name, param in module.net.named_parameters():
            param.zero_() if name.endswith("bias") else param.normal_(0, 0.5)
    ckpt = folder / "net.ckpt"
    torch.save({"state_dict": module.state_dict()}, ckpt)
    return module, ckpt


def run(overrides: list[str], ckpt: Path, input_dir: Path, output_dir: Path, *extra: str) -> dict:
    args = [*overrides, f"ckpt_path={ckpt}", f"input_dir={input_dir}", f"output_dir={output_dir}", "device=cpu",
            "trainer.precision=32-true", *extra]  # fmt: skip
    return predict(compose_config("predict", args, output_dir.parent / "run"))


def inputs(task: Path, folder: Path, cases: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for case in cases:
        shutil.copy(task / "imagesTr" / f"{case}.nii.gz", folder / f"{case}.nii.gz")
    return folder


def check_output(path: Path, source: Path, labels: set[int]) -> np.ndarray:
    out, src = nib.load(str(path)), nib.load(str(source))
    assert out.shape == src.shape[:3] and np.allclose(out.affine, src.affine)
    assert out.get_data_dtype() == np.uint8
    data = np.asarray(out.dataobj)
    assert set(np.unique(data).tolist()) <= labels
    return data


def test_to_input_grid_inverts_the_readers_orientation(tasks, tmp_path):
    label = tasks / "Task09_Spleen" / "labelsTr" / "spleen_000.nii.gz"
    img = nib.load(str(label))
    raw = np.asarray(img.dataobj)
    permuted = tmp_path / "permuted.nii"  # axes (z, x, y) and a flip: another orientation than the LPS files
    affine = img.affine[:, [2, 0, 1, 3]] @ np.diag([-1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] += img.affine[:3, 2] * (raw.shape[2] - 1)
    nib.save(nib.Nifti1Image(raw.transpose(2, 0, 1)[::-1].copy(), affine), str(permuted))
    for path in (label, permuted):
        reference = nib.load(str(path))
        display, _ = read_image_volume(path, ["CT"], [0])
        back = to_input_grid(display[0].astype(np.int64), reference)
        assert np.array_equal(back, np.asarray(reference.dataobj))


def test_a_3d_net_labels_nifti_volumes_on_their_grid(tasks, tmp_path):
    from segloss.data.volumes import MSDVolumeDataset

    task = tasks / "Task09_Spleen"
    overrides = [*NET3D, f"data.root={task}", f"paths.cache_dir={tmp_path / 'cache'}"]
    module, ckpt = checkpoint(overrides, tmp_path)
    cases = ["spleen_000", "spleen_003"]
    source = inputs(task, tmp_path / "in", cases)
    (source / "broken.nii.gz").write_bytes(b"not a NIfTI file")
    with pytest.raises(UnreadableImagesError, match=r"broken\.nii\.gz") as err:
        run(overrides, ckpt, source, tmp_path / "out")
    assert sorted(p.name for p in err.value.written) == [f"{c}.nii.gz" for c in cases]
    (source / "broken.nii.gz").unlink()

    cfg = compose_config("train", [*overrides], tmp_path / "ref")
    dataset = MSDVolumeDataset(task, split="all", patches=False, patch_size=[8, 16, 16], cache_dir=None,
                               spacing=cfg.data.dataset.spacing)  # fmt: skip
    for case in cases:
        data = check_output(tmp_path / "out" / f"{case}.nii.gz", source / f"{case}.nii.gz", {0, 1})
        item = dataset[dataset.cases.index(case)]  # the dataset's own preprocessing of the case
        with torch.no_grad():
            classes = module.inference.classes(module, item["image"][None], module.to_classes)[0].numpy()
        raw_shape = mp.to_display(np.zeros(nib.load(str(source / f"{case}.nii.gz")).shape)).shape
        assert classes.shape != raw_shape  # resampled: the map went through the target spacing and back
        expected = to_input_grid(resample_labels(classes, raw_shape), nib.load(str(source / f"{case}.nii.gz")))
        assert np.array_equal(data, expected)
        assert 0 < data.mean() < 1  # both classes predicted: the comparison is not between two blank maps

    with pytest.raises(ConfigError, match="already exists"):
        run(overrides, ckpt, source, tmp_path / "out")
    before = (tmp_path / "out" / "spleen_000.nii.gz").stat().st_mtime_ns
    run(overrides, ckpt, source, tmp_path / "out", "overwrite=true")
    assert (tmp_path / "out" / "spleen_000.nii.gz").stat().st_mtime_ns != before


def slice_predictions(module, dataset, transform, case: str) -> np.ndarray:
    indices = [i for i, (c, _) in enumerate(dataset.samples) if c == case]
    with torch.no_grad():
        images = torch.stack([transform(dataset[i])["image"] for i in indices])
        return module.to_classes(module(images)).numpy()


def test_a_region_trained_slice_net_labels_4d_volumes_slice_by_slice(tasks, tmp_path):
    from segloss.data.medical import MSDSliceDataset
    from segloss.data.transforms import eval_transform

    task = tasks / "Task01_BrainTumour"
    overrides = [*REGIONS, f"paths.data_dir={tasks}", f"paths.cache_dir={tmp_path / 'cache'}"]
    module, ckpt = checkpoint(overrides, tmp_path)
    source = inputs(task, tmp_path / "in", ["braintumour_001"])
    run(overrides, ckpt, source, tmp_path / "out")
    data = check_output(tmp_path / "out" / "braintumour_001.nii.gz", source / "braintumour_001.nii.gz", {0, 1, 2, 3})
    dataset = MSDSliceDataset(task, split="all", modalities=[0, 2, 3], cache_dir=None)
    stacked = slice_predictions(module, dataset, eval_transform(mean=[0.5] * 3, std=[0.125] * 3), "braintumour_001")
    assert np.array_equal(data, to_input_grid(stacked, nib.load(str(source / "braintumour_001.nii.gz"))))
    assert len(np.unique(data)) > 1


def test_a_ct_slice_net_normalises_with_the_training_statistics(tasks, tmp_path):
    from segloss.data.medical import MSDSliceDataset
    from segloss.data.transforms import eval_transform

    task = tasks / "Task09_Spleen"
    overrides = [*SLICES, f"data.root={task}", f"paths.cache_dir={tmp_path / 'cache'}"]
    module, ckpt = checkpoint(overrides, tmp_path)
    source = inputs(task, tmp_path / "in", ["spleen_002"])
    run(overrides, ckpt, source, tmp_path / "out")
    data = check_output(tmp_path / "out" / "spleen_002.nii.gz", source / "spleen_002.nii.gz", {0, 1})
    dataset = MSDSliceDataset(task, split="all", cache_dir=None)  # CT statistics of the train split
    stacked = slice_predictions(module, dataset, eval_transform(mean=[0.5] * 3, std=[0.125] * 3), "spleen_002")
    assert np.array_equal(data, to_input_grid(stacked, nib.load(str(source / "spleen_002.nii.gz"))))


def test_missing_training_data_and_mixed_folders_are_named(tasks, tmp_path):
    task = tasks / "Task09_Spleen"
    missing = [*SLICES, f"data.root={tmp_path / 'nowhere'}", f"paths.cache_dir={tmp_path / 'cache'}"]
    source = inputs(task, tmp_path / "in", ["spleen_000"])
    with pytest.raises(ConfigError, match=r"labelling NIfTI volumes needs the model's training data at data.root="):
        run(missing, tmp_path / "unused.ckpt", source, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (source / "photo.png").write_bytes(b"")
    with pytest.raises(ConfigError, match="mixes NIfTI volumes"):
        run(missing, tmp_path / "unused.ckpt", source, tmp_path / "out")
    (source / "photo.png").unlink()
    with pytest.raises(ConfigError, match="NIfTI input needs a model trained on an MSD data config"):
        run(["model.net.base_channels=4"], tmp_path / "unused.ckpt", source, tmp_path / "out")
