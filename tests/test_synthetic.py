import json

import numpy as np
import pytest
import torch
from PIL import Image

from segloss.data import CityscapesDataset, SyntheticCity
from segloss.data.cityscapes_labels import CLASS_NAMES, LABEL_IDS
from segloss.errors import ConfigError
from segloss.metrics import ConfusionScores

PARAMS = SyntheticCity(num_train=60, num_val=20)  # the default image size, fewer images


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "synthetic_city"
    return PARAMS.ensure(root)


def _masks(root, split):
    return torch.stack([s["mask"] for s in CityscapesDataset(root, split)])


def test_written_in_cityscapes_layout_with_marker(city):
    assert len(list((city / "leftImg8bit/train").glob("*/*_leftImg8bit.png"))) == 60
    assert len(list((city / "gtFine/val").glob("*/*_gtFine_labelIds.png"))) == 20
    assert len({p.parent.name for p in (city / "leftImg8bit/train").glob("*/*.png")}) == 3  # several cities
    assert json.loads((city / "synthetic_city.json").read_text())["num_train"] == 60
    sample = CityscapesDataset(city, "train")[0]
    assert sample["image"].shape == (3, 128, 256)


def test_deterministic_in_seed(tmp_path):
    a = SyntheticCity(num_train=3, num_val=1, height=64, width=128, seed=5).ensure(tmp_path / "a")
    b = SyntheticCity(num_train=3, num_val=1, height=64, width=128, seed=5).ensure(tmp_path / "b")
    c = SyntheticCity(num_train=3, num_val=1, height=64, width=128, seed=6).ensure(tmp_path / "c")
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 12  # image, labelIds, instanceIds of 4 frames
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)


def test_the_files_are_the_same_for_any_number_of_generating_processes(tmp_path, monkeypatch):
    from segloss.data import synthetic

    params = SyntheticCity(num_train=66, num_val=2, height=16, width=32, seed=3)
    assert synthetic.generation_workers(68) >= 1 and synthetic.generation_workers(10) == 1
    monkeypatch.setattr(synthetic, "generation_workers", lambda images: 2)
    parallel = params.ensure(tmp_path / "parallel")
    monkeypatch.setattr(synthetic, "generation_workers", lambda images: 1)
    serial = params.ensure(tmp_path / "serial")
    files = sorted(p.relative_to(serial) for p in serial.rglob("*") if p.is_file())
    assert len(files) == 3 * 68 + 1
    assert files == sorted(p.relative_to(parallel) for p in parallel.rglob("*") if p.is_file())
    assert all((serial / f).read_bytes() == (parallel / f).read_bytes() for f in files)


def test_instance_ids_follow_the_cityscapes_convention(city):
    """``labelId * 1000 + k`` on each pedestrian and car (what the official iIoU reads), the labelId elsewhere."""
    counts = []
    for path in sorted((city / "gtFine").glob("*/*/*_gtFine_instanceIds.png")):
        with Image.open(path) as image:
            assert image.mode.startswith("I")  # 16-bit, as Cityscapes' own
            ids = np.asarray(image).astype(np.int64)
        labels = np.asarray(Image.open(str(path).replace("instanceIds", "labelIds"))).astype(np.int64)
        objects = ids >= 1000
        np.testing.assert_array_equal(ids[~objects], labels[~objects])
        np.testing.assert_array_equal(ids[objects] // 1000, labels[objects])
        assert set(np.unique(labels[objects]).tolist()) <= {LABEL_IDS["person"], LABEL_IDS["car"]}
        assert not np.isin(labels[~objects], [LABEL_IDS["person"], LABEL_IDS["car"]]).any()  # no object left out
        for label in (LABEL_IDS["person"], LABEL_IDS["car"]):
            ks = np.unique(ids[objects & (labels == label)]) - label * 1000
            assert (ks < 1000).all()
            counts.append(len(ks))
    assert len(counts) == 2 * 80 and sum(counts) > 150 and max(counts) >= 3  # several objects of a class per frame


def test_a_folder_made_before_instance_ids_gets_only_them_added(tmp_path):
    params = SyntheticCity(num_train=3, num_val=2, height=32, width=64, seed=1)
    root = params.ensure(tmp_path / "s")
    assert json.loads((root / "synthetic_city.json").read_text())["format"] == 2
    made = {p: p.read_bytes() for p in root.rglob("*.png")}
    marker = json.loads((root / "synthetic_city.json").read_text())
    del marker["format"]  # as written before the instance ids existed (format 1)
    (root / "synthetic_city.json").write_text(json.dumps(marker))
    for path in root.rglob("*_gtFine_instanceIds.png"):
        path.unlink()
    others = {p: p.stat().st_mtime_ns for p in root.rglob("*.png")}
    assert len(others) == 10
    assert params.ensure(root) == root
    assert {p: p.read_bytes() for p in root.rglob("*.png")} == made  # the same instance ids as a new folder's
    assert all(p.stat().st_mtime_ns == t for p, t in others.items())  # the other files untouched
    assert json.loads((root / "synthetic_city.json").read_text()) == {**marker, "format": 2}
    assert sorted(p.name for p in root.iterdir()) == ["gtFine", "leftImg8bit", "synthetic_city.json"]


def test_class_balance_has_rare_classes_and_ignore(city):
    masks = _masks(city, "train")
    counts = torch.bincount(masks[masks != 255], minlength=19).double()
    share = dict(zip(CLASS_NAMES, (counts / counts.sum()).tolist()))
    for name in ("road", "sidewalk", "building", "vegetation", "sky", "car"):
        assert share[name] > 0.02, (name, share[name])
    rare = [n for n in ("person", "pole", "traffic sign") if 0 < share[n] < 0.02]
    assert len(rare) >= 2, share
    assert 0 < (masks == 255).double().mean() < 0.15  # ego hood and static clutter are ignored


def test_poles_are_thin(city):
    pole = (_masks(city, "train") == CLASS_NAMES.index("pole")).numpy()
    runs = []
    for row in pole.reshape(-1, pole.shape[-1]):
        edges = np.flatnonzero(np.diff(np.concatenate([[0], row.astype(np.int8), [0]])))
        runs.extend(edges[1::2] - edges[0::2])
    runs = np.asarray(runs)
    assert len(runs) > 1000
    assert np.mean(runs <= 3) > 0.97  # wider runs only where two poles touch
    assert np.median(runs) <= 3


def test_colour_lookup_cannot_solve_it(city):
    """The best per-pixel colour → class table fitted on train scores far below a trained net on val."""
    bins = 16

    def codes(split):
        images = torch.stack([s["image"] for s in CityscapesDataset(city, split)]).long() * bins // 256
        return images[:, 0] * bins * bins + images[:, 1] * bins + images[:, 2]

    train_codes, train_masks = codes("train"), _masks(city, "train")
    keep = train_masks != 255
    table = torch.zeros(bins**3, 19, dtype=torch.long)
    table.index_put_(
        (train_codes[keep], train_masks[keep]), torch.ones(int(keep.sum()), dtype=torch.long), accumulate=True
    )
    lookup = table.argmax(1)
    metrics = ConfusionScores(19)
    metrics.update(lookup[codes("val")], _masks(city, "val"))
    miou = float(metrics.compute()["mIoU"])
    print(f"colour-lookup val mIoU {miou:.3f}")
    assert miou < 0.30, miou


def test_refuses_to_write_into_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="refusing to write"):
        SyntheticCity(num_train=1, num_val=1).ensure(tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "keep me"


def test_other_parameters_are_not_mistaken_for_it(tmp_path):
    SyntheticCity(num_train=2, num_val=1, height=32, width=64).ensure(tmp_path / "s")
    with pytest.raises(ConfigError, match="other parameters"):
        SyntheticCity(num_train=3, num_val=1, height=32, width=64).ensure(tmp_path / "s")
