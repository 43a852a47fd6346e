"""Loss library: agreement with MONAI/smp/torch where conventions match, gradients, properties,
half precision and the errors of the contract."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from segloss import losses as L

IGNORE = 255
SOFTMAX_LOSSES = {
    "ce": lambda: L.CrossEntropyLoss(),
    "wce": lambda: L.CrossEntropyLoss(weight=[1.0, 2.0, 0.5]),
    "focal": lambda: L.FocalLoss(gamma=2.0, alpha=[0.5, 1.0, 2.0]),
    "focal_g05": lambda: L.FocalLoss(gamma=0.5),
    "mse": lambda: L.MSELoss(),
    "kl_ls": lambda: L.KLDivLoss(temperature=2.0, label_smoothing=0.1),
    "dice": lambda: L.DiceLoss(),
    "log_dice": lambda: L.DiceLoss(log=True, per_image=True),
    "gdice": lambda: L.GeneralizedDiceLoss(),
    "jaccard": lambda: L.JaccardLoss(classes="present"),
    "tversky": lambda: L.TverskyLoss(),
    "focal_tversky": lambda: L.FocalTverskyLoss(),
    "lovasz": lambda: L.LovaszSoftmaxLoss(),
    "ohem": lambda: L.OhemCrossEntropyLoss(min_kept=5),
    "topk": lambda: L.TopKCrossEntropyLoss(k=30.0),
    "dice_ce": lambda: L.CompoundLoss({"ce": L.CrossEntropyLoss(), "dice": L.DiceLoss()}),
}
BINARY_LOSSES = {
    "bce": lambda: L.BinaryCrossEntropyLoss(pos_weight=2.0),
    "focal": lambda: L.FocalLoss(alpha=0.25),
    "dice": lambda: L.DiceLoss(),
    "lovasz_hinge": lambda: L.LovaszHingeLoss(),
    "lovasz": lambda: L.LovaszSoftmaxLoss(),
    "mse": lambda: L.MSELoss(),
}
ALL = [("softmax", k, f) for k, f in SOFTMAX_LOSSES.items()] + [("binary", k, f) for k, f in BINARY_LOSSES.items()]
IDS = [f"{kind}-{name}" for kind, name, _ in ALL]


def inputs(kind, n=2, spatial=(4, 5), seed=0, dtype=torch.float64, ignore=True):
    g = torch.Generator().manual_seed(seed)
    c = 3 if kind == "softmax" else 1
    logits = torch.randn(n, c, *spatial, generator=g, dtype=dtype)
    target = torch.randint(0, max(c, 2), (n, *spatial), generator=g)
    if ignore:
        target[:, 0, 0] = IGNORE
    return logits, target


# --- agreement with other libraries where the convention is the same (no ignored pixels) --------


def test_dice_generalized_dice_tversky_focal_match_monai():
    monai = pytest.importorskip("monai.losses")
    logits, target = inputs("softmax", n=3, spatial=(6, 7), ignore=False, dtype=torch.float32)
    target[target == 2] = 1  # an empty class
    t = target.unsqueeze(1)
    common = {"softmax": True, "to_onehot_y": True, "smooth_nr": 1e-5, "smooth_dr": 1e-5}
    for batch in (True, False):
        ref = monai.DiceLoss(batch=batch, **common)(logits, t)
        assert L.DiceLoss(per_image=not batch)(logits, target).item() == pytest.approx(ref.item(), rel=1e-5)
        ref = monai.GeneralizedDiceLoss(batch=batch, **common)(logits, t)
        assert L.GeneralizedDiceLoss(per_image=not batch)(logits, target).item() == pytest.approx(ref.item(), rel=1e-5)
        ref = monai.TverskyLoss(alpha=0.3, beta=0.7, batch=batch, **common)(logits, t)
        ours = L.TverskyLoss(alpha=0.3, beta=0.7, per_image=not batch)(logits, target)
        assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    # MONAI's softmax focal averages over N·C·S elements: ours (mean over pixels) is C times larger.
    ref = monai.FocalLoss(use_softmax=True, to_onehot_y=True, gamma=2.0)(logits, t)
    assert L.FocalLoss(gamma=2.0)(logits, target).item() == pytest.approx(3 * ref.item(), rel=1e-5)


def test_lovasz_and_jaccard_match_smp():
    smp_losses = pytest.importorskip("segmentation_models_pytorch.losses")
    logits, target = inputs("softmax", n=2, spatial=(6, 7), ignore=False, dtype=torch.float32)
    target[0, 0, :3] = IGNORE
    for per_image in (False, True):
        ref = smp_losses.LovaszLoss("multiclass", per_image=per_image, ignore_index=IGNORE)(logits, target)
        assert L.LovaszSoftmaxLoss(per_image=per_image)(logits, target).item() == pytest.approx(ref.item(), rel=1e-5)
    clean = target.clamp(max=2)  # every class present: smp's masking of absent classes does not apply
    ref = smp_losses.JaccardLoss("multiclass", from_logits=True)(logits, clean)
    assert L.JaccardLoss(smooth=0.0)(logits, clean).item() == pytest.approx(ref.item(), rel=1e-5)


# --- gradients ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "name", "factory"), ALL, ids=IDS)
def test_gradcheck_float64(kind, name, factory):
    logits, target = inputs(kind, n=2, spatial=(3, 4), seed=1)
    logits.requires_grad_(True)
    loss = factory()
    assert torch.autograd.gradcheck(lambda z: loss(z, target), (logits,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize(("kind", "name", "factory"), ALL, ids=IDS)
def test_all_ignored_gives_zero_and_zero_gradient(kind, name, factory):
    logits, target = inputs(kind, seed=2, dtype=torch.float32)
    logits.requires_grad_(True)
    value = factory()(logits, torch.full_like(target, IGNORE))
    value.backward()
    assert value.item() == 0.0 and torch.count_nonzero(logits.grad) == 0


@pytest.mark.parametrize(("kind", "name", "factory"), ALL, ids=IDS)
@pytest.mark.parametrize("case", ["extreme", "empty_class", "single_image"])
def test_finite_value_and_gradient(kind, name, factory, case):
    logits, target = inputs(kind, n=1 if case == "single_image" else 2, seed=3, dtype=torch.float32)
    if case == "extreme":
        logits = torch.sign(logits) * 1e4
    if case == "empty_class":
        target[target == 1] = 0
    logits.requires_grad_(True)
    value = factory()(logits, target)
    value.backward()
    assert value.dim() == 0 and torch.isfinite(value) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("kind", "name", "factory"), ALL, ids=IDS)
def test_half_precision_inputs_reduce_in_float32(kind, name, factory, dtype):
    logits, target = inputs(kind, n=2, spatial=(64, 64), seed=4, dtype=torch.float32)
    loss = factory()
    low = logits.to(dtype)
    value = loss(low, target)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    # the same value as the rounded inputs in float32, and close to the float32 inputs
    assert value.item() == pytest.approx(loss(low.float(), target).item(), rel=1e-5, abs=1e-6)
    assert value.item() == pytest.approx(loss(logits, target).item(), rel=3e-2, abs=1e-3)


def test_dice_sums_do_not_overflow_in_fp16():
    logits = torch.zeros(2, 2, 512, 512, dtype=torch.float16)  # Σ p over 2·512² pixels ≫ 65504
    target = torch.zeros(2, 512, 512, dtype=torch.long)
    value = L.DiceLoss()(logits, target)
    # p = 0.5 everywhere, M = 2·512² pixels of class 0: Dice_0 = 2·0.5M / (0.5M + M) = 2/3, and the
    # empty class 1 predicted at 0.5 has Dice_1 = s / (0.5M + s) ≈ 0 → loss = ((1 − 2/3) + 1) / 2 = 2/3
    assert torch.isfinite(value) and value.item() == pytest.approx(2 / 3, rel=1e-5)


# --- properties (hypothesis) ---------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 20.0))
def test_non_negative_and_ignored_logits_do_not_matter(seed, scale):
    for kind, losses in (("softmax", SOFTMAX_LOSSES), ("binary", BINARY_LOSSES)):
        logits, target = inputs(kind, n=2, spatial=(4, 5), seed=seed)
        logits = logits * scale
        changed = logits.clone()
        changed[:, :, 0, 0] = torch.randn_like(changed[:, :, 0, 0]) * 50  # pixel (0, 0) is ignored
        for name, factory in losses.items():
            loss = factory()
            value = loss(logits, target)
            assert value.item() >= -1e-12, name
            assert value.item() == pytest.approx(loss(changed, target).item(), rel=1e-9, abs=1e-12), name


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_batch_permutation_invariance(seed):
    logits, target = inputs("softmax", n=3, spatial=(4, 5), seed=seed)
    perm = torch.tensor([2, 0, 1])
    for name, factory in SOFTMAX_LOSSES.items():
        loss = factory()
        assert loss(logits, target).item() == pytest.approx(loss(logits[perm], target[perm]).item(), rel=1e-9), name


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_minimum_at_a_perfect_prediction(seed):
    """Losses with a minimum of 0 reach it (to float64 precision) when the prediction is one-hot-sure."""
    _, target = inputs("softmax", n=2, spatial=(4, 5), seed=seed)
    sure = F.one_hot(target.clamp(max=2), 3).movedim(-1, 1).double() * 60 - 30
    for name in ("ce", "wce", "focal", "mse", "dice", "jaccard", "tversky", "focal_tversky", "lovasz", "topk"):
        assert SOFTMAX_LOSSES[name]()(sure, target).item() == pytest.approx(0.0, abs=1e-9), name
    wrong = -sure
    for name in ("ce", "dice", "lovasz"):
        assert SOFTMAX_LOSSES[name]()(wrong, target).item() > 0.5, name


# --- the contract's errors -------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "name", "factory"), ALL, ids=IDS)
def test_contract_errors(kind, name, factory):
    loss = factory()
    logits, target = inputs(kind, seed=5, dtype=torch.float32)
    bad = target.clone()
    bad[0, 1, 1] = 7
    with pytest.raises(ValueError, match=r"values \[7\]"):
        loss(logits, bad)
    with pytest.raises(ValueError, match="does not match"):
        loss(logits, target[:, :-1])
    # float targets are soft targets for KL (then the shape must be N×C×S…), an error elsewhere
    with pytest.raises(ValueError, match="soft target shape" if name == "kl_ls" else "integer class-index"):
        loss(logits, target.float())


def test_vector_length_errors():
    logits, target = inputs("softmax", dtype=torch.float32)
    for loss in (L.CrossEntropyLoss(weight=[1.0, 2.0]), L.FocalLoss(alpha=[1.0]), L.OhemCrossEntropyLoss(weight=[1.0]),
                 L.TopKCrossEntropyLoss(weight=[1.0, 1.0, 1.0, 1.0])):  # fmt: skip
        with pytest.raises(ValueError, match="C=3"):
            loss(logits, target)
    with pytest.raises(ValueError, match="C = 1"):
        L.BinaryCrossEntropyLoss()(logits, target)
    with pytest.raises(ValueError, match="classes='some'"):
        L.DiceLoss(classes="some")
