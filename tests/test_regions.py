"""Regions (label map ⇄ multi-hot, nnU-Net's label-map rule) and the per-region metrics with BraTS conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from segloss.errors import ConfigError, LabelValueError
from segloss.metrics.regions import (
    CaseRegionDice,
    CaseRegionSurfaceDistance,
    RegionScores,
    region_counts,
    scores_from_counts,
)
from segloss.metrics.surface import surface_distances
from segloss.utils.regions import BRATS_REGIONS, Regions, regions_from_config

IGNORE = 255


def brats_label_map(shape, seed=0, ignore_fraction=0.1):
    """Nested BraTS-like labels: oedema (1) around a core of non-enhancing (2) and enhancing (3) tumour."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, shape, generator=g)
    return labels.masked_fill(torch.rand(shape, generator=g) < ignore_fraction, IGNORE)


# ---------------------------------------------------------------- the definition


def test_brats_regions_write_labels_1_2_3_in_order_and_are_nested():
    regions = Regions(BRATS_REGIONS, num_classes=4)
    assert regions.names == ("whole_tumour", "tumour_core", "enhancing_tumour")
    assert regions.labels == ((1, 2, 3), (2, 3), (3,))
    assert regions.write == (1, 2, 3)  # nnU-Net's regions_class_order for WT, TC, ET
    assert regions.nested and regions.round_trips and len(regions) == 3
    assert regions.as_dict() == BRATS_REGIONS


def test_a_config_node_keeps_its_order_and_single_ints_are_one_label_regions():
    node = OmegaConf.create({"regions": {"whole_tumour": [1, 2, 3], "tumour_core": [2, 3], "enhancing_tumour": 3}})
    regions = regions_from_config(node.regions, num_classes=4)
    assert regions.as_dict() == BRATS_REGIONS and regions_from_config(regions) is regions
    pairs = Regions([("a", [1]), ("b", [2])])
    assert pairs.write == (1, 2) and pairs.nested  # disjoint regions: one-vs-rest sigmoids


@pytest.mark.parametrize(
    ("definition", "kwargs", "message"),
    [
        ({}, {}, r"data.regions is empty"),
        ({"wt": [0, 1]}, {}, r"data.regions.wt=\[0, 1\] holds label 0, the background"),
        (
            {"wt": [1, 2, 5]},
            {"num_classes": 4},
            r"data.regions.wt=\[1, 2, 5\]: label\(s\) \[5\] are not in the label "
            r"space \[0, 4\) of data.num_classes=4",
        ),
        (
            {"et": [3], "wt": [1, 2, 3]},
            {},
            r"data.regions.et=\[3\] lies inside the regions after it.*larger regions "
            r"first",
        ),
        ({"tumour": [1, 2]}, {}, r"data.regions.tumour=\[1, 2\] has labels \[1, 2\] that no later region holds"),
        ({"a": [1, 2], "b": [2, 1]}, {}, r"regions 'a' and 'b' hold the same labels \[1, 2\]"),
        ({"a": [1, 1]}, {}, r"data.regions.a=\[1, 1\] lists a label twice"),
        ({"a": []}, {}, r"data.regions.a=\[\] must be a non-empty list"),
        ({"a": ["x"]}, {}, r"must hold integer labels only"),
        ({"a": [1]}, {"class_order": [2]}, r"data.regions.a=\[1\] cannot write label 2"),
        ({"a": [1]}, {"class_order": [1, 2]}, r"class_order=\[1, 2\] must give one integer label per region"),
    ],
)
def test_bad_definitions_are_config_errors_naming_data_regions(definition, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Regions(definition, **kwargs)


def test_partial_overlaps_are_allowed_with_a_class_order_and_said_not_to_be_nested():
    regions = Regions({"left": [1, 2], "right": [2, 3]}, class_order=[1, 3])
    assert not regions.nested and not regions.round_trips  # label 2 comes back as 3 (the last region that holds it)
    fires = torch.tensor([[[True, True, False]], [[False, True, True]]]).permute(1, 0, 2)  # N=1, R=2, 3 voxels
    assert regions.to_label_map(fires).tolist() == [[1, 3, 3]]


# ---------------------------------------------------------------- conversions


def test_to_multi_hot_marks_every_region_and_ignores_in_every_channel():
    regions = Regions(BRATS_REGIONS, num_classes=4)
    label_map = torch.tensor([[0, 1, 2, 3, IGNORE]])
    multi_hot = regions.to_multi_hot(label_map, IGNORE)
    assert multi_hot.dtype == torch.uint8 and multi_hot.shape == (1, 3, 5)
    assert multi_hot[0].tolist() == [
        [0, 1, 1, 1, IGNORE],  # whole tumour
        [0, 0, 1, 1, IGNORE],  # tumour core
        [0, 0, 0, 1, IGNORE],  # enhancing tumour
    ]
    wide = regions.to_multi_hot(torch.tensor([[0, 3, -100]]), ignore_index=-100)
    assert wide.dtype == torch.int64 and wide[0, :, 2].tolist() == [-100] * 3


def test_to_multi_hot_refuses_labels_outside_the_label_space():
    regions = Regions(BRATS_REGIONS, num_classes=4)
    with pytest.raises(LabelValueError, match=r"values \[4\] outside \[0, 4\).*BraTS's 4"):
        regions.to_multi_hot(torch.tensor([[0, 4, IGNORE]]), IGNORE)
    with pytest.raises(ValueError, match="integer labels"):
        regions.to_multi_hot(torch.zeros(1, 4), IGNORE)
    assert regions.to_multi_hot(torch.tensor([[4]]), IGNORE, check=False)[0, :, 0].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match=r"ignore_index=3 is a label of region\(s\) \['whole_tumour', 'tumour_core', "):
        regions.to_multi_hot(torch.tensor([[0, 1]]), ignore_index=3)


@pytest.mark.parametrize("shape", [(2, 6, 7), (2, 3, 4, 5)], ids=["2d", "3d"])
def test_label_map_to_multi_hot_to_perfect_predictions_gives_the_labels_back(shape):
    regions = Regions(BRATS_REGIONS, num_classes=4)
    label_map = brats_label_map(shape)
    multi_hot = regions.to_multi_hot(label_map, IGNORE)
    labelled = label_map != IGNORE
    inside = multi_hot == 1
    logits = torch.where(inside, 6.0, -6.0)
    for back in (
        regions.to_label_map(logits),
        regions.to_label_map(logits.sigmoid(), logits=False),
        regions.to_label_map(inside),  # bool masks as they are
    ):
        assert back.dtype == torch.int64 and back.shape == label_map.shape
        assert torch.equal(back[labelled], label_map[labelled])
    assert set(label_map[labelled].unique().tolist()) == {0, 1, 2, 3}


def test_the_last_firing_region_writes_its_label_and_the_threshold_is_strict():
    regions = Regions(BRATS_REGIONS)
    # voxels: none, WT, WT+TC, WT+TC+ET, ET alone, TC alone, WT+ET
    fires = torch.tensor([[0, 1, 1, 1, 0, 0, 1], [0, 0, 1, 1, 0, 1, 0], [0, 0, 0, 1, 1, 0, 1]], dtype=torch.bool)
    assert regions.to_label_map(fires[None]).tolist() == [[0, 1, 2, 3, 3, 2, 3]]
    probs = torch.tensor([[[0.5, 0.51]], [[0.2, 0.2]], [[0.2, 0.2]]]).permute(1, 0, 2)
    assert regions.to_label_map(probs, logits=False).tolist() == [[0, 1]]  # p = 0.5 does not fire (nnU-Net: > 0.5)
    assert regions.to_label_map(torch.logit(probs), threshold=0.3).tolist() == [[1, 1]]
    with pytest.raises(ValueError, match=r"R=3 \(whole_tumour, tumour_core, enhancing_tumour\)"):
        regions.to_label_map(torch.zeros(1, 2, 4))


# ---------------------------------------------------------------- metrics


def random_pair(shape, seed):
    g = torch.Generator().manual_seed(seed)
    preds = torch.rand(shape, generator=g) < 0.5
    target = (torch.rand(shape, generator=g) < 0.4).to(torch.uint8)
    return preds, target


def monai_dice(preds, target):
    from monai.metrics import compute_dice

    return compute_dice(preds.float(), target.float(), include_background=True, ignore_empty=False)


def test_split_scores_equal_monai_on_the_pooled_voxels():
    from monai.metrics import compute_iou

    preds, target = random_pair((4, 3, 5, 6), seed=1)
    metric = RegionScores(3, names=list(BRATS_REGIONS))
    metric.update(preds[:2], target[:2])
    metric.update(preds[2:], target[2:])
    result = metric.compute()
    pooled = lambda x: x.transpose(0, 1).reshape(1, 3, -1).float()  # noqa: E731 - every voxel of the split, one image
    torch.testing.assert_close(result["Dice"], monai_dice(pooled(preds), pooled(target))[0].float())
    iou = compute_iou(pooled(preds), pooled(target), include_background=True, ignore_empty=False)[0].float()
    torch.testing.assert_close(result["IoU"], iou)
    assert result["mDice"].item() == pytest.approx(result["Dice"].mean().item())
    tp = (preds & (target == 1)).sum((0, 2, 3))
    assert torch.equal(result["tp"], tp) and 0.3 < result["mDice"].item() < 0.7


def test_per_case_dice_equals_monai_per_image_and_region_also_with_empty_regions():
    preds, target = random_pair((5, 3, 4, 4, 3), seed=2)
    preds[0, 2], target[0, 2] = False, 0  # ET empty in truth and prediction: 1
    preds[1, 2], target[1, 2] = False, 0
    preds[1, 2, 0, 0, 0] = True  # one false-positive voxel on an empty region: 0
    target[2, 1], preds[2, 1] = 0, False
    target[2, 1, 1, 1, 1] = 1  # a missed one-voxel region: 0
    metric = CaseRegionDice(3)
    metric.update(preds, target, [f"case{i}" for i in range(5)])
    result = metric.compute()
    expected = monai_dice(preds, target).float()
    torch.testing.assert_close(result["dice_per_case"], expected)
    assert result["dice_per_case"][0, 2].item() == 1.0
    assert result["dice_per_case"][1, 2].item() == 0.0 and result["dice_per_case"][2, 1].item() == 0.0
    torch.testing.assert_close(result["Dice"], expected.mean(0))
    assert result["cases"] == [f"case{i}" for i in range(5)]


def test_ignored_voxels_count_nowhere():
    preds, target = random_pair((3, 3, 6, 6), seed=3)
    ignored = torch.zeros(3, 1, 6, 6, dtype=torch.bool)
    ignored[:, :, :2] = True
    target = target.masked_fill(ignored.expand_as(target), IGNORE)
    metric = CaseRegionDice(3)
    metric.update(preds, target)  # no case ids: each item its own case
    result = metric.compute()
    keep = ~ignored.expand_as(preds)
    expected = monai_dice(preds & keep, torch.where(keep, target, 0))  # ignored voxels empty in both: no count
    torch.testing.assert_close(result["dice_per_case"], expected.float())
    tp, fp, fn = region_counts(preds, target, IGNORE)
    assert int((tp + fp + fn).sum()) == int(((preds | (target == 1)) & keep).sum())


def test_slices_of_a_case_in_different_batches_give_the_volume_dice():
    preds, target = random_pair((6, 3, 5, 5), seed=4)
    metric = CaseRegionDice(3)
    cases = ["a", "b", "a", "b", "a", "a"]
    metric.update(preds[:3], target[:3], cases[:3])
    metric.update(preds[3:], target[3:], cases[3:])
    result = metric.compute()
    for k, case in enumerate(["a", "b"]):
        index = [i for i, c in enumerate(cases) if c == case]
        volume = monai_dice(preds[index].transpose(0, 1)[None], target[index].transpose(0, 1)[None])[0]
        torch.testing.assert_close(result["dice_per_case"][k], volume.float())


def test_empty_region_conventions():
    tp, fp, fn = (torch.tensor(v) for v in ([0, 0, 0, 3], [0, 2, 0, 1], [0, 0, 4, 0]))
    dice, iou = scores_from_counts(tp, fp, fn)
    assert dice.tolist() == pytest.approx([1.0, 0.0, 0.0, 6 / 7]) and iou.tolist() == pytest.approx([1, 0, 0, 0.75])
    dice, _ = scores_from_counts(tp, fp, fn, empty_score=math.nan)
    assert math.isnan(dice[0].item()) and dice[1:].tolist() == pytest.approx([0, 0, 6 / 7])
    empty = torch.zeros(2, 1, 3, 3, dtype=torch.bool)
    truth = torch.zeros(2, 1, 3, 3, dtype=torch.uint8)
    truth[0, 0, 1, 1] = 1
    preds = empty.clone()
    preds[0, 0, 1, 1] = True  # case 0 perfect; case 1 empty in both
    nan_metric = CaseRegionDice(1, empty_score=math.nan)
    nan_metric.update(preds, truth, ["p", "q"])
    assert nan_metric.compute()["Dice"].reshape(-1).tolist() == [1.0]  # the 0/0 case is skipped (R = 1: squeezed)
    brats = CaseRegionDice(1)
    brats.update(preds, truth, ["p", "q"])
    assert brats.compute()["dice_per_case"][:, 0].tolist() == [1.0, 1.0]


def test_region_surface_distances_call_the_surface_functions_per_channel():
    g = torch.Generator().manual_seed(5)
    truth = torch.zeros(4, 2, 8, 8, dtype=torch.uint8)
    truth[:, 0, 2:6, 2:6] = 1
    truth[1:3, 1, 3:5, 3:5] = 1
    preds = truth.bool().clone()
    preds[:, 0, 1:6, 2:7] = True
    preds[2, 1] = torch.rand(8, 8, generator=g) < 0.1
    spacing = torch.tensor([[2.0, 1.0, 1.0]]).repeat(4, 1)
    names = [f"c_z{z:03d}" for z in (3, 0, 2, 1)]  # slices arrive out of z order
    order = [3, 0, 2, 1]
    metric = CaseRegionSurfaceDistance(2)
    metric.update(preds[order], truth[order], ["c"] * 4, names, spacing)
    result = metric.compute()
    for r in range(2):
        expected = surface_distances(preds[:, r].numpy(), truth[:, r].numpy().astype(bool), (2.0, 1.0, 1.0))
        assert result["hd95_per_case"][0, r].item() == pytest.approx(expected[0], rel=1e-6)
        assert result["assd_per_case"][0, r].item() == pytest.approx(expected[1], rel=1e-6)
    assert result["hd95_per_case"][0, 0].item() > 0
    brats = CaseRegionSurfaceDistance(2, one_empty=373.13)
    none = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    one = none.clone()
    one[0, 1, 0, 0] = True
    brats.update(none, torch.zeros(1, 2, 4, 4, dtype=torch.uint8), ["e"], ["e_z000"], spacing[:1])
    brats.update(one, torch.zeros(1, 2, 4, 4, dtype=torch.uint8), ["f"], ["f_z000"], spacing[:1])
    out = brats.compute()
    assert out["hd95_per_case"].tolist() == [[0.0, 0.0], [0.0, pytest.approx(373.13)]]
    assert np.isnan(CaseRegionSurfaceDistance(1).distances(np.ones((2, 2), bool), np.zeros((2, 2), bool), (1, 1))[0])


def test_metric_inputs_are_checked():
    metric = RegionScores(3)
    with pytest.raises(ValueError, match="threshold logits first"):
        metric.update(torch.randn(1, 3, 4, 4), torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="expected R=3 region channels, got 2"):
        metric.update(torch.zeros(1, 2, 4, 4, dtype=torch.bool), torch.zeros(1, 2, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="of one shape"):
        metric.update(torch.zeros(1, 3, 4, 4, dtype=torch.bool), torch.zeros(1, 4, 4, dtype=torch.int64))


def test_the_draft_experiment_composes_and_builds(make_cfg, tmp_path):
    from segloss.build import build_module
    from segloss.checks import check_config
    from segloss.losses.multilabel import MultiLabelBCELoss, MultiLabelDiceLoss

    cfg = make_cfg(["experiment=dice_bce_brats_regions", f"paths.data_dir={tmp_path / 'data'}"])
    check_config(cfg)
    assert cfg.data.num_classes == 4 and cfg.model.net.num_classes == 3 and cfg.loss.family == "compound"
    module = build_module(cfg, with_optimizer=False)
    assert isinstance(module.loss.terms["bce"], MultiLabelBCELoss)
    assert isinstance(module.loss.terms["dice"], MultiLabelDiceLoss)
    regions = Regions(BRATS_REGIONS, num_classes=cfg.data.num_classes)
    mask = torch.tensor([[[0, 1], [2, 3]]])
    logits = module.net.eval()(torch.zeros(1, 3, 32, 32))
    assert logits.shape[1] == len(regions)
    assert module.loss(torch.zeros(1, 3, 2, 2), regions.to_multi_hot(mask, cfg.data.ignore_index)).item() > 0
