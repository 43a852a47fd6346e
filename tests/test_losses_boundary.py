"""The losses of issue 15: Boundary, Hausdorff-DT, Unified Focal and clDice against float64 references (scipy's
distance transform, MONAI where its conventions are the paper's), and term-weight schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt

from segloss import losses as L
from segloss.losses._distance import boundary_distance, distance_to, signed_distance
from segloss.losses.schedules import WeightSchedule


def _batch(c: int = 4, ignore: bool = True, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = (2 * torch.randn(2, c, 18, 23, generator=g)).double()
    target = torch.randint(0, c, (2, 18, 23), generator=g)
    target[:, 4:11, 5:14] = 2 % c  # a region with an inside and a boundary
    target[1, :, :3] = 1
    if ignore:
        target[0, :2] = 255
    return logits, target


@pytest.mark.parametrize("path", ["device", "cpu"])
def test_the_distance_transform_is_scipys(path):
    from segloss.losses._distance import _distance_to_dense

    g = torch.Generator().manual_seed(1)
    features = torch.rand(4, 31, 45, generator=g) < 0.03
    features[1] = False  # no feature: inf everywhere
    features[2, :, 10] = True  # a full column
    got = _distance_to_dense(features) if path == "device" else distance_to(features)  # the GPU path, run here
    for i in range(4):
        if not features[i].any():
            assert torch.isinf(got[i]).all()
        else:
            np.testing.assert_allclose(got[i].numpy(), distance_transform_edt(~features[i].numpy()), atol=1e-5)


def test_signed_and_boundary_distances_follow_their_papers():
    region = torch.zeros(3, 20, 25, dtype=torch.bool)
    region[0, 5:12, 4:19] = True
    region[2] = True  # full: undefined → 0
    pos = region.numpy()
    kervadec = distance_transform_edt(~pos[0]) * ~pos[0] - (distance_transform_edt(pos[0]) - 1) * pos[0]
    np.testing.assert_allclose(signed_distance(region)[0].numpy(), kervadec, atol=1e-5)
    assert signed_distance(region)[1:].abs().sum() == 0  # empty and full regions
    karimi = distance_transform_edt(pos[0]) + distance_transform_edt(~pos[0])
    np.testing.assert_allclose(boundary_distance(region)[0].numpy(), karimi, atol=1e-5)


def _valid_and_onehot(logits, target, c):
    valid = target != 255
    onehot = F.one_hot(torch.where(valid, target, 0), c).permute(0, 3, 1, 2).double() * valid[:, None]
    return valid, onehot


def test_boundary_loss_equals_its_float64_formula():
    logits, target = _batch()
    valid, onehot = _valid_and_onehot(logits, target, 4)
    p = logits.softmax(1)
    total = 0.0
    for n in range(2):
        for c in range(1, 4):  # foreground classes
            region = onehot[n, c].numpy() > 0
            phi = distance_transform_edt(~region) * ~region - (distance_transform_edt(region) - 1) * region
            if not region.any() or region.all():
                phi = np.zeros_like(phi)
            total += float((torch.from_numpy(phi) * p[n, c] * valid[n]).sum())
    expected = total / float(valid.sum())
    got = L.BoundaryLoss()(logits, target)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # its minimum is a perfect prediction: moving probability onto the regions lowers it
    assert L.BoundaryLoss()(20 * onehot - 10, target) < got


def test_hausdorff_dt_loss_is_monais_without_ignored_pixels_and_masks_them_otherwise():
    from monai.losses import HausdorffDTLoss as MonaiHausdorff

    logits, target = _batch(ignore=False)
    ours = L.HausdorffDTLoss()(logits, target)
    monai = MonaiHausdorff(softmax=True, to_onehot_y=True, include_background=False)(logits, target[:, None])
    assert ours.item() == pytest.approx(monai.item(), rel=1e-9)
    logits, target = _batch(ignore=True)
    valid, onehot = _valid_and_onehot(logits, target, 4)
    p = logits.softmax(1)
    total = 0.0
    for n in range(2):
        for c in range(1, 4):
            weight = sum(
                torch.from_numpy(
                    (distance_transform_edt(m) + distance_transform_edt(~m)) ** 2
                    if m.any() and not m.all()
                    else np.zeros(m.shape)
                )
                for m in (onehot[n, c].numpy() > 0, p[n, c].numpy() > 0.5)
            )
            total += float(((p[n, c] - onehot[n, c]) ** 2 * weight * valid[n]).sum())
    expected = total / (float(valid.sum()) * 3)
    assert L.HausdorffDTLoss()(logits, target).item() == pytest.approx(expected, rel=1e-9)


def _unified_reference(logits, target, weight, delta, gamma, asymmetric, eps=1e-6):
    """The paper's formula written out, per image and class, in float64."""
    c = logits.shape[1]
    valid, y = _valid_and_onehot(logits, target, c)
    p = logits.softmax(1)
    focal, tversky, images = 0.0, 0.0, 0
    for n in range(len(logits)):
        for k in range(c):
            w = (1 - delta) if k == 0 else delta
            m = (1 - p[n, k]) ** gamma if (k == 0 or not asymmetric) else 1.0
            focal += float((-w * m * y[n, k] * torch.log(p[n, k]) * valid[n]).sum())
        if valid[n].any():
            images += 1
            for k in range(c):
                pk, yk = p[n, k] * valid[n], y[n, k]
                tp, fn, fp = (pk * yk).sum(), ((1 - pk) * yk).sum(), (pk * (1 - yk) * valid[n]).sum()
                mti = float((tp + eps) / (tp + delta * fn + (1 - delta) * fp + eps))
                tversky += (1 - mti) if (k == 0 and asymmetric) else (1 - mti) ** (1 - gamma)
    return weight * tversky / (images * c) + (1 - weight) * focal / float(valid.sum())


@pytest.mark.parametrize("asymmetric", [True, False])
def test_unified_focal_loss_equals_the_papers_formula(asymmetric):
    logits, target = _batch(c=4)
    expected = _unified_reference(logits, target, 0.5, 0.6, 0.5, asymmetric)
    got = L.UnifiedFocalLoss(asymmetric=asymmetric)(logits, target)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_unified_focal_parts_agree_with_monai_where_monai_follows_the_paper():
    """MONAI's binary parts: its Tversky part is the paper's; its focal part averages over the 2 classes too (÷ 2)
    where the authors' code sums them; its unified loss defaults to δ = 0.7 (the paper: 0.6)."""
    from monai.losses.unified_focal_loss import AsymmetricFocalLoss, AsymmetricFocalTverskyLoss

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 1, 16, 16, generator=g).double()
    target = torch.randint(0, 2, (2, 16, 16), generator=g)
    probs = torch.cat([1 - logits.sigmoid(), logits.sigmoid()], dim=1)
    onehot = F.one_hot(target, 2).permute(0, 3, 1, 2).double()
    tversky = AsymmetricFocalTverskyLoss(delta=0.6, gamma=0.5, epsilon=1e-6)(probs, onehot)
    focal = AsymmetricFocalLoss(delta=0.6, gamma=0.5, epsilon=1e-12)(probs, onehot)
    assert L.UnifiedFocalLoss(weight=1.0)(logits, target).item() == pytest.approx(tversky.item(), rel=1e-6)
    assert L.UnifiedFocalLoss(weight=0.0)(logits, target).item() == pytest.approx(2 * focal.item(), rel=1e-6)


def test_cldice_skeleton_is_the_papers_and_the_loss_its_formula():
    from monai.losses.cldice import soft_skel

    logits, target = _batch(c=3, ignore=True)
    probs = logits.softmax(1)
    np.testing.assert_allclose(L.cldice.soft_skeleton(probs, 3).numpy(), soft_skel(probs, 3).numpy(), atol=1e-12)
    valid, y = _valid_and_onehot(logits, target, 3)
    p = probs * valid[:, None]
    per_class = []
    for k in (1, 2):
        pk, yk = p[:, k : k + 1], y[:, k : k + 1]
        sp, sy = soft_skel(pk, 3), soft_skel(yk, 3)
        t_prec = ((sp * yk).sum() + 1) / (sp.sum() + 1)
        t_sens = ((sy * pk).sum() + 1) / (sy.sum() + 1)
        cl = 2 * t_prec * t_sens / (t_prec + t_sens)
        dice = (2 * (pk * yk).sum() + 1) / (pk.sum() + yk.sum() + 1)
        per_class.append(0.5 * (1 - dice) + 0.5 * (1 - cl))
    assert L.ClDiceLoss()(logits, target).item() == pytest.approx(float(sum(per_class) / 2), rel=1e-9)


def test_cldice_morphology_has_max_pools_values_and_gradients():
    """The shifted-maxima erosion/dilation equal max-pool's values everywhere (ties included: one-hot
    labels are all ties) and its gradient (all to the window's first maximum) on tie-free maps."""
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2, 3, 9, 11, generator=g, dtype=torch.float64, requires_grad=True)
    ties = torch.randint(0, 2, (2, 3, 9, 11), generator=g).double()
    for m in (x, ties):
        np.testing.assert_array_equal(L.cldice.soft_dilate(m).detach(), F.max_pool2d(m, 3, 1, 1).detach())
        pools = torch.minimum(-F.max_pool2d(-m, (3, 1), 1, (1, 0)), -F.max_pool2d(-m, (1, 3), 1, (0, 1)))
        np.testing.assert_array_equal(L.cldice.soft_erode(m).detach(), pools.detach())
    w = torch.rand(2, 3, 9, 11, generator=g, dtype=torch.float64)
    for ours, pool in [(L.cldice.soft_dilate, lambda m: F.max_pool2d(m, 3, 1, 1)), (lambda m: L.cldice._max3(m, -2),
                       lambda m: F.max_pool2d(m, (3, 1), 1, (1, 0)))]:  # fmt: skip
        (a,) = torch.autograd.grad((ours(x) * w).sum(), x)
        (b,) = torch.autograd.grad((pool(x) * w).sum(), x)
        np.testing.assert_allclose(a, b, atol=1e-12)
    assert torch.autograd.gradcheck(lambda m: L.cldice._max3(m, -1), (x,))


@pytest.mark.parametrize("loss", [L.BoundaryLoss(), L.HausdorffDTLoss(), L.UnifiedFocalLoss(), L.ClDiceLoss()])
def test_new_losses_have_finite_gradients_and_take_binary_logits_and_all_ignored_batches(loss):
    logits, target = _batch(c=2)
    x = logits.float().requires_grad_()
    value = loss(x, target)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    binary = loss(logits[:, 1:] - logits[:, :1], target)  # C = 1: σ of the foreground logit
    two = loss(torch.cat([torch.zeros_like(logits[:, :1]), logits[:, 1:] - logits[:, :1]], 1), target)
    assert binary.item() == pytest.approx(two.item(), rel=1e-6)
    ignored = loss(logits, torch.full_like(target, 255))
    assert torch.isfinite(ignored)


def test_weight_schedules_and_the_compound_loss_that_follows_them():
    ramp = WeightSchedule.of({"kind": "linear", "unit": "epoch", "start": 1.0, "end": 0.01, "length": 99})
    assert [ramp(0, e) for e in (0, 1, 99, 150)] == pytest.approx([1.0, 0.99, 0.01, 0.01])
    step = WeightSchedule.of({"kind": "step", "unit": "step", "start": 1.0, "factor": 0.5, "every": 10, "low": 0.2})
    assert [step(s, 0) for s in (0, 9, 10, 25, 1000)] == pytest.approx([1.0, 1.0, 0.5, 0.25, 0.2])
    assert WeightSchedule.of(0.3)(123, 4) == 0.3 and WeightSchedule.of(0.3).constant
    with pytest.raises(ValueError, match="missing \\['length'\\]"):
        WeightSchedule.of({"kind": "linear", "start": 1.0, "end": 0.0})
    terms = {"ce": L.CrossEntropyLoss(), "dice": L.DiceLoss()}
    loss = L.CompoundLoss(terms, {"ce": 1.0, "dice": {"kind": "linear", "unit": "step", "start": 0.0, "end": 1.0,
                                                      "length": 10}})  # fmt: skip
    logits, target = _batch(c=4)
    assert loss.scheduled == ["dice"] and loss(logits, target).item() == pytest.approx(
        terms["ce"](logits, target).item()
    )
    loss.set_progress(5, 0)
    total, parts = loss(logits, target, return_terms=True)
    assert total.item() == pytest.approx(parts["ce"].item() + 0.5 * parts["dice"].item())
    assert math.isclose(loss.weights["dice"], 0.5)


@pytest.mark.slow
def test_a_training_logs_the_scheduled_weights_with_the_terms(tmp_path):
    import csv

    from tests.conftest import QUIET_RUN, TINY_SYNTHETIC, fit

    overrides = [*TINY_SYNTHETIC, *QUIET_RUN, f"paths.data_dir={tmp_path / 'data'}", "loss=boundary_gdl",
                 "trainer.max_epochs=2", "trainer.log_every_n_steps=4"]  # fmt: skip
    run = fit(overrides, tmp_path)
    with (tmp_path / "csv" / "metrics.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("train/loss_weight/gdl")]
    by_epoch = {int(row["epoch"]): (float(row["train/loss_weight/gdl"]), float(row["train/loss_weight/boundary"]))
                for row in rows}  # fmt: skip
    assert by_epoch[0] == pytest.approx((1.0, 0.0)) and by_epoch[1] == pytest.approx((0.99, 0.01))
    assert all(row.get("train/loss/boundary_step") for row in rows)  # the terms are logged alongside
    assert math.isfinite(run["best_value"])
