"""Every loss preset on 3-D volumes (N×C×D×H×W, as the V-Net, Tversky, Unified Focal, Boundary, clDice and
Hausdorff-DT papers train): finite values and gradients, and value and gradient equal to a float64 reference
written from each paper's formula over all voxels (tests/helpers/references3d.py) — 3-D distance maps, the 3-D
soft skeleton, per-volume Lovász, voxel-count OHEM/TopK.

Presets of the label-map contract (logits N×C×S…, class-index target N×S…) are checked against a reference here.
Presets of other input kinds (multi-hot region targets of :mod:`segloss.losses.multilabel`, losses that also take
the batch's image) run the finite-value and depth-one checks with inputs of their kind; their references live with
their own tests."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from scipy.ndimage import distance_transform_edt

from segloss import losses as L
from segloss.losses import distance
from tests.helpers import references3d as ref
from tests.helpers.losses import BINARY, PRESETS, preset_loss

IGNORE = ref.IGNORE
SHAPE = (4, 5, 6)  # D × H × W


def volumes(c: int = 3, seed: int = 0, shape=SHAPE, dtype=torch.float64):
    """2×C×D×H×W logits and a target with ~20 % ignored voxels; class 2 (if any) absent from the second volume."""
    g = torch.Generator().manual_seed(seed)
    logits = (2 * torch.randn(2, c, *shape, generator=g)).to(dtype)
    target = torch.randint(0, max(c, 2), (2, *shape), generator=g)
    target[1][target[1] == 2] = 0
    target[torch.rand(2, *shape, generator=g) < 0.2] = IGNORE
    return logits, target


def channels(name: str) -> int:
    return 1 if name in BINARY else 3


def build(name: str):
    loss = preset_loss(name)
    if hasattr(loss, "set_progress"):
        loss.set_progress(0, ref.BOUNDARY_EPOCH)  # boundary_gdl: both terms weigh 0.5
    return loss


@functools.cache
def kind(name: str) -> str:
    """The preset's input kind: "labels" (the label-map contract), "multi_hot" (a term of
    segloss.losses.multilabel) or "image" (it also takes the batch's image)."""
    loss = preset_loss(name)
    if getattr(loss, "needs_image", False):
        return "image"
    if any(type(m).__module__ == "segloss.losses.multilabel" for m in loss.modules()):
        return "multi_hot"
    return "labels"


LABEL_PRESETS = [name for name in PRESETS if kind(name) == "labels"]


def preset_inputs(name: str, seed: int, shape=SHAPE, dtype=torch.float64):
    """``(logits, target, extra keyword arguments)`` of preset ``name``'s kind, on a 2-item batch of ``shape``."""
    if kind(name) == "multi_hot":  # N×R×S… 0/1 with ignored elements
        g = torch.Generator().manual_seed(seed)
        logits = (2 * torch.randn(2, 3, *shape, generator=g)).to(dtype)
        target = torch.randint(0, 2, (2, 3, *shape), generator=g)
        target[torch.rand(2, 3, *shape, generator=g) < 0.2] = IGNORE
        return logits, target, {}
    logits, target = volumes(channels(name), seed=seed, shape=shape, dtype=dtype)
    if kind(name) == "image":
        image = 255 * torch.rand(2, 3, *shape, generator=torch.Generator().manual_seed(seed))
        return logits, target, {"image": image.to(dtype)}
    return logits, target, {}


def value_and_grad(fn, logits, target):
    x = logits.clone().requires_grad_()
    value = fn(x, target)
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_runs_on_a_3d_batch(name):
    logits, target, extra = preset_inputs(name, seed=1, dtype=torch.float32)
    loss = build(name)
    value, grad = value_and_grad(lambda x, t: loss(x, t, **extra), logits, target)
    assert value.dim() == 0 and value.dtype == torch.float32 and torch.isfinite(value)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_every_label_map_preset_has_a_3d_reference():
    assert sorted(ref.PRESETS) == LABEL_PRESETS


@pytest.mark.parametrize("name", sorted(ref.PRESETS))
def test_every_preset_equals_its_float64_reference_on_volumes(name):
    logits, target = volumes(channels(name), seed=2)
    got, got_grad = value_and_grad(build(name), logits, target)
    expected, expected_grad = value_and_grad(ref.PRESETS[name], logits, target)
    # distance maps are float32 (exact squared integer distances, rounded square roots): 1e-6
    assert got.item() == pytest.approx(expected.item(), rel=1e-6, abs=1e-9)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-6, atol=1e-9)
    assert got_grad.movedim(1, -1)[target == IGNORE].abs().max() == 0  # ignored voxels count nowhere


@pytest.mark.parametrize("name", PRESETS)
def test_a_volume_of_depth_one_is_scored_as_its_image(name):
    logits, target, extra = preset_inputs(name, seed=3, shape=(7, 9))
    flat = build(name)(logits, target, **extra)
    depth = 2 if kind(name) == "multi_hot" else 1  # the target's depth axis: after N×R, or after N
    volume = build(name)(logits.unsqueeze(2), target.unsqueeze(depth), **{k: v.unsqueeze(2) for k, v in extra.items()})
    assert volume.item() == pytest.approx(flat.item(), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("spacing", [None, (2.5, 0.8, 0.6)])
@pytest.mark.parametrize("path", ["cpu", "device"])
def test_3d_distance_maps_are_scipys_edt_of_the_whole_volume(path, spacing):
    g = torch.Generator().manual_seed(4)
    features = torch.rand(3, 6, 9, 11, generator=g) < 0.04
    features[1] = False  # no feature: inf everywhere
    features[2, :, 4] = True  # a full plane
    if path == "cpu":
        got = distance.distance_map(features, 3, spacing)
    else:  # the accelerator's separable transform, run here
        got = distance._distance_map_dense(features, 3, spacing)
    assert torch.isinf(got[1]).all()
    for i in (0, 2):
        expected = distance_transform_edt(~features[i].numpy(), sampling=spacing)
        np.testing.assert_allclose(got[i].numpy(), expected, rtol=1e-6, atol=1e-5)
    # a 2-D map (dense path too) keeps the 2-D transform's values
    flat = features[:, 0]
    np.testing.assert_array_equal(
        distance._distance_map_dense(flat, 2, None).numpy(), distance.distance_map(flat, 2).numpy()
    )
    with pytest.raises(ValueError, match="one positive value per spatial dimension"):
        distance.distance_map(features, 3, (1.0, 1.0))


@pytest.mark.parametrize("spacing", [(2.5, 0.8, 0.6), (1.0, 1.0, 1.0)])
def test_boundary_and_hausdorff_losses_take_the_voxel_spacing(spacing):
    logits, target = volumes(3, seed=5, shape=(5, 6, 7))
    for loss, reference in [
        (L.BoundaryLoss(spacing=spacing), lambda x, t: ref.boundary(x, t, spacing)),
        (L.HausdorffDTLoss(spacing=spacing), lambda x, t: ref.hausdorff_dt(x, t, spacing=spacing)),
    ]:
        got, got_grad = value_and_grad(loss, logits, target)
        expected, expected_grad = value_and_grad(reference, logits, target)
        assert got.item() == pytest.approx(expected.item(), rel=1e-6)
        torch.testing.assert_close(got_grad, expected_grad, rtol=1e-6, atol=1e-9)
        if spacing == (1.0, 1.0, 1.0):  # unit spacing is the voxel default
            assert got.item() == pytest.approx(type(loss)()(logits, target).item(), rel=1e-7)
    with pytest.raises(ValueError, match="one positive value per spatial dimension"):
        L.BoundaryLoss(spacing=(1.0, 1.0))(logits, target)


def test_the_3d_soft_skeleton_is_the_papers_with_max_pools_gradients():
    """The authors' 3-D definition (min of the 3×1×1, 1×3×1, 1×1×3 min-pools; 3×3×3 max-pool), which MONAI's
    ``soft_skel`` also follows (2-D comparison with MONAI: tests/test_losses_boundary.py)."""
    g = torch.Generator().manual_seed(7)
    x = torch.rand(2, 2, 6, 7, 8, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 2, (2, 2, 6, 7, 8), generator=g).double()  # all ties
    for m in (x, labels):
        ours = L.cldice.soft_skeleton(m, 3)
        np.testing.assert_array_equal(ours.detach(), ref.soft_skeleton(m, 3).detach())
        np.testing.assert_array_equal(L.cldice.soft_erode(m).detach(), ref.soft_erode(m).detach())
        np.testing.assert_array_equal(L.cldice.soft_dilate(m).detach(), ref.soft_dilate(m).detach())
    w = torch.rand(2, 2, 6, 7, 8, generator=g, dtype=torch.float64)
    (a,) = torch.autograd.grad((L.cldice.soft_skeleton(x, 3) * w).sum(), x)
    (b,) = torch.autograd.grad((ref.soft_skeleton(x, 3) * w).sum(), x)
    np.testing.assert_allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_sorts_the_voxels_of_each_volume_or_of_the_batch(per_image):
    logits, target = volumes(3, seed=8)
    got, got_grad = value_and_grad(L.LovaszSoftmaxLoss(per_image=per_image), logits, target)
    expected, expected_grad = value_and_grad(lambda x, t: ref.lovasz(x, t, per_image), logits, target)
    assert got.item() == pytest.approx(expected.item(), rel=1e-9)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize(("thresh", "min_kept", "k"), [(0.7, 40, 25.0), (0.3, 150, 3.0)])
def test_ohem_and_topk_select_voxels_of_the_batch(thresh, min_kept, k):
    logits, target = volumes(3, seed=9)
    for loss, reference in [
        (L.OhemCrossEntropyLoss(thresh=thresh, min_kept=min_kept), lambda x, t: ref.ohem(x, t, thresh, min_kept)),
        (L.TopKCrossEntropyLoss(k=k), lambda x, t: ref.topk(x, t, k)),
    ]:
        got, got_grad = value_and_grad(loss, logits, target)
        expected, expected_grad = value_and_grad(reference, logits, target)
        assert got.item() == pytest.approx(expected.item(), rel=1e-9)
        torch.testing.assert_close(got_grad, expected_grad, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("loss", [L.BoundaryLoss(), L.HausdorffDTLoss(), L.ClDiceLoss(), L.UnifiedFocalLoss()])
def test_3d_losses_take_binary_logits_and_all_ignored_volumes(loss):
    logits, target = volumes(2, seed=10)
    binary = loss(logits[:, 1:] - logits[:, :1], target)  # C = 1: σ of the foreground logit
    two = loss(torch.cat([torch.zeros_like(logits[:, :1]), logits[:, 1:] - logits[:, :1]], 1), target)
    assert binary.item() == pytest.approx(two.item(), rel=1e-6)
    assert torch.isfinite(loss(logits, torch.full_like(target, IGNORE)))
