"""Every loss against an independent float64 reference: explicit loops over images and classes,
boolean indexing of the non-ignored pixels, one-hot tensors — none of the library's vectorised code."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from segloss import losses as L

IGNORE = 255


def make_inputs(n=2, c=4, spatial=(5, 6), seed=0, ignore_share=0.2, empty_class=True):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, *spatial, generator=g, dtype=torch.float64) * 2
    high = max(c, 2)
    target = torch.randint(0, high, (n, *spatial), generator=g)
    if empty_class and c > 2:
        target[target == c - 1] = 0  # the last class is absent from the ground truth
    target[torch.rand(n, *spatial, generator=g) < ignore_share] = IGNORE
    return logits, target


def probs_onehot(logits, target):
    """(p, y) as N×K×S float64 with K = C (softmax) or K = 1 foreground (sigmoid), S flattened."""
    n, c = logits.shape[:2]
    if c == 1:
        p = logits.sigmoid().reshape(n, 1, -1)
        y = (target == 1).double().reshape(n, 1, -1)
    else:
        p = logits.softmax(1).reshape(n, c, -1)
        y = torch.stack([(target == k).double() for k in range(c)], 1).reshape(n, c, -1)
    return p, y


def region_reference(logits, target, per_image, per_class_fn, classes="all", include_background=True, squared=False):
    p, y = probs_onehot(logits, target)
    valid = (target != IGNORE).reshape(target.shape[0], -1)
    groups = [[i] for i in range(p.shape[0])] if per_image else [list(range(p.shape[0]))]
    first = 1 if (not include_background and p.shape[1] > 1) else 0
    group_losses = []
    for images in groups:
        pv = torch.cat([p[i][:, valid[i]] for i in images], 1)
        yv = torch.cat([y[i][:, valid[i]] for i in images], 1)
        if pv.shape[1] == 0:
            continue  # no valid pixel: counts nowhere
        losses = []
        for k in range(first, p.shape[1]):
            inter = (pv[k] * yv[k]).sum()
            p_sum = (pv[k] ** 2).sum() if squared else pv[k].sum()
            ground = yv[k].sum()
            if classes == "present" and ground == 0:
                continue
            losses.append(per_class_fn(inter, p_sum, ground))
        if losses:
            group_losses.append(sum(losses) / len(losses))
    return sum(group_losses) / len(group_losses) if group_losses else torch.tensor(0.0, dtype=torch.float64)


S = 1e-5
DICE = lambda i, p, g: 1 - (2 * i + S) / (p + g + S)  # noqa: E731
LOG_DICE = lambda i, p, g: -torch.log((2 * i + S) / (p + g + S))  # noqa: E731
JACCARD = lambda i, p, g: 1 - (i + S) / (p + g - i + S)  # noqa: E731


def tversky(alpha, beta, gamma=1.0):
    return lambda i, p, g: (1 - (i + S) / (i + alpha * (p - i) + beta * (g - i) + S)) ** (1 / gamma)


CASES = [
    ("dice", L.DiceLoss(), DICE, {}),
    ("dice_squared", L.DiceLoss(squared=True), DICE, {"squared": True}),
    ("dice_present_nobg", L.DiceLoss(classes="present", include_background=False), DICE,
     {"classes": "present", "include_background": False}),
    ("log_dice", L.DiceLoss(log=True), LOG_DICE, {}),
    ("jaccard", L.JaccardLoss(), JACCARD, {}),
    ("tversky", L.TverskyLoss(alpha=0.3, beta=0.7), tversky(0.3, 0.7), {}),
    ("focal_tversky", L.FocalTverskyLoss(alpha=0.3, beta=0.7, gamma=4 / 3), tversky(0.3, 0.7, 4 / 3), {}),
]  # fmt: skip


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("shape", [(2, 4, (5, 6)), (2, 3, (3, 4, 5)), (3, 1, (6, 7))], ids=["2d", "3d", "binary"])
@pytest.mark.parametrize(("name", "loss", "fn", "opts"), CASES, ids=[c[0] for c in CASES])
def test_region_losses_match_reference(name, loss, fn, opts, shape, per_image):
    n, c, spatial = shape
    logits, target = make_inputs(n, c, spatial, seed=hash(name) % 1000)
    loss.per_image = per_image
    expected = region_reference(logits, target, per_image, fn, **opts)
    assert loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-9, abs=1e-12)


ZERO_SMOOTH = {
    "dice": (lambda: L.DiceLoss(smooth=0.0), lambda i, p, g: 1 - 2 * i / (p + g)),
    "jaccard": (lambda: L.JaccardLoss(smooth=0.0), lambda i, p, g: 1 - i / (p + g - i)),
    "tversky": (lambda: L.TverskyLoss(smooth=0.0), lambda i, p, g: 1 - i / (i + 0.3 * (p - i) + 0.7 * (g - i))),
}


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("name", sorted(ZERO_SMOOTH))
def test_an_absent_class_with_zero_probability_contributes_nothing_at_smooth_zero(name, per_image):
    # smooth=0, classes="present": class 3 is absent from the target and its probability is exactly 0, so
    # its score is 0/0. It must count nowhere: a finite loss equal to the mean over present classes, and a
    # finite gradient (NaN × a zero class weight used to stay NaN).
    make, fn = ZERO_SMOOTH[name]
    logits, target = make_inputs(2, 4, (5, 6), seed=3)
    logits[:, 3] = -1e4  # softmax underflows to exactly 0
    assert logits.softmax(1)[:, 3].max() == 0 and not (target == 3).any()
    logits.requires_grad_()
    loss = make()
    loss.per_image, loss.classes = per_image, "present"
    value = loss(logits, target)
    value.backward()
    expected = region_reference(logits.detach(), target, per_image, fn, classes="present")
    assert torch.isfinite(value) and value.item() == pytest.approx(expected.item(), rel=1e-9)
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # classes="all": absent from target *and* prediction is a perfect score at the limit s → 0⁺ (loss 0)
    loss.classes = "all"
    perfect = lambda i, p, g: torch.zeros((), dtype=i.dtype) if p + g == 0 else fn(i, p, g)  # noqa: E731
    expected = region_reference(logits.detach(), target, per_image, perfect, classes="all")
    assert loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-9)


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("shape", [(2, 4, (5, 6)), (2, 3, (3, 4, 5)), (2, 1, (6, 7))], ids=["2d", "3d", "binary"])
def test_generalized_dice_matches_reference(shape, per_image):
    n, c, spatial = shape
    logits, target = make_inputs(n, c, spatial, seed=7)
    p, y = probs_onehot(logits, target)
    valid = (target != IGNORE).reshape(n, -1)
    groups = [[i] for i in range(n)] if per_image else [list(range(n))]
    values = []
    for images in groups:
        pv = torch.cat([p[i][:, valid[i]] for i in images], 1)
        yv = torch.cat([y[i][:, valid[i]] for i in images], 1)
        ground = yv.sum(1)
        w = torch.tensor([1 / g**2 if g > 0 else math.inf for g in ground.tolist()], dtype=torch.float64)
        finite = w[torch.isfinite(w)]
        w[~torch.isfinite(w)] = finite.max() if len(finite) else 0.0
        num = 2 * (w * (pv * yv).sum(1)).sum() + S
        den = (w * (pv.sum(1) + ground)).sum() + S
        values.append(1 - num / den)
    expected = sum(values) / len(values)
    got = L.GeneralizedDiceLoss(per_image=per_image)(logits, target)
    assert got.item() == pytest.approx(expected.item(), rel=1e-9)


def lovasz_reference(errors_list, fg_list):
    """Berman et al.'s algorithm for one class: sort errors, Lovász gradient, dot product."""
    errors, fg = torch.tensor(errors_list, dtype=torch.float64), torch.tensor(fg_list, dtype=torch.float64)
    order = torch.argsort(errors, descending=True)
    e, g = errors[order], fg[order]
    total = g.sum()
    jaccard = []
    for k in range(len(g)):
        inter = total - g[: k + 1].sum()
        union = total + (1 - g[: k + 1]).sum()
        jaccard.append(1 - inter / union)
    grad = [jaccard[0]] + [jaccard[k] - jaccard[k - 1] for k in range(1, len(jaccard))]
    return float(sum(e[k] * grad[k] for k in range(len(g))))


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("classes", ["present", "all"])
@pytest.mark.parametrize("shape", [(2, 4, (5, 6)), (2, 3, (3, 4, 5)), (2, 1, (6, 7))], ids=["2d", "3d", "binary"])
def test_lovasz_softmax_matches_reference(shape, classes, per_image):
    n, c, spatial = shape
    logits, target = make_inputs(n, c, spatial, seed=11)
    probs = logits.softmax(1) if c > 1 else torch.cat([1 - logits.sigmoid(), logits.sigmoid()], 1)
    k_classes = probs.shape[1]
    groups = [[i] for i in range(n)] if per_image else [list(range(n))]
    group_values = []
    for images in groups:
        per_class = []
        for k in range(k_classes):
            errors, fg = [], []
            for i in images:
                valid = target[i] != IGNORE
                y = (target[i][valid] == k).double()
                errors += (y - probs[i, k][valid]).abs().tolist()
                fg += y.tolist()
            if not errors or (classes == "present" and sum(fg) == 0):
                continue
            per_class.append(lovasz_reference(errors, fg))
        if per_class:
            group_values.append(sum(per_class) / len(per_class))
    expected = sum(group_values) / len(group_values)
    got = L.LovaszSoftmaxLoss(per_image=per_image, classes=classes)(logits, target)
    assert got.item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("per_image", [True, False])
def test_lovasz_hinge_matches_reference(per_image):
    logits, target = make_inputs(3, 1, (6, 7), seed=5)
    groups = [[i] for i in range(3)] if per_image else [[0, 1, 2]]
    values = []
    for images in groups:
        errors, fg = [], []
        for i in images:
            valid = target[i] != IGNORE
            y = (target[i][valid] == 1).double()
            errors += (1 - logits[i, 0][valid] * (2 * y - 1)).tolist()
            fg += y.tolist()
        order = sorted(range(len(errors)), key=lambda j: -errors[j])
        relu = [max(errors[j], 0.0) for j in order]
        values.append(lovasz_reference(relu, [fg[j] for j in order]))
    expected = sum(values) / len(values)
    assert L.LovaszHingeLoss(per_image=per_image)(logits, target).item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)])
def test_mse_matches_reference(spatial):
    logits, target = make_inputs(2, 4, spatial, seed=2)
    p, y = probs_onehot(logits, target)
    valid = (target != IGNORE).reshape(2, -1)
    expected = torch.cat([((p[i] - y[i]) ** 2)[:, valid[i]].flatten() for i in range(2)]).mean()
    assert L.MSELoss()(logits, target).item() == pytest.approx(expected.item(), rel=1e-9)
    # no ignored pixels: torch's own mse_loss on probabilities and one-hot
    clean = target.clamp(max=3)
    assert L.MSELoss()(logits, clean).item() == pytest.approx(
        F.mse_loss(logits.softmax(1), F.one_hot(clean, 4).movedim(-1, 1).double()).item(), rel=1e-9
    )


def test_binary_mse_uses_sigmoid():
    logits, target = make_inputs(2, 1, (6, 7), seed=3)
    valid = target != IGNORE
    expected = ((logits[:, 0].sigmoid() - (target == 1).double()) ** 2)[valid].mean()
    assert L.MSELoss()(logits, target).item() == pytest.approx(expected.item(), rel=1e-9)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_kl_matches_reference(temperature, smoothing):
    logits, target = make_inputs(2, 4, (5, 6), seed=4)
    valid = target != IGNORE
    log_p = (logits / temperature).log_softmax(1)
    q = F.one_hot(target.clamp(max=3), 4).movedim(-1, 1).double() * (1 - smoothing) + smoothing / 4
    per_pixel = (torch.xlogy(q, q) - q * log_p).sum(1)
    expected = per_pixel[valid].mean() * temperature**2
    got = L.KLDivLoss(temperature=temperature, label_smoothing=smoothing)(logits, target)
    assert got.item() == pytest.approx(expected.item(), rel=1e-9)


def test_kl_hard_targets_equal_ce_and_soft_targets_equal_torch():
    logits, target = make_inputs(2, 4, (5, 6), seed=6)
    assert L.KLDivLoss()(logits, target).item() == pytest.approx(L.CrossEntropyLoss()(logits, target).item(), rel=1e-9)
    q = torch.randn(2, 4, 5, 6, dtype=torch.float64).softmax(1)
    q[0, :, 0, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)  # zeros: 0·log 0 = 0
    torch_kl = F.kl_div(logits.log_softmax(1), q, reduction="sum") / (2 * 5 * 6)
    assert L.KLDivLoss()(logits, q).item() == pytest.approx(torch_kl.item(), rel=1e-9)


def test_kl_is_not_symmetric():
    logits = torch.tensor([[[2.0], [0.0]]], dtype=torch.float64).unsqueeze(-1)  # 1×2×1×1
    q = torch.tensor([[[0.5], [0.5]]], dtype=torch.float64).unsqueeze(-1)
    p = logits.softmax(1)
    forward = L.KLDivLoss()(logits, q).item()  # KL(q ‖ p)
    backward = float((p * (p.log() - q.log())).sum())  # KL(p ‖ q)
    assert forward == pytest.approx(float((q * (q.log() - p.log())).sum()), rel=1e-12)
    assert abs(forward - backward) > 0.05


def test_bce_matches_torch_on_valid_pixels():
    logits, target = make_inputs(2, 1, (6, 7), seed=8)
    valid = target != IGNORE
    for pos_weight in (None, 3.0):
        pw = None if pos_weight is None else torch.tensor(pos_weight, dtype=torch.float64)
        expected = F.binary_cross_entropy_with_logits(logits[:, 0][valid], target[valid].double(), pos_weight=pw)
        assert L.BinaryCrossEntropyLoss(pos_weight=pos_weight)(logits, target).item() == pytest.approx(
            expected.item(), rel=1e-9
        )


def _ce_values(logits, target, weight=None):
    valid = target != IGNORE
    ce = F.cross_entropy(logits, target.clamp(max=logits.shape[1] - 1), weight=weight, reduction="none")
    return (
        ce[valid],
        target[valid],
        logits.softmax(1).gather(1, target.clamp(max=logits.shape[1] - 1)[:, None])[:, 0][valid],
    )


@pytest.mark.parametrize(("thresh", "min_kept"), [(0.7, 10), (0.7, 10_000), (0.3, 5), (0.05, 20)])
def test_ohem_matches_reference(thresh, min_kept):
    logits, target = make_inputs(2, 4, (6, 7), seed=9)
    weight = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=torch.float64)
    ce_plain, labels, p_true = _ce_values(logits, target)
    w = weight[labels]
    if int((p_true < thresh).sum()) >= min_kept:
        keep = p_true < thresh
    else:
        keep = torch.zeros_like(p_true, dtype=torch.bool)
        keep[torch.argsort(p_true)[: min(min_kept, len(p_true))]] = True
    expected = (w * ce_plain)[keep].sum() / w[keep].sum()
    got = L.OhemCrossEntropyLoss(thresh=thresh, min_kept=min_kept, weight=weight.tolist())(logits, target)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("k", [10.0, 33.0, 100.0])
def test_topk_matches_reference(k):
    logits, target = make_inputs(2, 4, (6, 7), seed=10)
    ce, _, _ = _ce_values(logits, target)
    count = math.ceil(len(ce) * k / 100)
    expected = ce.sort(descending=True).values[:count].mean()
    assert L.TopKCrossEntropyLoss(k=k)(logits, target).item() == pytest.approx(expected.item(), rel=1e-9)


def test_compound_is_the_weighted_sum_and_reports_terms():
    logits, target = make_inputs(2, 4, (5, 6), seed=12)
    loss = L.CompoundLoss({"ce": L.CrossEntropyLoss(), "dice": L.DiceLoss()}, {"ce": 1.0, "dice": 0.5})
    total, terms = loss(logits, target, return_terms=True)
    assert set(terms) == {"ce", "dice"}
    assert total.item() == pytest.approx(terms["ce"].item() + 0.5 * terms["dice"].item(), rel=1e-12)
    assert terms["dice"].item() == pytest.approx(L.DiceLoss()(logits, target).item(), rel=1e-12)
    with pytest.raises(ValueError, match=r"\['lovasz'\] that are not in terms"):
        L.CompoundLoss({"ce": L.CrossEntropyLoss()}, {"lovasz": 1.0})


def test_worked_binary_example_by_hand():
    """3×3 binary image, one ignored pixel. Probabilities p, target y:
    p = .9 .8 .1 | .7 .2 .1 | .6 .4 .3      y = 1 1 0 | 1 0 0 | 1 0 ignore
    I = .9+.8+.7+.6 = 3.0, P = .9+.8+.1+.7+.2+.1+.6+.4 = 3.8, G = 4 → Dice = 6/7.8 = 0.769231 (s ≈ 0)
    BCE = [−ln .9 −ln .8 −ln .7 −ln .6 −ln .9 −ln .8 −ln .9 −ln .6] / 8 = 0.267586."""
    p = torch.tensor([[0.9, 0.8, 0.1], [0.7, 0.2, 0.1], [0.6, 0.4, 0.3]], dtype=torch.float64)
    logits = torch.log(p / (1 - p)).view(1, 1, 3, 3)
    target = torch.tensor([[[1, 1, 0], [1, 0, 0], [1, 0, IGNORE]]])
    dice = (2 * 3.0 + S) / (3.8 + 4 + S)
    assert L.DiceLoss()(logits, target).item() == pytest.approx(1 - dice, rel=1e-9)
    assert 1 - dice == pytest.approx(0.230769, abs=1e-6)
    bce = -sum(math.log(v) for v in (0.9, 0.8, 0.7, 0.6, 0.9, 0.8, 0.9, 0.6)) / 8
    assert bce == pytest.approx(0.267586, abs=1e-6)
    assert L.BinaryCrossEntropyLoss()(logits, target).item() == pytest.approx(bce, rel=1e-9)
    # Jaccard: I / (P + G − I) = 3 / 4.8; Tversky(α=.3 FP, β=.7 FN): FP = .8, FN = 1 → 3 / (3 + .24 + .7)
    assert L.JaccardLoss()(logits, target).item() == pytest.approx(1 - 3 / 4.8, rel=1e-5)
    assert L.TverskyLoss()(logits, target).item() == pytest.approx(1 - 3 / 3.94, rel=1e-5)


@pytest.mark.parametrize("method", ["inverse", "median_frequency", "enet"])
def test_class_weights_by_hand(method):
    counts = torch.tensor([600.0, 300.0, 100.0, 0.0])
    image_pixels = torch.tensor([1000.0, 600.0, 400.0, 0.0])  # pixels of the images containing each class
    got = L.class_weights(counts, method, image_pixels)
    if method == "inverse":  # N / (C · n_c), N = 1000, C = 4
        expected = [1000 / 2400, 1000 / 1200, 1000 / 400, 0.0]
    elif method == "median_frequency":  # freq = .6, .5, .25 → median .5
        expected = [0.5 / 0.6, 1.0, 0.5 / 0.25, 0.0]
    else:  # 1 / ln(1.02 + n_c/N)
        expected = [1 / math.log(1.02 + f) for f in (0.6, 0.3, 0.1, 0.0)]
    assert got.tolist() == pytest.approx(expected, rel=1e-6)


REGION_LOSSES = [
    ("Dice", {}),
    ("Dice", {"per_image": True, "classes": "present"}),
    ("Dice", {"squared": True, "log": True}),
    ("Jaccard", {"per_image": True}),
    ("Tversky", {"alpha": 0.3, "beta": 0.7}),
    ("FocalTversky", {"per_image": True}),
    ("GeneralizedDice", {}),
    ("GeneralizedDice", {"per_image": True}),
]


@pytest.mark.parametrize(("name", "kwargs"), REGION_LOSSES)
def test_the_one_hot_path_of_accelerators_gives_the_scatter_paths_values_and_gradients(name, kwargs, monkeypatch):
    """Region sums run as one-hot reductions on accelerators and as ``scatter_add`` on the CPU: same numbers."""
    from segloss.losses import _region

    torch.manual_seed(0)
    logits = torch.randn(3, 5, 12, 10)
    target = torch.randint(0, 5, (3, 12, 10))
    target[0, :4] = 255
    target[2] = 1  # an image with one class only
    results = []
    for one_hot in (False, True):
        monkeypatch.setattr(_region, "one_hot_sums", lambda device, on=one_hot: on)
        x = logits.clone().requires_grad_()
        value = getattr(L, f"{name}Loss")(**kwargs)(x, target)
        value.backward()
        results.append((value.detach(), x.grad))
    (scatter_value, scatter_grad), (onehot_value, onehot_grad) = results
    torch.testing.assert_close(onehot_value, scatter_value, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(onehot_grad, scatter_grad, rtol=1e-5, atol=1e-8)
    assert scatter_value.item() > 0 and scatter_grad.abs().sum() > 0
