"""The official Cityscapes evaluation as documented: ``segloss.eval save_predictions=true``, then
``python -m segloss.cityscapes_eval`` (cityscapesscripts unchanged, iIoU pass included) on the embedded
synthetic_city, every class compared with segloss's own numbers; the test-split export; the wrapper's errors."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from segloss import cityscapes_eval
from segloss.data.cityscapes_labels import CLASS_NAMES, LABEL_IDS, label_to_train_lut, train_to_label_lut
from segloss.data.synthetic import SyntheticCity
from segloss.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from segloss.errors import ConfigError
from segloss.eval import evaluate
from segloss.utils.config import PROJECT_ROOT
from tests.conftest import compose_config
from tests.helpers.cityscapes import OFFSET, STEP, eval_overrides, write_encoded_tree

pytest.importorskip("cityscapesscripts")

TINY_CITY = [
    "data.generator.num_train=2",
    "data.generator.num_val=6",
    "data.generator.height=64",
    "data.generator.width=128",
    "data.num_workers=0",
    "data.val_batch_size=2",
    "data.persistent_workers=false",
    "model=unet",
    "model.net._target_=tests.test_cityscapes_eval.MemoryNet",
    "trainer=cpu",
]
# The evaluated classes with instances and their average instance size in Cityscapes (pixels of a 2048×1024 frame),
# the iIoU's weights: the values of cityscapesscripts' evalPixelLevelSemanticLabeling.args.avgClassSize.
AVG_CLASS_SIZE = {
    "person": 3462.4756337644, "rider": 3930.4788056518, "car": 12794.0202738185, "truck": 27855.1264367816,
    "bus": 35732.1511111111, "train": 67583.7075812274, "motorcycle": 6298.7200839748, "bicycle": 4672.3249222261,
}  # fmt: skip


# The val frames of the fixture's synthetic_city: (uint8 3×H×W image, noisy trainIds H×W), read by MemoryNet.
FRAMES: list[tuple[torch.Tensor, torch.Tensor]] = []


class MemoryNet(nn.Module):
    """Recognises each val frame of :data:`FRAMES` and answers its ground truth with 20 % of the pixels (and every
    ignored one) replaced by random classes: imperfect predictions over every class, instances included."""

    def __init__(self, num_classes: int = 19, **_ignored) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.sharpness = nn.Parameter(torch.tensor(10.0))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
        answers = []
        for x in (image.float() * std + mean) * 255:
            errors = [float((x - frame.float()).abs().mean()) for frame, _ in FRAMES]
            assert min(errors) < 1, "not a frame of the fixture"
            answers.append(FRAMES[int(np.argmin(errors))][1])
        one_hot = nn.functional.one_hot(torch.stack(answers), self.num_classes).permute(0, 3, 1, 2)
        return one_hot.float() * self.sharpness


def remember_val_frames(root: Path, seed: int = 0) -> None:
    rng, lut = np.random.default_rng(seed), label_to_train_lut()
    FRAMES.clear()
    for image in sorted((root / "leftImg8bit" / "val").glob("*/*_leftImg8bit.png")):
        label = root / "gtFine" / "val" / image.parent.name / image.name.replace("leftImg8bit", "gtFine_labelIds")
        train_ids = lut[np.asarray(Image.open(label))].astype(np.int64)
        noise = (train_ids == 255) | (rng.random(train_ids.shape) < 0.2)
        noisy = np.where(noise, rng.integers(0, 19, train_ids.shape), train_ids)
        FRAMES.append((torch.from_numpy(np.array(Image.open(image))).permute(2, 0, 1), torch.from_numpy(noisy)))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A checkpoint evaluated on a tiny synthetic_city with ``save_predictions=true``, then the wrapper run as
    documented on its predictions: ``(dataset root, segloss results, official results, run folder)``."""
    tmp = tmp_path_factory.mktemp("official")
    base = [*TINY_CITY, f"paths.data_dir={tmp / 'data'}"]
    root = tmp / "data" / "synthetic_city"
    SyntheticCity(num_train=2, num_val=6, height=64, width=128).ensure(root)
    remember_val_frames(root)
    torch.save({"state_dict": {"net.sharpness": torch.tensor(10.0)}}, tmp / "memory.ckpt")
    run = tmp / "run"
    evaluate(compose_config("eval", [*base, f"ckpt_path={tmp / 'memory.ckpt'}", "save_predictions=true"], run))
    ours = json.loads((run / "results_val.json").read_text())
    command = [sys.executable, "-m", "segloss.cityscapes_eval", str(run / "predictions" / "val"), f"--dataset={root}"]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "official mIoU" in proc.stdout.splitlines()[-1]
    official = json.loads((run / "predictions" / "resultPixelLevelSemanticLabeling.json").read_text())
    return root, ours, official, run


def test_every_class_iou_equals_the_official_evaluation(evaluated):
    _, ours, official, _ = evaluated
    assert ours["class_names"] == list(CLASS_NAMES)
    present = 0
    for name, iou in zip(CLASS_NAMES, ours["IoU"], strict=True):
        theirs = official["classScores"][name]
        if iou is None:  # NaN: the class is neither in the ground truth nor predicted
            assert math.isnan(theirs), name
        else:
            assert iou == pytest.approx(theirs, abs=1e-6), name
            present += 0.2 < iou < 1
    assert present == 9  # the 9 classes of the scenes, imperfectly predicted; the 10 others are false positives only
    assert 0.3 < official["classScores"]["person"] < 1 and 0.3 < official["classScores"]["car"] < 1
    assert ours["mIoU"] == pytest.approx(official["averageScoreClasses"], abs=1e-6)
    # The evaluator's confusion matrix, restricted to the 19 evaluated labelIds, is ours.
    ids = [LABEL_IDS[name] for name in CLASS_NAMES]
    np.testing.assert_array_equal(np.asarray(official["confMatrix"])[np.ix_(ids, ids)], ours["confmat"])


def test_every_class_iiou_follows_the_generated_instances(evaluated):
    """iIoU per class from the instanceIds files, the prediction files and segloss's confusion matrix (Cordts et
    al.: TP and FN of each instance weighted by the class's average instance size over the instance's size)."""
    root, ours, official, run = evaluated
    stats = {name: [0.0, 0.0] for name in AVG_CLASS_SIZE}  # weighted TP, FN
    instances = 0
    for path in sorted((root / "gtFine" / "val").glob("*/*_gtFine_instanceIds.png")):
        ids = np.asarray(Image.open(path)).astype(np.int64)
        labels = np.asarray(Image.open(str(path).replace("instanceIds", "labelIds")))
        stem = path.name[: -len("_gtFine_instanceIds.png")]
        pred = np.asarray(Image.open(run / "predictions" / "val" / f"{stem}.png"))
        np.testing.assert_array_equal(np.where(ids >= 1000, ids // 1000, ids), labels)
        for instance in np.unique(ids[ids >= 1000]):
            label, mask = int(instance // 1000), ids == instance
            name = {LABEL_IDS[n]: n for n in AVG_CLASS_SIZE}[label]
            weight = AVG_CLASS_SIZE[name] / mask.sum()
            tp = np.count_nonzero(pred[mask] == label)
            stats[name][0] += tp * weight
            stats[name][1] += (mask.sum() - tp) * weight
            instances += 1
    assert instances >= 6
    confmat = np.asarray(ours["confmat"])
    for i, name in enumerate(CLASS_NAMES):
        theirs = official["classInstScores"][name]
        if name not in stats:  # stuff classes have no instances
            assert math.isnan(theirs), name
            continue
        false_positives = confmat[:, i].sum() - confmat[i, i]
        tp, fn = stats[name]
        assert theirs == pytest.approx(tp / (tp + fn + false_positives), abs=1e-9), name
    assert 0.5 < official["classInstScores"]["person"] < 1 and 0.5 < official["classInstScores"]["car"] < 1
    assert official["classInstScores"]["bus"] == 0  # no bus in the ground truth: predicted bus pixels are all wrong
    assert official["averageScoreInstClasses"] == pytest.approx(
        np.mean([official["classInstScores"][n] for n in AVG_CLASS_SIZE]), abs=1e-12
    )


@pytest.mark.parametrize("labels", ["withheld", "dummy"])
def test_the_test_split_exports_every_frame_in_one_command(make_cfg, tmp_path, capsys, labels):
    """``split=test save_predictions=true`` alone: with no gtFine/test, or the dataset's dummy one (all
    "unlabeled"), every frame gets its result file and no metric is computed."""
    root = tmp_path / "cityscapes"
    write_encoded_tree(root, {"berlin": 3, "bonn": 2}, split="test")
    if labels == "withheld":
        shutil.rmtree(root / "gtFine")
    for path in (root / "gtFine" / "test").rglob("*.png"):
        Image.fromarray(np.zeros((24, 40), np.uint8)).save(path)
    ckpt = tmp_path / "oracle.ckpt"
    torch.save({"state_dict": {"net.sharpness": torch.tensor(10.0)}}, ckpt)
    overrides = eval_overrides(root, ckpt, tmp_path, "split=test")  # as `make eval … ARGS="split=test …"` gives them
    cfg = make_cfg([o for o in overrides if not o.startswith("predictions_dir=")], "eval")  # the default folder
    out = Path(cfg.paths.output_dir)
    results = evaluate(cfg)
    written = sorted(p.relative_to(out) for p in out.rglob("*.png"))
    assert [str(p) for p in written] == [f"predictions/test/{c}_{i:06d}_000019.png" for c, n in
                                         (("berlin", 3), ("bonn", 2)) for i in range(n)]  # fmt: skip
    for path in written:  # each frame's own prediction: the trainIds its image encodes, as labelIds
        frame = root / "leftImg8bit" / "test" / path.stem.split("_")[0] / f"{path.stem}_leftImg8bit.png"
        encoded = (np.asarray(Image.open(frame))[..., 0].astype(int) - OFFSET) // STEP
        with Image.open(out / path) as image:
            assert image.mode == "L"
            np.testing.assert_array_equal(np.asarray(image), train_to_label_lut()[encoded])
    assert results["frames"] == 5 and math.isnan(float(results["mIoU"])) and int(results["confmat"].sum()) == 0
    assert "no metric is computed" in " ".join(capsys.readouterr().out.split())


def test_synthetic_city_has_no_test_split(make_cfg, tmp_path):
    cfg = make_cfg([*TINY_CITY, f"paths.data_dir={tmp_path}", f"ckpt_path={tmp_path / 'x.ckpt'}", "split=test"], "eval")
    torch.save({"state_dict": {"net.sharpness": torch.tensor(10.0)}}, tmp_path / "x.ckpt")
    with pytest.raises(ConfigError, match=r"no test split \(data.splits.test is null\)"):
        evaluate(cfg)


HAD_IN1D = hasattr(np, "in1d")  # False from numpy 2.4 on


def test_in1d_is_provided_only_while_numpy_lacks_it():
    with cityscapes_eval._in1d_shim():
        found = np.in1d(np.array([[1, 2], [3, 4]]), [2, 3])
        np.testing.assert_array_equal(found, [False, True, True, False])  # flat, as in1d always was
        np.testing.assert_array_equal(np.in1d([1, 2], [2], invert=True), [True, False])
    assert hasattr(np, "in1d") == HAD_IN1D


def test_clear_one_line_errors(evaluated, tmp_path, monkeypatch):
    root, _, _, run = evaluated
    predictions = run / "predictions" / "val"
    for variable in ("CITYSCAPES_DATASET", "CITYSCAPES_RESULTS", "CITYSCAPES_EXPORT_DIR"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(ConfigError, match=r"predictions folder .*nowhere does not exist: write it with make eval"):
        cityscapes_eval.official_evaluation(tmp_path / "nowhere", root)
    with pytest.raises(ConfigError, match=r"no ground truth under .*expected gtFine/val/<city>/"):
        cityscapes_eval.official_evaluation(predictions, tmp_path)
    with pytest.raises(ConfigError, match=r"no --dataset ROOT .* set CITYSCAPES_DATASET"):
        cityscapes_eval.official_evaluation(predictions)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "dunmore_000000_000019.png").write_bytes((predictions / "dunmore_000000_000019.png").read_bytes())
    with pytest.raises(ConfigError, match="5 of 6 val frames have no prediction"):
        cityscapes_eval.official_evaluation(partial, root)
    old = tmp_path / "old_city"  # ground truth without instance ids (a synthetic_city of format 1)
    for path in (root / "gtFine" / "val").glob("*/*_labelIds.png"):
        (old / path.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
        (old / path.relative_to(root)).write_bytes(path.read_bytes())
    with pytest.raises(ConfigError, match=r"6 of 6 ground-truth frames .* no \*_gtFine_instanceIds.png"):
        cityscapes_eval.official_evaluation(predictions, old)
    wrong_size = tmp_path / "wrong_size"
    shutil.copytree(predictions, wrong_size)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(wrong_size / "dunmore_000000_000019.png")
    with pytest.raises(ConfigError, match=r"the official evaluation stopped \(see its ERROR line above\)"):
        cityscapes_eval.official_evaluation(wrong_size, root)  # its own check: the sizes differ
    assert hasattr(np, "in1d") == HAD_IN1D  # the shim is gone after a run that stopped, too
    monkeypatch.setattr(cityscapes_eval.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pip install cityscapesscripts"):
        cityscapes_eval.official_evaluation(predictions, root)


def test_environment_variables_stand_in_for_the_arguments(evaluated, tmp_path, monkeypatch):
    root, _, official, run = evaluated
    monkeypatch.setenv("CITYSCAPES_DATASET", str(root))
    monkeypatch.setenv("CITYSCAPES_RESULTS", str(run / "predictions" / "val"))
    monkeypatch.setenv("CITYSCAPES_EXPORT_DIR", str(tmp_path / "scores"))
    again = cityscapes_eval.official_evaluation()
    assert (tmp_path / "scores" / "resultPixelLevelSemanticLabeling.json").is_file()
    for key in ("classScores", "classInstScores"):
        assert again[key].keys() == official[key].keys()
        for name, value in again[key].items():
            assert value == official[key][name] or (math.isnan(value) and math.isnan(official[key][name])), name
