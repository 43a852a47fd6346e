"""Multi-label (region) losses against float64 references written from their formulas, element by element."""

from __future__ import annotations

import hydra
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from segloss.errors import LabelValueError
from segloss.losses import CompoundLoss
from segloss.losses.multilabel import (
    MultiLabelBCELoss,
    MultiLabelDiceLoss,
    MultiLabelFocalLoss,
    MultiLabelLovaszHingeLoss,
    multilabel_dice_bce,
)
from segloss.utils.config import CONFIG_DIR
from segloss.utils.loss_family import without_family

IGNORE = 255
SHAPES = {"2d": (2, 3, 5, 6), "3d": (2, 3, 3, 4, 5)}


def inputs(shape, seed=0, ignore_fraction=0.25, per_element=True, dtype=torch.uint8):
    """Logits and a multi-hot target with ignored elements: whole voxels (every channel) and, with
    ``per_element``, single (image, region, voxel) elements too."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g) * 2
    target = (torch.rand(shape, generator=g) < 0.4).to(dtype)
    voxel = torch.rand((shape[0], 1, *shape[2:]), generator=g) < ignore_fraction
    target = target.masked_fill(voxel.expand(shape), IGNORE)
    if per_element:
        target = target.masked_fill(torch.rand(shape, generator=g) < 0.1, IGNORE)
    return logits, target


# ---------------------------------------------------------------- float64 references, written from the formulas


def ref_bce(z, t, pos_weight=None):
    z, valid, y = z.double(), t != IGNORE, (t == 1).double()
    w = torch.ones(z.shape[1], dtype=torch.float64) if pos_weight is None else torch.tensor(pos_weight).double()
    w = w.view(1, -1, *(1,) * (z.dim() - 2)).expand_as(z)
    total, count = torch.zeros((), dtype=torch.float64), 0
    p = torch.sigmoid(z)
    for i in valid.nonzero().tolist():
        i = tuple(i)
        total = total - (w[i] * y[i] * torch.log(p[i]) + (1 - y[i]) * torch.log(1 - p[i]))
        count += 1
    return total / max(count, 1)


def ref_dice(z, t, smooth=1e-5, per_image=False):
    z, valid, y = z.double(), t != IGNORE, (t == 1).double()
    p = torch.sigmoid(z)
    n, r = z.shape[:2]
    if per_image:  # one Dice per (image, region)
        groups = [[(i, c)] for i in range(n) for c in range(r)]
    else:  # one Dice per region over the batch
        groups = [[(i, c) for i in range(n)] for c in range(r)]
    losses = []
    for group in groups:
        inter = p_sum = ground = torch.zeros((), dtype=torch.float64)
        any_valid = False
        for i, c in group:
            m = valid[i, c]
            any_valid |= bool(m.any())
            inter = inter + (p[i, c][m] * y[i, c][m]).sum()
            p_sum = p_sum + p[i, c][m].sum()
            ground = ground + y[i, c][m].sum()
        if any_valid:
            losses.append(1 - (2 * inter + smooth) / (p_sum + ground + smooth))
    return torch.stack(losses).mean() if losses else torch.zeros((), dtype=torch.float64)


def ref_focal(z, t, gamma=2.0, alpha=None):
    z, valid, y = z.double(), t != IGNORE, (t == 1).double()
    p = torch.sigmoid(z)
    pt = torch.where(y == 1, p, 1 - p)
    loss = -((1 - pt) ** gamma) * torch.log(pt)
    if alpha is not None:
        a = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1).expand(z.shape[1])
        a = a.view(1, -1, *(1,) * (z.dim() - 2))
        loss = loss * torch.where(y == 1, a, 1 - a)
    return loss[valid].sum() / max(int(valid.sum()), 1)


def ref_lovasz_row(z, y):
    """Berman et al.'s hinge on one row of valid elements: errors 1 − z(2y − 1) sorted in decreasing order,
    J_k = 1 − (Σg − cumsum(g)_k) / (Σg + cumsum(1 − g)_k), ∇_k = J_k − J_{k−1}, loss = Σ relu(e_k) ∇_k."""
    errors = 1 - z * (2 * y - 1)
    e, order = torch.sort(errors, descending=True)
    g = y[order]
    total = g.sum()
    jaccard = 1 - (total - g.cumsum(0)) / (total + (1 - g).cumsum(0))
    grad = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return (F.relu(e) * grad).sum()


def ref_lovasz(z, t, per_image=False):
    z, valid, y = z.double(), t != IGNORE, (t == 1).double()
    n, r = z.shape[:2]
    rows = []
    for c in range(r):
        images = [[i] for i in range(n)] if per_image else [list(range(n))]
        for group in images:
            zs = torch.cat([z[i, c][valid[i, c]] for i in group])
            ys = torch.cat([y[i, c][valid[i, c]] for i in group])
            if len(zs):
                rows.append(ref_lovasz_row(zs, ys))
    return torch.stack(rows).mean() if rows else torch.zeros((), dtype=torch.float64)


CASES = [
    ("bce", lambda: MultiLabelBCELoss(), ref_bce),
    ("bce_pos_weight", lambda: MultiLabelBCELoss(pos_weight=[2.0, 0.5, 3.0]),
     lambda z, t: ref_bce(z, t, [2.0, 0.5, 3.0])),
    ("dice_batch", lambda: MultiLabelDiceLoss(), ref_dice),
    ("dice_per_image", lambda: MultiLabelDiceLoss(per_image=True, smooth=1.0),
     lambda z, t: ref_dice(z, t, smooth=1.0, per_image=True)),
    ("focal", lambda: MultiLabelFocalLoss(), ref_focal),
    ("focal_alpha", lambda: MultiLabelFocalLoss(gamma=1.5, alpha=[0.25, 0.5, 0.9]),
     lambda z, t: ref_focal(z, t, 1.5, [0.25, 0.5, 0.9])),
    ("focal_alpha_scalar", lambda: MultiLabelFocalLoss(alpha=0.25), lambda z, t: ref_focal(z, t, 2.0, 0.25)),
    ("lovasz_flat", lambda: MultiLabelLovaszHingeLoss(), ref_lovasz),
    ("lovasz_per_image", lambda: MultiLabelLovaszHingeLoss(per_image=True), lambda z, t: ref_lovasz(z, t, True)),
]  # fmt: skip


@pytest.mark.parametrize("dim", SHAPES)
@pytest.mark.parametrize(("name", "make", "ref"), CASES, ids=[c[0] for c in CASES])
def test_loss_and_gradient_equal_the_float64_reference(name, make, ref, dim):
    logits, target = inputs(SHAPES[dim], seed=len(name))
    z = logits.clone().requires_grad_()
    value = make()(z, target)
    value.backward()
    z64 = logits.double().requires_grad_()
    expected = ref(z64, target)
    expected.backward()
    assert value.dtype == torch.float32 and value.dim() == 0
    assert value.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    assert expected.item() > 0.05  # a real value, not a trivial 0
    torch.testing.assert_close(z.grad.double(), z64.grad, rtol=1e-4, atol=1e-7)
    ignored = target == IGNORE
    assert ignored.any() and bool((z.grad[ignored] == 0).all())  # ignored elements get no gradient


@pytest.mark.parametrize(("name", "make", "ref"), CASES, ids=[c[0] for c in CASES])
def test_all_ignored_batch_gives_zero_and_a_zero_gradient(name, make, ref):
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.full((2, 3, 4, 4), IGNORE, dtype=torch.uint8)
    value = make()(logits, target)
    value.backward()
    assert value.item() == 0.0 and bool((logits.grad == 0).all())


@pytest.mark.parametrize(("name", "make", "ref"), CASES, ids=[c[0] for c in CASES])
def test_target_dtypes_give_the_same_value_and_half_logits_reduce_in_float32(name, make, ref):
    logits, target = inputs(SHAPES["2d"], seed=3)
    loss = make()
    value = loss(logits, target)
    assert loss(logits, target.long()).item() == pytest.approx(value.item(), rel=1e-6)
    assert loss(logits, target.int()).item() == pytest.approx(value.item(), rel=1e-6)
    half = loss(logits.to(torch.bfloat16), target)
    assert half.dtype == torch.float32
    # bool targets have no ignore value: every element counts, as a uint8 target without ignored elements
    plain = torch.where(target == IGNORE, 0, target)
    assert loss(logits, plain.bool()).item() == pytest.approx(loss(logits, plain).item(), rel=1e-6)


def test_an_ignored_element_changes_nothing_whatever_its_logit():
    logits, target = inputs(SHAPES["3d"], seed=7)
    changed = torch.where(target == IGNORE, torch.full_like(logits, 50.0), logits)
    for loss in (MultiLabelBCELoss(), MultiLabelDiceLoss(), MultiLabelFocalLoss(), MultiLabelLovaszHingeLoss()):
        assert loss(changed, target).item() == pytest.approx(loss(logits, target).item(), rel=1e-6)


def test_focal_with_gamma_zero_is_the_bce_and_alpha_matches_torchvision():
    logits, target = inputs(SHAPES["2d"], seed=11)
    assert MultiLabelFocalLoss(gamma=0.0)(logits, target).item() == pytest.approx(
        MultiLabelBCELoss()(logits, target).item(), rel=1e-6
    )
    torchvision_ops = pytest.importorskip("torchvision.ops")
    plain = torch.where(target == IGNORE, 0, target)  # torchvision has no ignore value
    expected = torchvision_ops.sigmoid_focal_loss(logits, plain.float(), alpha=0.25, gamma=2.0, reduction="mean")
    assert MultiLabelFocalLoss(alpha=0.25)(logits, plain).item() == pytest.approx(expected.item(), rel=1e-5)


def test_dice_of_a_region_empty_in_target_and_prediction_is_perfect_even_without_smoothing():
    logits = torch.full((1, 2, 4, 4), -1e4, requires_grad=True)  # σ = 0 exactly in float32: P = 0
    target = torch.zeros(1, 2, 4, 4, dtype=torch.uint8)
    target[0, 0, :2] = 1
    value = MultiLabelDiceLoss(smooth=0.0)(logits, target)
    value.backward()
    assert value.item() == pytest.approx(0.5)  # region 0 missed entirely (loss 1), region 1 empty and empty (loss 0)
    assert torch.isfinite(logits.grad).all()
    # a false positive on a region absent from the target is punished: Dice = s / (P + s) ≈ 0
    fp = torch.full((1, 1, 4, 4), -1e4)
    fp[0, 0, 0, 0] = 10.0
    assert MultiLabelDiceLoss()(fp, torch.zeros(1, 1, 4, 4, dtype=torch.uint8)).item() == pytest.approx(1.0, abs=1e-4)


def test_lovasz_of_an_empty_region_is_its_largest_hinge_error():
    logits = torch.tensor([[[[-2.0, 0.5, -3.0]]]])
    target = torch.zeros(1, 1, 1, 3, dtype=torch.uint8)
    assert MultiLabelLovaszHingeLoss()(logits, target).item() == pytest.approx(1.5)  # relu(1 + 0.5)


@pytest.mark.parametrize("loss", [MultiLabelBCELoss(), MultiLabelDiceLoss(), MultiLabelFocalLoss(),
                                  MultiLabelLovaszHingeLoss()])  # fmt: skip
def test_wrong_shapes_dtypes_and_values_are_clear_value_errors(loss):
    logits = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"looks like a label map.*Regions.to_multi_hot"):
        loss(logits, torch.zeros(2, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"must equal the logits' \(2, 3, 4, 4\)"):
        loss(logits, torch.zeros(2, 2, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="soft targets are not supported"):
        loss(logits, torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="floating-point"):
        loss(torch.zeros(2, 3, 4, 4, dtype=torch.int64), torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="N×R×spatial"):
        loss(torch.randn(2, 3), torch.zeros(2, 3, dtype=torch.uint8))
    bad = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    bad[0, 1, 0, 0], bad[1, 2, 3, 3] = 2, IGNORE
    with pytest.raises(LabelValueError, match=r"values \[2\] that are neither 0, 1 nor ignore_index=255"):
        loss(logits, bad)


def test_per_region_vectors_are_checked_against_the_regions():
    logits, target = inputs(SHAPES["2d"])
    with pytest.raises(ValueError, match="pos_weight has 2 entries but the logits have R=3 regions"):
        MultiLabelBCELoss(pos_weight=[1.0, 2.0])(logits, target)
    with pytest.raises(ValueError, match="alpha has 2 entries"):
        MultiLabelFocalLoss(alpha=[0.2, 0.3])(logits, target)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        MultiLabelFocalLoss(alpha=1.5)
    with pytest.raises(ValueError, match="gamma"):
        MultiLabelFocalLoss(gamma=-1.0)
    with pytest.raises(ValueError, match="smooth"):
        MultiLabelDiceLoss(smooth=-1.0)
    assert MultiLabelBCELoss(pos_weight=2.0)(logits, target).item() == pytest.approx(
        ref_bce(logits, target, [2.0] * 3).item(), rel=1e-6
    )


def test_compound_takes_the_terms_as_they_are():
    logits, target = inputs(SHAPES["3d"], seed=2)
    bce, dice = MultiLabelBCELoss(), MultiLabelDiceLoss()
    compound = CompoundLoss({"bce": bce, "dice": dice, "lovasz": MultiLabelLovaszHingeLoss()},
                            {"bce": 1.0, "dice": 2.0, "lovasz": 0.5})  # fmt: skip
    total, terms = compound(logits, target, return_terms=True)
    expected = ref_bce(logits, target) + 2 * ref_dice(logits, target) + 0.5 * ref_lovasz(logits, target)
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(terms) == {"bce", "dice", "lovasz"}
    nnunet = multilabel_dice_bce()
    assert nnunet(logits, target).item() == pytest.approx((ref_bce(logits, target) + ref_dice(logits, target)).item(),
                                                          rel=1e-5)  # fmt: skip


def test_the_loss_preset_builds_and_falls_as_the_logits_move_towards_the_target():
    node = OmegaConf.merge({"data": {"ignore_index": IGNORE}},
                           {"loss": OmegaConf.load(CONFIG_DIR / "loss" / "dice_bce_regions.yaml")})  # fmt: skip
    assert node.loss.family == "compound"
    loss = hydra.utils.instantiate(without_family(node.loss))
    assert isinstance(loss, CompoundLoss) and set(loss.terms) == {"bce", "dice"}
    assert loss.terms["bce"].ignore_index == IGNORE and loss.terms["dice"].per_image is False
    logits, target = inputs(SHAPES["2d"], seed=9)
    value = loss(logits, target)
    expected = ref_bce(logits, target) + ref_dice(logits, target)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    towards = torch.where(target == IGNORE, 0.0, 4.0 * (2 * (target == 1).float() - 1))
    assert loss(logits + towards, target) < value


@pytest.mark.parametrize(("name", "make", "ref"), CASES, ids=[c[0] for c in CASES])
def test_no_host_sync_once_the_target_checks_are_done(name, make, ref, monkeypatch):
    from segloss.losses import _checks
    from segloss.utils.host_sync import HostSyncRecorder

    logits, target = inputs(SHAPES["2d"])
    logits.requires_grad_()
    loss = make()
    monkeypatch.setattr(_checks.TargetChecks, "due", lambda self, target: False)  # as after the first accelerator steps
    with HostSyncRecorder() as rec:
        loss(logits, target).backward()
    assert rec.calls == [], f"{name}: {rec.calls}"
