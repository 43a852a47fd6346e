"""CaseDice: per-case Dice from slices equals the Dice of the stacked volumes, under any order, batching
or split over (simulated) DDP ranks."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torchmetrics.utilities import dim_zero_cat

from segloss.metrics.per_case import CaseDice, case_key, decode_name, encode_names

IGNORE = 255
# Two cases, 2×3 slices: "a" has two slices, "b" one. Hand counts (ignored pixels excluded everywhere):
#   a: class 0 TP 5 FP 2 FN 1 -> 10/13; class 1 TP 2 FP 1 FN 2 -> 4/7; class 2 TP 1 FP 0 FN 0 -> 1
#   b: class 0 TP 5 -> 1; classes 1, 2 absent from truth and prediction -> NaN (the 1 is on an ignored pixel)
SLICES = {
    ("a", 0): ([[0, 1, 1], [0, 2, IGNORE]], [[0, 1, 0], [1, 2, 2]]),
    ("a", 1): ([[1, 1, 0], [0, 0, 0]], [[1, 0, 0], [0, 0, 0]]),
    ("b", 0): ([[0, 0, 0], [0, 0, IGNORE]], [[0, 0, 0], [0, 0, 1]]),
}
NAN = float("nan")
EXPECTED = torch.tensor([[10 / 13, 4 / 7, 1.0], [1.0, NAN, NAN]])


def batch(keys):
    target = torch.tensor([SLICES[k][0] for k in keys])
    preds = torch.tensor([SLICES[k][1] for k in keys])
    return preds, target, [case for case, _ in keys]


def test_hand_computed_per_case_dice_in_shuffled_order():
    metric = CaseDice(num_classes=3)
    metric.update(*batch([("a", 1), ("b", 0)]))
    metric.update(*batch([("a", 0)]))
    result = metric.compute()
    assert result["cases"] == ["a", "b"]
    torch.testing.assert_close(result["dice_per_case"], EXPECTED, equal_nan=True)
    torch.testing.assert_close(result["Dice"], torch.tensor([(10 / 13 + 1) / 2, 4 / 7, 1.0]))
    assert math.isclose(result["mDice"].item(), (4 / 7 + 1) / 2, rel_tol=1e-6)
    with_background = CaseDice(num_classes=3, include_background=True)
    with_background.update(*batch([("b", 0), ("a", 0), ("a", 1)]))
    assert math.isclose(with_background.compute()["mDice"].item(), ((10 / 13 + 1) / 2 + 4 / 7 + 1) / 3, rel_tol=1e-6)


def numpy_volume_dice(target: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    valid = target != IGNORE
    dice = []
    for c in range(num_classes):
        tp = np.sum((target == c) & (preds == c) & valid)
        fp = np.sum((target != c) & (preds == c) & valid)
        fn = np.sum((target == c) & (preds != c) & valid)
        dice.append(2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else np.nan)
    return np.array(dice)


def test_equals_the_dice_of_the_stacked_volumes_for_any_batching():
    rng = np.random.default_rng(0)
    volumes = {}
    for case, depth in (("liver_7", 5), ("liver_10", 3), ("liver_2", 4)):
        target = rng.integers(0, 3, (depth, 6, 5))
        target[rng.random(target.shape) < 0.1] = IGNORE
        preds = np.where(rng.random(target.shape) < 0.7, np.where(target == IGNORE, 0, target), rng.integers(0, 4))
        volumes[case] = (target, preds)
    slices = [(case, z) for case, (target, _) in volumes.items() for z in range(len(target))]
    order = rng.permutation(len(slices))
    metric = CaseDice(num_classes=4)
    for chunk in np.array_split(order, 4):
        keys = [slices[i] for i in chunk]
        target = torch.from_numpy(np.stack([volumes[c][0][z] for c, z in keys]))
        preds = torch.from_numpy(np.stack([volumes[c][1][z] for c, z in keys]))
        metric.update(preds, target, [c for c, _ in keys])
    result = metric.compute()
    assert result["cases"] == ["liver_10", "liver_2", "liver_7"]
    expected = np.stack([numpy_volume_dice(*volumes[case], 4) for case in result["cases"]])
    # class 3 is never in the truth: 0 where predicted on a non-ignored pixel, else NaN (both occur here)
    assert np.isnan(expected[:, 3]).any() and (expected[:, 3] == 0).any()
    np.testing.assert_allclose(result["dice_per_case"].numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(result["Dice"].numpy(), np.nanmean(expected, axis=0), rtol=1e-6)
    assert math.isclose(result["mDice"].item(), np.nanmean(np.nanmean(expected, axis=0)[1:]), rel_tol=1e-6)


def test_missed_class_scores_zero_and_absent_class_is_excluded_from_the_mean():
    metric = CaseDice(num_classes=2)
    metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[1, 0], [0, 0]]]), ["missed"])
    metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long), ["empty"])
    result = metric.compute()
    assert result["cases"] == ["empty", "missed"]
    assert math.isnan(result["dice_per_case"][0, 1]) and result["dice_per_case"][1, 1].item() == 0.0
    assert result["Dice"][1].item() == 0.0 and result["mDice"].item() == 0.0


def test_ignored_pixels_count_nowhere():
    metric = CaseDice(num_classes=2)
    target = torch.tensor([[[1, IGNORE], [IGNORE, 0]]])
    metric.update(torch.tensor([[[1, 1], [0, 0]]]), target, ["x"])
    torch.testing.assert_close(metric.compute()["dice_per_case"], torch.tensor([[1.0, 1.0]]))
    everything_ignored = CaseDice(num_classes=2)
    everything_ignored.update(torch.ones(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), IGNORE), ["y"])
    assert torch.isnan(everything_ignored.compute()["dice_per_case"]).all()


def test_reset_forgets_every_case():
    metric = CaseDice(num_classes=3)
    metric.update(*batch(list(SLICES)))
    metric.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "compute called before update"
        empty = metric.compute()
    assert empty["cases"] == [] and empty["dice_per_case"].shape == (0, 3)
    assert torch.isnan(empty["Dice"]).all() and torch.isnan(empty["mDice"])
    metric.update(*batch([("b", 0)]))
    result = metric.compute()
    assert result["cases"] == ["b"] and result["dice_per_case"][0, 0].item() == 1.0


def rank_metric(keys, **kwargs) -> CaseDice:
    metric = CaseDice(num_classes=3, **kwargs)
    if keys:
        metric.update(*batch(keys))
    return metric


def test_ddp_gather_sums_a_case_split_over_ranks_and_names_cases_seen_elsewhere():
    other_rank = rank_metric([("a", 1)])  # holds one slice of "a"
    gathered_inputs = []

    def all_gather(tensor, group=None):
        gathered_inputs.append(tensor)
        return [tensor, dim_zero_cat(other_rank.rows)]

    sync = {"dist_sync_fn": all_gather, "distributed_available_fn": lambda: True}
    this_rank = rank_metric([("b", 0), ("a", 0)], **sync)
    result = this_rank.compute()
    assert result["cases"] == ["a", "b"]
    torch.testing.assert_close(result["dice_per_case"], EXPECTED, equal_nan=True)
    # a rank that saw no slice sends a well-typed empty (0, width) int64 tensor and still gets every case
    idle = rank_metric([], **sync)
    other_rank = rank_metric([("a", 1), ("b", 0), ("a", 0)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "compute called before update" on the idle rank
        result = idle.compute()
    assert gathered_inputs[-1].dtype == torch.int64 and gathered_inputs[-1].shape == (0, idle.width)
    assert result["cases"] == ["a", "b"]  # names travel in the rows: this rank never saw them
    torch.testing.assert_close(result["dice_per_case"], EXPECTED, equal_nan=True)


def test_case_keys_are_stable_and_names_round_trip():
    assert case_key("spleen_2") == -6492003759605171095  # fixed across processes (unlike the salted hash())
    assert case_key("spleen_2") != case_key("spleen_20")
    names = ["BRATS_001", "géométrie_7", "x" * 70]
    decoded = [decode_name(row) for row in encode_names(names)]
    assert decoded == ["BRATS_001", "géométrie_7", "x" * 64]


def test_bad_inputs_are_rejected():
    metric = CaseDice(num_classes=3)
    with pytest.raises(ValueError, match="N case ids"):
        metric.update(torch.zeros(2, 2, 2, dtype=torch.long), torch.zeros(2, 2, 2, dtype=torch.long), ["a"])
    # A prediction that is not a class counts nowhere (no host sync to check it; argmax never gives one).
    metric.update(torch.full((1, 2, 2), 3), torch.zeros(1, 2, 2, dtype=torch.long), ["a"])
    metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long), ["a"])
    assert metric.compute()["Dice"][0].item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="ignore_index=2"):
        CaseDice(num_classes=3, ignore_index=2)
