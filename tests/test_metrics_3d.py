"""Per-case metrics of whole 3-D volumes: CaseDice and CaseSurfaceDistance updated with N×D×H×W batches equal
MONAI's ``compute_dice``, ``compute_hausdorff_distance(percentile=95)`` and
``compute_average_surface_distance(symmetric=True)`` on the same one-hot volumes with anisotropic spacing, and
give exactly what the 2-D path (the volumes cut into their D slices, in any order and batching) gives.

Conventions (include_background=False throughout, per case and class):

* Dice: both score 2·TP / (2·TP + FP + FN) when the class is in the truth; predicted but absent from the truth:
  segloss 0, MONAI nan (``ignore_empty=True``, its default) or 0 (``ignore_empty=False``); absent from both:
  segloss nan (left out of the class mean), MONAI nan (``ignore_empty=True``) or 1 (``ignore_empty=False``).
* HD95 / ASSD in mm: equal (float32 rounding: rtol 1e-5) when the class is in both. In exactly one of truth and
  prediction MONAI's ASSD (and its HD without percentile) is inf, its HD95 nan (``torch.quantile`` of inf
  distances); in neither, both are nan. segloss gives nan in all these cases (left out of the class mean).
* Ignored voxels: counted nowhere by Dice (MONAI is given one-hot volumes zeroed there); background of the truth
  for the surfaces (MONAI is given the truth with them set to background).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segloss.metrics.per_case import CaseDice
from segloss.metrics.surface import CaseSurfaceDistance

IGNORE = 255
C = 3
SHAPE = (7, 14, 12)  # D × H × W
SPACING = {"case_a": (3.0, 0.7, 0.8), "case_b": (1.5, 1.2, 0.9), "case_c": (5.0, 0.6, 0.6), "case_d": (2.0, 1.0, 1.0)}


def box(shape, low, high) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in zip(low, high))] = True
    return mask


def ellipsoid(shape, centre, radii) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1


def cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{case: (target, preds)}`` D×H×W int64 volumes covering every convention:

    case_a: both classes in truth and prediction (a shifted ellipsoid, a grown box, stray voxels);
    case_b: class 2 missed by the prediction (in the truth only), class 1 with a hole;
    case_c: class 2 predicted but absent from the truth; class 1 in both;
    case_d: class 2 in neither truth nor prediction.
    Every truth has a few ignored voxels (one of them where class 1 is predicted)."""
    rng = np.random.default_rng(0)
    out = {}
    t, p = np.zeros(SHAPE, np.int64), np.zeros(SHAPE, np.int64)
    t[ellipsoid(SHAPE, (3, 6, 5), (2.5, 4, 3.5))] = 1
    p[ellipsoid(SHAPE, (3, 7, 5), (2.2, 4.5, 3))] = 1
    t[box(SHAPE, (1, 9, 8), (5, 13, 11))] = 2
    p[box(SHAPE, (1, 8, 8), (6, 13, 12))] = 2
    p[rng.random(SHAPE) < 0.01] = 2  # stray false positives far from the truth
    out["case_a"] = (t, p)
    t, p = np.zeros(SHAPE, np.int64), np.zeros(SHAPE, np.int64)
    t[box(SHAPE, (0, 2, 2), (6, 10, 9))] = 1
    t[box(SHAPE, (2, 4, 4), (4, 7, 6))] = 0  # a hole: an inner surface
    p[box(SHAPE, (1, 2, 3), (7, 11, 9))] = 1
    t[box(SHAPE, (3, 11, 9), (5, 13, 11))] = 2
    out["case_b"] = (t, p)
    t, p = np.zeros(SHAPE, np.int64), np.zeros(SHAPE, np.int64)
    t[ellipsoid(SHAPE, (3, 7, 6), (3, 5, 4))] = 1
    p[ellipsoid(SHAPE, (4, 7, 6), (3, 4, 4))] = 1
    p[box(SHAPE, (0, 0, 0), (2, 2, 3))] = 2
    out["case_c"] = (t, p)
    t, p = np.zeros(SHAPE, np.int64), np.zeros(SHAPE, np.int64)
    t[box(SHAPE, (2, 3, 3), (5, 9, 8))] = 1
    p[box(SHAPE, (2, 3, 4), (5, 10, 8))] = 1
    out["case_d"] = (t, p)
    for target, preds in out.values():
        target[rng.random(SHAPE) < 0.02] = IGNORE
        z, y, x = np.argwhere(preds == 1)[0]
        target[z, y, x] = IGNORE  # an ignored voxel under a predicted class-1 voxel
    return out


def volume_batch(names):
    volumes = cases()
    target = torch.from_numpy(np.stack([volumes[n][0] for n in names]))
    preds = torch.from_numpy(np.stack([volumes[n][1] for n in names]))
    spacing = torch.tensor([SPACING[n] for n in names], dtype=torch.float64)
    return preds, target, spacing


def one_hot(labels: torch.Tensor) -> torch.Tensor:
    """N×C×D×H×W float one-hot of N×D×H×W labels in [0, C)."""
    return F.one_hot(labels, C).movedim(-1, 1).float()


def monai_inputs(preds, target):
    """(Dice inputs, surface inputs): one-hot volumes zeroed on ignored voxels / truth with them as background."""
    valid = (target != IGNORE).unsqueeze(1).float()
    safe = torch.where(target == IGNORE, 0, target)
    return (one_hot(preds) * valid, one_hot(safe) * valid), (one_hot(preds), one_hot(safe))


NAMES = ["case_a", "case_b", "case_c", "case_d"]


def test_case_dice_of_volumes_equals_monais_compute_dice():
    from monai.metrics import compute_dice

    preds, target, _ = volume_batch(NAMES)
    metric = CaseDice(num_classes=C, ignore_index=IGNORE)
    metric.update(preds, target, NAMES)
    result = metric.compute()
    assert result["cases"] == NAMES
    ours = result["dice_per_case"][:, 1:].double()
    (pred_oh, truth_oh), _ = monai_inputs(preds, target)
    skipping = compute_dice(pred_oh, truth_oh, include_background=False, ignore_empty=True).double()
    scoring = compute_dice(pred_oh, truth_oh, include_background=False, ignore_empty=False).double()
    in_truth = truth_oh[:, 1:].flatten(2).sum(-1) > 0
    in_pred = pred_oh[:, 1:].flatten(2).sum(-1) > 0
    torch.testing.assert_close(ours[in_truth], skipping[in_truth], rtol=1e-6, atol=0)
    torch.testing.assert_close(ours[in_truth], scoring[in_truth], rtol=1e-6, atol=0)
    only_pred, neither = ~in_truth & in_pred, ~in_truth & ~in_pred
    assert only_pred.any() and neither.any()  # case_c and case_d, class 2
    assert (ours[only_pred] == 0).all() and skipping[only_pred].isnan().all() and (scoring[only_pred] == 0).all()
    assert ours[neither].isnan().all() and skipping[neither].isnan().all() and (scoring[neither] == 1).all()
    # the class means are nan-means over the cases
    np.testing.assert_allclose(result["Dice"][1:].numpy(), np.nanmean(ours.numpy(), axis=0), rtol=1e-6)
    assert math.isclose(result["mDice"].item(), np.nanmean(np.nanmean(ours.numpy(), axis=0)), rel_tol=1e-6)


def test_surface_distances_of_volumes_equal_monais_in_mm():
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    preds, target, spacing = volume_batch(NAMES)
    metric = CaseSurfaceDistance(num_classes=C, ignore_index=IGNORE)
    metric.update(preds, target, NAMES, None, spacing)
    result = metric.compute()
    assert result["cases"] == NAMES
    _, (pred_oh, truth_oh) = monai_inputs(preds, target)
    mm = [list(s) for s in spacing.tolist()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about the empty classes
        hd95 = compute_hausdorff_distance(pred_oh, truth_oh, include_background=False, percentile=95, spacing=mm)
        assd = compute_average_surface_distance(pred_oh, truth_oh, include_background=False, symmetric=True, spacing=mm)
        voxels = compute_hausdorff_distance(pred_oh, truth_oh, include_background=False, percentile=95)
    in_truth = truth_oh[:, 1:].flatten(2).sum(-1) > 0
    in_pred = pred_oh[:, 1:].flatten(2).sum(-1) > 0
    both, one = in_truth & in_pred, in_truth ^ in_pred
    assert both.sum() >= 5 and one.sum() == 2 and (~in_truth & ~in_pred).sum() == 1  # every convention occurs
    for ours, monai in ((result["hd95_per_case"], hd95), (result["assd_per_case"], assd)):
        ours = ours[:, 1:]
        torch.testing.assert_close(ours[both], monai[both].float(), rtol=1e-5, atol=1e-5)
        assert ours[~both].isnan().all()  # segloss: no distance when a volume is empty
        assert monai[~in_truth & ~in_pred].isnan().all()  # MONAI: nan when empty in both …
    assert assd[one].isinf().all() and hd95[one].isnan().all()  # … in one: ASSD inf, HD95 nan (quantile of infs)
    # anisotropy matters: the same volumes in voxel units give other distances
    assert not torch.allclose(hd95[both], voxels[both])
    hd = result["hd95_per_case"][:, 1:].numpy()
    np.testing.assert_allclose(result["HD95"][1:].numpy(), np.nanmean(hd, axis=0), rtol=1e-6)
    assert math.isclose(result["mHD95"].item(), np.nanmean(np.nanmean(hd, axis=0)), rel_tol=1e-6)


def test_whole_volumes_score_exactly_what_their_slices_score():
    names = ["case_b", "case_a", "case_d", "case_c"]
    preds, target, spacing = volume_batch(names)
    by_volume = (CaseDice(num_classes=C), CaseSurfaceDistance(num_classes=C))
    half = 2  # two batches of whole volumes
    for rows in (slice(0, half), slice(half, None)):
        by_volume[0].update(preds[rows], target[rows], names[rows])
        by_volume[1].update(preds[rows], target[rows], names[rows], None, spacing[rows])
    # the 2-D MSD path: the same volumes as D slices each, named <case>_z<index>, shuffled into batches of 5
    items = [(k, z) for k in range(len(names)) for z in range(SHAPE[0])]
    order = np.random.default_rng(1).permutation(len(items))
    by_slice = (CaseDice(num_classes=C), CaseSurfaceDistance(num_classes=C))
    for chunk in np.array_split(order, math.ceil(len(items) / 5)):
        keys = [items[i] for i in chunk]
        p = torch.stack([preds[k, z] for k, z in keys])
        t = torch.stack([target[k, z] for k, z in keys])
        cases_of = [names[k] for k, _ in keys]
        by_slice[0].update(p, t, cases_of)
        by_slice[1].update(p, t, cases_of, [f"{names[k]}_z{z}" for k, z in keys], spacing[[k for k, _ in keys]])
    for volume_metric, slice_metric in zip(by_volume, by_slice):
        from_volumes, from_slices = volume_metric.compute(), slice_metric.compute()
        assert from_volumes.keys() == from_slices.keys() and from_volumes["cases"] == sorted(names)
        for key, value in from_volumes.items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(value, from_slices[key], rtol=0, atol=0, equal_nan=True)
            else:
                assert value == from_slices[key]


def test_a_volume_seen_twice_counts_once_for_surfaces_and_bad_inputs_are_refused():
    preds, target, spacing = volume_batch(["case_a"])
    once, twice = CaseSurfaceDistance(num_classes=C), CaseSurfaceDistance(num_classes=C)
    once.update(preds, target, ["case_a"], None, spacing)
    for _ in range(2):  # a DDP sampler's padding repeats an item: it replaces the stored volume
        twice.update(preds, target, ["case_a"], None, spacing)
    torch.testing.assert_close(once.compute()["hd95_per_case"], twice.compute()["hd95_per_case"], equal_nan=True)
    with pytest.raises(ValueError, match="need their names"):
        CaseSurfaceDistance(num_classes=C).update(preds[:, 0], target[:, 0], ["case_a"], None, spacing)
    with pytest.raises(ValueError, match="N case ids"):
        CaseSurfaceDistance(num_classes=C).update(preds, target, ["case_a", "case_b"], None, spacing)
    with pytest.raises(ValueError, match="N case ids"):
        CaseDice(num_classes=C).update(preds, target[:, 0], ["case_a"])


def test_the_quality_metrics_take_volumes():
    """Small objects are 3D components (26-connectivity, voxels); calibration counts voxels; Boundary IoU's bands
    are per axial slice: a volume scores what its slices score for BIoU, and one 3D object is one small object."""
    from segloss.metrics.quality import QualityMetrics

    target = torch.zeros(1, 4, 8, 8, dtype=torch.int64)
    target[0, 1:3, 2:4, 2:4] = 1  # one 2×2×2 object spanning two slices
    target[0, 3, 6, 6] = 1  # a single voxel far from it: a second object
    preds = torch.zeros_like(target)
    preds[0, 1:3, 2:4, 2:4] = 1  # the first found whole, the second missed
    logits = torch.nn.functional.one_hot(preds, 2).permute(0, 4, 1, 2, 3).float() * 4
    metrics = QualityMetrics(2, boundary_iou=True, calibration=True, small_objects=True, small_object_area=100)
    metrics.accumulate(preds, target, logits)
    result = metrics.compute()
    # background: one component of 247 voxels (not small); class 1: two objects, the first found
    assert result["small_objects"].tolist() == [0, 2] and result["small_recall"][1].item() == 0.5
    slices = QualityMetrics(2, boundary_iou=True, calibration=False, small_objects=False)
    slices.accumulate(preds[0], target[0], logits[0].permute(1, 0, 2, 3))  # the same voxels as 4 images
    assert torch.equal(result["BIoU"], slices.compute()["BIoU"])
