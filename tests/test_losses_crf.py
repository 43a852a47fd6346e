"""DenseCRFLoss (Tang et al. 2018) against a float64 brute force over all pixel pairs, its conventions (window,
downscaling, ignored pixels, C = 1), and how the image reaches it: CompoundLoss, DeepSupervision, the module's
model_step, the ce_crf preset."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segloss.losses import (
    CompoundLoss,
    CrossEntropyLoss,
    DeepSupervision,
    DenseCRFLoss,
    DiceLoss,
    total_and_terms,
    wants_image,
)
from segloss.models.module import SegmentationModule
from segloss.models.nets.unet import UNet
from tests.helpers.losses import preset_loss

IGNORE = 255


def make_inputs(n=2, c=3, size=(5, 6), seed=0, ignore_share=0.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, *size, generator=g) * 2).to(dtype)
    image = (torch.rand(n, 3, *size, generator=g) * 255).to(dtype)
    target = torch.randint(0, max(c, 2), (n, *size), generator=g)
    target[torch.rand(n, *size, generator=g) < ignore_share] = IGNORE
    return logits, target, image


def brute_force(probs, image, counted=None, sigma_rgb=15.0, sigma_xy=80.0, radius=None, step=(1.0, 1.0)):
    """(1/Σ m) Σ_n Σ_k Σ_{i≠j} m_i m_j w_ij S_ik (1 − S_jk) with an explicit P×P kernel per image: float64,
    positions in full-resolution pixels (grid index × step), pairs beyond ``radius`` (Chebyshev) left out."""
    n, c, h, w = probs.shape
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    grid = torch.stack([rows.reshape(-1), cols.reshape(-1)], 1).double()
    position = grid * torch.tensor(step, dtype=torch.float64)
    near = torch.ones(h * w, h * w, dtype=torch.float64)
    if radius is not None:
        near = ((grid[:, None] - grid[None]).abs().amax(-1) <= radius).double()
    counted = torch.ones(n, h, w, dtype=torch.float64) if counted is None else counted.double()
    energy = 0.0
    for i in range(n):
        colour = image[i].double().reshape(3, -1).T
        kernel = torch.exp(
            -(torch.cdist(position, position) ** 2) / (2 * sigma_xy**2)
            - torch.cdist(colour, colour) ** 2 / (2 * sigma_rgb**2)
        )
        kernel = kernel * near * (1 - torch.eye(h * w, dtype=torch.float64))
        m = counted[i].reshape(-1)
        kernel = kernel * m[:, None] * m[None]
        s = probs[i].reshape(c, -1)
        energy = energy + sum(s[k] @ kernel @ (1 - s[k]) for k in range(c))
    return energy / counted.sum().clamp_min(1.0)


def value_and_grad(fn, logits):
    z = logits.detach().clone().requires_grad_()
    value = fn(z)
    value.backward()
    return value.detach(), z.grad


# ---------------------------------------------------------------- the energy


@pytest.mark.parametrize("c", [1, 3])
def test_the_whole_image_window_gives_the_dense_energy_and_its_gradient(c):
    logits, target, image = make_inputs(c=c)
    loss = DenseCRFLoss(scale=1.0, radius=None)
    got, got_grad = value_and_grad(lambda z: loss(z, target, image=image), logits)
    probs = lambda z: torch.cat([1 - z.sigmoid(), z.sigmoid()], 1) if c == 1 else z.softmax(1)  # noqa: E731
    want, want_grad = value_and_grad(lambda z: brute_force(probs(z), image), logits)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-9, atol=1e-15)
    # a radius that reaches across the grid is the same dense energy
    torch.testing.assert_close(DenseCRFLoss(scale=1.0, radius=9)(logits, target, image=image), want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("radius", [1, 2])
def test_a_local_window_is_the_brute_force_restricted_to_the_window(radius):
    logits, target, image = make_inputs(size=(6, 7), seed=1)
    loss = DenseCRFLoss(scale=1.0, radius=radius, sigma_xy=3.0, sigma_rgb=40.0)
    got, got_grad = value_and_grad(lambda z: loss(z, target, image=image), logits)
    want, want_grad = value_and_grad(
        lambda z: brute_force(z.softmax(1), image, sigma_xy=3.0, sigma_rgb=40.0, radius=radius), logits
    )
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-9, atol=1e-15)
    dense = brute_force(logits.softmax(1), image, sigma_xy=3.0, sigma_rgb=40.0)
    assert float(got) < float(dense) - 1e-3, "the window leaves pairs out"


def test_scale_computes_the_energy_on_the_box_averaged_image_and_probabilities():
    logits, target, image = make_inputs(size=(6, 8), seed=2)
    got = DenseCRFLoss(scale=0.5, radius=None, sigma_xy=5.0)(logits, target, image=image)
    pooled_probs, pooled_image = F.avg_pool2d(logits.softmax(1), 2), F.avg_pool2d(image, 2)
    want = brute_force(pooled_probs, pooled_image, sigma_xy=5.0, step=(2.0, 2.0))  # σ_xy in full-res pixels
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_the_value_reduces_in_float32_for_half_inputs():
    logits, target, image = make_inputs(dtype=torch.float32)
    value = DenseCRFLoss(scale=1.0)(logits.bfloat16(), target, image=image.to(torch.uint8))
    assert value.dtype == torch.float32
    want = brute_force(logits.bfloat16().double().softmax(1), image.to(torch.uint8).double())
    torch.testing.assert_close(value.double(), want, rtol=1e-4, atol=0)


def test_a_constant_image_with_a_uniform_prediction_gives_the_closed_form():
    """Colour kernel 1 everywhere, ⟨S_i, S_j⟩ = 1/C: L = (1 − 1/C)·(1/P)·Σ_{i≠j} exp(−‖Δp‖²/(2σ²)), a sum that
    separates over rows and columns."""
    c, h, w, sigma = 4, 5, 6, 2.0
    logits, target = torch.zeros(1, c, h, w, dtype=torch.float64), torch.zeros(1, h, w, dtype=torch.int64)
    image = torch.full((1, 3, h, w), 77.0, dtype=torch.float64)

    def axis(length):
        return sum(math.exp(-((a - b) ** 2) / (2 * sigma**2)) for a in range(length) for b in range(length))

    want = (1 - 1 / c) * (axis(h) * axis(w) - h * w) / (h * w)
    got = DenseCRFLoss(scale=1.0, radius=None, sigma_xy=sigma)(logits, target, image=image)
    assert float(got) == pytest.approx(want, rel=1e-12)


def test_hard_predictions_that_follow_the_colours_give_zero_and_a_shifted_border_does_not():
    h, w = 4, 6
    image = torch.zeros(1, 3, h, w, dtype=torch.float64)
    image[..., 3:] = 255.0  # black | white: the colour kernel across is exp(−3·255²/(2·15²)) ≈ 0
    target = torch.zeros(1, h, w, dtype=torch.int64)
    labels = torch.zeros(h, w, dtype=torch.int64)
    labels[:, 3:] = 2
    follows = F.one_hot(labels, 3).movedim(-1, 0)[None].double() * 200.0  # softmax is one-hot in float64
    loss = DenseCRFLoss(scale=1.0, radius=None)
    assert 0.0 <= float(loss(follows, target, image=image)) < 1e-150  # exp(−433.5) across the colour edge
    assert float(loss(torch.full((1, 3, h, w), 3.0, dtype=torch.float64), target, image=image)) == pytest.approx(
        float(brute_force(torch.full((1, 3, h, w), 1 / 3, dtype=torch.float64), image)), rel=1e-12
    )
    shifted = labels.clone()
    shifted[:, 2] = 2  # one black column labelled as the white side: its pairs with the other black columns cost
    crossed = F.one_hot(shifted, 3).movedim(-1, 0)[None].double() * 200.0
    want = brute_force(crossed.softmax(1), image)
    got = loss(crossed, target, image=image)
    assert float(got) == pytest.approx(float(want), rel=1e-12)
    # ordered pairs (i, j) of a black pixel of columns 0–1 and one of column 2, both ways
    black_pairs = 2 * sum(math.exp(-((2 - x) ** 2 + (a - b) ** 2) / (2 * 80.0**2))
                          for x in range(2) for a in range(h) for b in range(h))  # fmt: skip
    assert float(got) == pytest.approx(black_pairs / (h * w), rel=1e-9)


def test_permuting_the_classes_leaves_the_energy_unchanged():
    logits, target, image = make_inputs(c=5, seed=3)
    loss = DenseCRFLoss(scale=1.0, radius=2)
    permutation = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(loss(logits[:, permutation], target, image=image), loss(logits, target, image=image),
                               rtol=1e-12, atol=0)  # fmt: skip
    # the image's colour channels too: ‖I_i − I_j‖ does not depend on their order
    torch.testing.assert_close(loss(logits, target, image=image[:, [2, 0, 1]]), loss(logits, target, image=image),
                               rtol=1e-12, atol=0)  # fmt: skip


def test_the_binary_channel_is_the_two_class_softmax_of_its_logit():
    logits, target, image = make_inputs(c=1, seed=4)
    target = target.clamp(max=1)
    two = torch.cat([torch.zeros_like(logits), logits], 1)  # softmax([0, z]) = [1 − σ(z), σ(z)]
    loss = DenseCRFLoss(scale=1.0, radius=3)
    torch.testing.assert_close(loss(logits, target, image=image), loss(two, target, image=image), rtol=1e-12, atol=0)


def test_three_dimensional_volumes_use_cubic_windows():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(1, 2, 3, 4, 3, generator=g, dtype=torch.float64)
    image = torch.rand(1, 3, 3, 4, 3, generator=g, dtype=torch.float64) * 255
    target = torch.zeros(1, 3, 4, 3, dtype=torch.int64)
    got = DenseCRFLoss(scale=1.0, radius=1, sigma_xy=2.0)(logits, target, image=image)
    points = (
        torch.stack(torch.meshgrid(*(torch.arange(s) for s in (3, 4, 3)), indexing="ij"), -1).reshape(-1, 3).double()
    )
    colour, probs = image[0].reshape(3, -1).T, logits[0].softmax(0).reshape(2, -1)
    kernel = torch.exp(-(torch.cdist(points, points) ** 2) / 8 - torch.cdist(colour, colour) ** 2 / 450)
    kernel = kernel * ((points[:, None] - points[None]).abs().amax(-1) <= 1) * (1 - torch.eye(36, dtype=torch.float64))
    want = sum(probs[k] @ kernel @ (1 - probs[k]) for k in range(2)) / 36
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


# ---------------------------------------------------------------- ignored pixels


def test_by_default_ignored_pixels_count_like_every_other_pixel():
    logits, target, image = make_inputs(ignore_share=0.4, seed=6)
    loss = DenseCRFLoss(scale=1.0, radius=None)
    want = brute_force(logits.softmax(1), image)
    torch.testing.assert_close(loss(logits, target, image=image), want, rtol=1e-12, atol=0)
    torch.testing.assert_close(loss(logits, torch.full_like(target, IGNORE), image=image), want, rtol=1e-12, atol=0)


def test_ignore_unlabelled_leaves_ignored_pixels_out_as_i_and_as_j():
    logits, target, image = make_inputs(ignore_share=0.4, seed=7)
    counted = target != IGNORE
    loss = DenseCRFLoss(scale=1.0, radius=None, ignore_unlabelled=True)
    got, got_grad = value_and_grad(lambda z: loss(z, target, image=image), logits)
    want, want_grad = value_and_grad(lambda z: brute_force(z.softmax(1), image, counted=counted), logits)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-9, atol=1e-15)
    assert float(got_grad.abs().movedim(1, -1)[~counted].max()) == 0.0
    # what lies under ignored pixels does not matter
    noise = torch.randn_like(logits) * 5 * (~counted)[:, None]
    other_image = torch.where((~counted)[:, None], 255 - image, image)
    torch.testing.assert_close(loss(logits + noise, target, image=other_image), got, rtol=1e-12, atol=0)
    # an all-ignored batch gives 0 and no gradient
    empty, empty_grad = value_and_grad(lambda z: loss(z, torch.full_like(target, IGNORE), image=image), logits)
    assert float(empty) == 0.0 and float(empty_grad.abs().max()) == 0.0


def test_ignore_unlabelled_with_scale_pools_the_counted_pixels_only():
    logits, target, image = make_inputs(size=(4, 6), ignore_share=0.35, seed=8)
    counted = (target != IGNORE).double()[:, None]
    got = DenseCRFLoss(scale=0.5, radius=None, ignore_unlabelled=True)(logits, target, image=image)
    fraction = F.avg_pool2d(counted, 2)
    probs = F.avg_pool2d(logits.softmax(1) * counted, 2) / fraction.clamp_min(1e-300)
    want = brute_force(probs, F.avg_pool2d(image, 2), counted=fraction[:, 0], step=(2.0, 2.0))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


# ---------------------------------------------------------------- errors


def test_without_the_image_the_error_says_the_loss_needs_it():
    logits, target, _ = make_inputs()
    with pytest.raises(ValueError, match=r"needs the batch's RGB image"):
        DenseCRFLoss()(logits, target)
    with pytest.raises(ValueError, match=r"needs the batch's RGB image"):
        CompoundLoss({"ce": CrossEntropyLoss(), "crf": DenseCRFLoss()})(logits, target)
    with pytest.raises(ValueError, match=r"does not fit logits"):
        DenseCRFLoss()(logits, target, image=torch.zeros(2, 3, 5, 5))
    with pytest.raises(ValueError, match=r"scale must be in \(0, 1\]"):
        DenseCRFLoss(scale=2.0)
    with pytest.raises(ValueError, match=r"values \[7\] outside \[0, 3\)"):
        DenseCRFLoss()(logits, torch.full_like(target, 7), image=torch.zeros(2, 3, 5, 6))


# ---------------------------------------------------------------- passing the image


class NoImage(nn.Module):
    """A loss with the plain signature: passing it ``image=`` would be a TypeError."""

    def forward(self, logits, target):
        return logits.float().mean() * 0 + 1.5


def test_wants_image_reads_needs_image_through_compound_losses():
    crf = DenseCRFLoss()
    assert wants_image(crf) and not wants_image(CrossEntropyLoss()) and not wants_image(NoImage())
    assert wants_image(CompoundLoss({"ce": CrossEntropyLoss(), "crf": crf}))
    assert not wants_image(CompoundLoss({"ce": CrossEntropyLoss(), "dice": DiceLoss()}))
    assert wants_image(CompoundLoss({"inner": CompoundLoss({"crf": crf}), "other": NoImage()}))


def test_compound_loss_passes_the_image_to_the_terms_that_want_it_only():
    logits, target, image = make_inputs(seed=9)
    crf = DenseCRFLoss(scale=1.0, radius=2)
    loss = CompoundLoss({"ce": CrossEntropyLoss(), "plain": NoImage(), "crf": crf}, weights={"crf": 0.1})
    ce, crf_value = CrossEntropyLoss()(logits, target), crf(logits, target, image=image)
    total, terms = loss.with_terms(logits, target, image=image)
    torch.testing.assert_close(terms["crf"], crf_value)
    torch.testing.assert_close(total, ce + 1.5 + 0.1 * crf_value)
    torch.testing.assert_close(loss(logits, target, image=image), total)
    torch.testing.assert_close(loss(logits, target, return_terms=True, image=image)[1]["crf"], crf_value)
    got_total, got_terms = total_and_terms(loss, logits, target, image)
    torch.testing.assert_close(got_total, total)
    assert sorted(got_terms) == ["ce", "crf", "plain"]
    # losses that do not want the image are called as before, with or without one
    assert total_and_terms(NoImage(), logits, target, image)[0] == 1.5
    torch.testing.assert_close(total_and_terms(crf, logits, target, image)[0], crf_value)


def test_deep_supervision_passes_the_image_to_the_auxiliary_outputs_too():
    logits, target, image = make_inputs(seed=10)
    aux = logits.flip(-1)
    loss = CompoundLoss({"ce": CrossEntropyLoss(), "crf": DenseCRFLoss(scale=1.0, radius=2)}, weights={"crf": 0.1})
    total, main, terms = DeepSupervision([0.4])(loss, (logits, [aux]), target, image=image)
    assert main is logits
    torch.testing.assert_close(terms["aux0"], loss(aux, target, image=image))
    torch.testing.assert_close(total, loss(logits, target, image=image) + 0.4 * loss(aux, target, image=image))
    assert sorted(terms) == ["aux0", "ce", "crf"]
    plain_total, _, plain_terms = DeepSupervision([0.4])(NoImage(), (logits, [aux]), target, image=image)
    assert float(plain_total) == pytest.approx(1.5 * 1.4) and float(plain_terms["aux0"]) == 1.5


class Spy(nn.Module):
    """Records what the module passes; ``wants`` decides whether it declares ``needs_image``."""

    def __init__(self, wants: bool) -> None:
        super().__init__()
        self.needs_image, self.seen = wants, []

    def forward(self, logits, target, **kwargs):
        self.seen.append(kwargs)
        return logits.float().mean()


def tiny_module(loss, **kwargs) -> SegmentationModule:
    torch.manual_seed(0)
    net = UNet(num_classes=3, base_channels=4, depth=2)
    return SegmentationModule(net=net, loss=loss, optimizer=None, num_classes=3, **kwargs).eval()


def test_model_step_gives_the_image_as_rgb_to_a_loss_that_wants_it():
    g = torch.Generator().manual_seed(11)
    pixels = torch.randint(0, 256, (2, 3, 16, 16), generator=g, dtype=torch.uint8)
    mask = torch.randint(0, 3, (2, 16, 16), generator=g)
    loss = CompoundLoss({"ce": CrossEntropyLoss(), "crf": DenseCRFLoss(radius=2)}, weights={"crf": 0.01})
    module = tiny_module(loss, input_mean=[0.4, 0.5, 0.6], input_std=[0.2, 0.25, 0.3])
    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    for image in (pixels, (pixels.float() / 255 - mean) / std):  # uint8 batch, normalised float batch
        with torch.no_grad():
            value, logits, terms = module.model_step({"image": image, "mask": mask})
            want_crf = DenseCRFLoss(radius=2)(logits, mask, image=pixels.float())
        torch.testing.assert_close(terms["crf"], want_crf, rtol=1e-4, atol=1e-6)  # rgb(): float rounding
        torch.testing.assert_close(value, CrossEntropyLoss()(logits, mask) + 0.01 * want_crf, rtol=1e-4, atol=1e-6)
    wanting, plain = Spy(True), Spy(False)
    with torch.no_grad():
        tiny_module(wanting).model_step({"image": pixels, "mask": mask})
        tiny_module(plain).model_step({"image": pixels, "mask": mask})
    assert plain.seen == [{}], "a loss without needs_image is called exactly as before"
    assert list(wanting.seen[0]) == ["image"] and torch.equal(wanting.seen[0]["image"], pixels.float())


def test_the_ce_crf_preset_is_ce_plus_a_weighted_crf_term():
    loss = preset_loss("ce_crf")
    assert isinstance(loss, CompoundLoss) and wants_image(loss)
    assert sorted(loss.terms) == ["ce", "crf"] and loss.weights == {"ce": 1.0, "crf": 0.01}
    crf = loss.terms["crf"]
    assert (crf.sigma_rgb, crf.sigma_xy, crf.scale, crf.radius, crf.ignore_unlabelled) == (15.0, 80.0, 0.5, 5, False)
    logits, target, image = make_inputs(c=19, size=(12, 16), seed=12, ignore_share=0.1, dtype=torch.float32)
    total, terms = loss.with_terms(logits, target, image=image)
    want_crf = DenseCRFLoss(ignore_index=IGNORE)(logits, target, image=image)
    torch.testing.assert_close(terms["crf"], want_crf)
    torch.testing.assert_close(total, CrossEntropyLoss()(logits, target) + 0.01 * want_crf)


def test_forward_and_backward_have_no_host_sync_once_target_checks_are_done(monkeypatch):
    from segloss.losses import _checks
    from segloss.utils.host_sync import HostSyncRecorder

    logits, target, image = make_inputs(c=4, size=(8, 10), seed=13, ignore_share=0.2, dtype=torch.float32)
    monkeypatch.setattr(_checks.TargetChecks, "due", lambda self, target: False)
    for loss in (DenseCRFLoss(), DenseCRFLoss(ignore_unlabelled=True, scale=1.0)):
        z = logits.clone().requires_grad_()
        with HostSyncRecorder() as rec:
            loss(z, target, image=image).backward()
        assert rec.calls == [] and z.grad.abs().sum() > 1e-3
