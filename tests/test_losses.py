import math

import pytest
import torch
import torch.nn.functional as F

from segloss.losses import CrossEntropyLoss, FocalLoss


def _inputs(n=2, c=5, spatial=(6, 7), ignore_share=0.2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, *spatial, generator=g, dtype=dtype) * 3
    target = torch.randint(0, c, (n, *spatial), generator=g)
    target[torch.rand(n, *spatial, generator=g) < ignore_share] = 255
    target[target == c - 1] = 0  # class c-1 is empty
    return logits, target


@pytest.mark.parametrize("spatial", [(6, 7), (3, 4, 5)])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_ce_equals_torch_with_weights_and_ignore(spatial, smoothing):
    logits, target = _inputs(spatial=spatial)
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0, 0.7])
    ours = CrossEntropyLoss(weight=weight.tolist(), label_smoothing=smoothing)(logits.float(), target)
    ref = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=255, label_smoothing=smoothing)
    assert ours.dtype == torch.float32 and ours.dim() == 0
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_ce_worked_example_by_hand():
    # one image, 2 classes, 3 pixels: logits (0,0), (2,0), (0,1) with labels 0, 1, ignore
    logits = torch.tensor([[[0.0, 2.0, 0.0], [0.0, 0.0, 1.0]]]).unsqueeze(-1)  # 1×2×3×1
    target = torch.tensor([[0, 1, 255]]).unsqueeze(-1)
    # pixel 1: −log(1/2) = ln 2; pixel 2: −log(e^0/(e^2+e^0)) = ln(1+e^2)
    expected = (math.log(2) + math.log(1 + math.e**2)) / 2
    assert CrossEntropyLoss()(logits, target).item() == pytest.approx(expected, rel=1e-6)
    weighted = (1.0 * math.log(2) + 3.0 * math.log(1 + math.e**2)) / (1.0 + 3.0)
    assert CrossEntropyLoss(weight=[1.0, 3.0])(logits, target).item() == pytest.approx(weighted, rel=1e-6)


@pytest.mark.parametrize("loss", [CrossEntropyLoss(), FocalLoss(), FocalLoss(alpha=[1, 2, 1, 1, 1])])
def test_all_ignored_gives_zero_and_zero_gradient(loss):
    logits = torch.randn(1, 5, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), 255)
    value = loss(logits, target)
    value.backward()
    assert value.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_focal_gamma_zero_is_ce():
    logits, target = _inputs()
    assert torch.allclose(FocalLoss(gamma=0.0)(logits, target), CrossEntropyLoss()(logits, target), atol=1e-6)


@pytest.mark.parametrize("spatial", [(6, 7), (3, 4, 5)])
def test_softmax_focal_matches_float64_reference(spatial):
    logits, target = _inputs(spatial=spatial, seed=3)
    alpha = torch.tensor([0.25, 1.0, 2.0, 0.5, 1.5], dtype=torch.float64)
    p = logits.softmax(1)
    valid = target != 255
    t = target.clamp(max=4) * valid
    pt = p.gather(1, t.unsqueeze(1)).squeeze(1)
    ref = (-(alpha[t]) * (1 - pt) ** 2 * pt.log())[valid].mean()
    ours = FocalLoss(gamma=2.0, alpha=alpha.tolist())(logits.float(), target)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)


def test_binary_focal_matches_float64_reference():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 1, 5, 5, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, 2, (2, 5, 5), generator=g)
    target[0, 0] = 255
    valid = target != 255
    p = logits[:, 0].sigmoid()
    y = target.clamp(max=1).double()
    pt = torch.where(y == 1, p, 1 - p)
    at = torch.where(y == 1, 0.25, 0.75)
    ref = (-at * (1 - pt) ** 2 * pt.log())[valid].mean()
    assert FocalLoss(alpha=0.25)(logits, target).item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize("loss", [CrossEntropyLoss(), FocalLoss()])
def test_extreme_logits_finite_with_finite_gradient(loss):
    logits = (torch.randint(0, 2, (1, 3, 4, 4)).float() * 2 - 1) * 1e4
    logits.requires_grad_(True)
    value = loss(logits, torch.randint(0, 3, (1, 4, 4)))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("loss", [CrossEntropyLoss(), FocalLoss()])
def test_half_precision_logits_reduce_in_float32(dtype, loss):
    logits, target = _inputs(c=19, spatial=(64, 64), seed=2, dtype=torch.float32)
    low = logits.to(dtype)
    value = loss(low, target)
    assert value.dtype == torch.float32
    assert torch.allclose(value, loss(low.float(), target))  # the same value as the rounded inputs in fp32
    assert torch.allclose(value, loss(logits, target), rtol=2e-2)


def test_bad_target_values_are_named():
    logits = torch.randn(1, 3, 2, 2)
    with pytest.raises(ValueError, match=r"values \[3, 7\] outside \[0, 3\)"):
        CrossEntropyLoss()(logits, torch.tensor([[[0, 3], [7, 255]]]))
    with pytest.raises(ValueError, match=r"values \[-1\]"):
        FocalLoss()(logits, torch.tensor([[[0, -1], [1, 2]]]))


def test_shape_dtype_and_weight_errors():
    logits = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"target shape \(2, 5, 4\) does not match"):
        CrossEntropyLoss()(logits, torch.zeros(2, 5, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer class-index"):
        CrossEntropyLoss()(logits, torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="weight has 2 entries but the logits have C=3"):
        CrossEntropyLoss(weight=[1.0, 2.0])(logits, torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="give one α per class"):
        FocalLoss(alpha=0.25)(logits, torch.zeros(2, 4, 4, dtype=torch.long))


def test_value_check_can_be_switched_off():
    logits = torch.randn(1, 3, 2, 2)
    target = torch.tensor([[[0, 1], [2, 255]]])
    assert torch.allclose(CrossEntropyLoss(check_values=False)(logits, target), CrossEntropyLoss()(logits, target))
