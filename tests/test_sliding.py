"""nnU-Net-style sliding-window inference (segloss.models.sliding): the Gaussian map, the window starts, pointwise
nets unaffected by the windows, mirroring, and agreement with MONAI's sliding_window_inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from segloss.models.nets.unet import UNet
from segloss.models.nets.unet3d import UNet3D
from segloss.models.sliding import (
    gaussian_importance_map,
    gaussian_sliding_window,
    mirror_combinations,
    window_starts,
)


def _image(*size: int, c: int = 2, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, *size, generator=torch.Generator().manual_seed(seed))


def _conv(dims: int, c: int = 2, k: int = 3, kernel: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    conv = (nn.Conv2d if dims == 2 else nn.Conv3d)(c, k, kernel, padding=kernel // 2)
    return conv.eval()


@pytest.mark.parametrize("patch", [(8, 12, 16), (7, 13, 5), (1, 4, 9)])
def test_the_gaussian_map_is_the_numpy_formula_and_nnunets_filtered_impulse(patch):
    """g(x) = Π_d exp(−(x_d − ⌊P_d/2⌋)² / (2 (P_d/8)²)), max 1 at ⌊P/2⌋; nnU-Net computes it as the Gaussian filter
    (σ = P/8, truncated at 4σ) of a unit impulse at ⌊P/2⌋ divided by its maximum."""
    from scipy.ndimage import gaussian_filter

    grid = np.meshgrid(*(np.arange(p, dtype=np.float64) for p in patch), indexing="ij")
    expected = np.exp(-sum((x - p // 2) ** 2 / (2 * (p / 8) ** 2) for x, p in zip(grid, patch)))
    ours = gaussian_importance_map(patch)
    assert ours.dtype == torch.float32 and tuple(ours.shape) == patch
    np.testing.assert_allclose(ours.numpy(), np.maximum(expected, ours.numpy()[ours.numpy() > 0].min()), rtol=1e-6)
    assert ours[tuple(p // 2 for p in patch)] == 1 and ours.max() == 1 and ours.min() > 0
    impulse = np.zeros(patch)
    impulse[tuple(p // 2 for p in patch)] = 1
    filtered = gaussian_filter(impulse, [p / 8 for p in patch], 0, mode="constant", cval=0)
    np.testing.assert_allclose(ours.numpy(), (filtered / filtered.max()).astype(np.float32), rtol=1e-5, atol=1e-12)


def test_zeros_of_the_map_are_raised_to_the_smallest_positive_value():
    tiny = gaussian_importance_map((64, 64), sigma_scale=0.01)  # exp(−(32/0.64)²/2) underflows float32 to 0
    axis = torch.exp(-torch.tensor(((np.arange(64) - 32.0) / 0.64) ** 2 / 2))
    full = (axis[:, None] * axis[None, :]).float()
    assert (full == 0).any() and tiny.min() > 0
    assert torch.equal(tiny, torch.where(full > 0, full, full[full > 0].min()))


def test_the_map_against_monai():
    """MONAI's mode="gaussian" (sigma_scale 0.125): the same exp(−d²/2σ²), but centred at (P − 1)/2 (equal to ⌊P/2⌋
    for odd P only), not rescaled to max 1, and every weight below 1e-3 raised to 1e-3 (here: zeros only)."""
    from monai.data.utils import compute_importance_map

    odd = (9, 15, 7)
    monai = compute_importance_map(odd, mode="gaussian", sigma_scale=0.125)
    torch.testing.assert_close(monai, gaussian_importance_map(odd).clamp(min=1e-3), rtol=1e-6, atol=1e-7)
    even = compute_importance_map((8, 12), mode="gaussian", sigma_scale=0.125)
    assert even.max() < 1 and torch.equal(even, even.flip(0).flip(1))  # symmetric, half a voxel off ⌊P/2⌋


def test_window_starts_are_nnunets():
    assert window_starts(110, 64, 0.5) == [0, 23, 46]  # the example in nnU-Net's compute_steps_for_sliding_window
    assert window_starts(64, 64) == [0] and window_starts(96, 64) == [0, 32] and window_starts(97, 64) == [0, 16, 33]
    assert window_starts(100, 10, 1.0) == list(range(0, 91, 10)) and window_starts(12, 4, 0.25) == list(range(9))
    with pytest.raises(ValueError, match="shorter than the patch"):
        window_starts(5, 8)


@pytest.mark.parametrize(
    "size,patch,step,batch",
    [((13, 29, 22), (8, 12, 10), 0.5, 1), ((5, 7, 30), (8, 12, 10), 0.3, 4), ((31, 17), (16, 16), 0.5, 3)],
)
def test_a_pointwise_net_gives_the_whole_image_result_whatever_the_windows(size, patch, step, batch):
    """A 1×1(×1) conv is translation-equivariant and pointwise: every window predicts every voxel as the whole
    image does, so the Gaussian-weighted average is the net on the whole image (axes shorter than the patch
    included: zero-padded, then cropped)."""
    net = _conv(len(size), kernel=1)
    image = _image(*size)
    with torch.no_grad():
        out = gaussian_sliding_window(net, image, patch, step=step, window_batch=batch)
        assert out.dtype == torch.float32 and out.shape == (2, 3, *size)
        torch.testing.assert_close(out, net(image), rtol=1e-5, atol=1e-5)


def test_windows_cover_the_image_and_call_the_net_in_batches():
    calls = []

    def net(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return x[:, :1] * 0 + 1

    out = gaussian_sliding_window(net, _image(20, 33, 9, n=3), (8, 16, 9), window_batch=4)
    torch.testing.assert_close(out, torch.ones(3, 1, 20, 33, 9))
    windows = len(window_starts(20, 8)) * len(window_starts(33, 16)) * 1  # 4 × 4 × 1 = 16
    assert windows == 16 and calls == [12] * 4  # 4 windows of 3 images per call
    with pytest.raises(ValueError, match="patch_size"):
        gaussian_sliding_window(net, _image(8, 8), (4, 4, 4))
    with pytest.raises(ValueError, match="mirror_axes"):
        gaussian_sliding_window(net, _image(8, 8), (4, 4), mirror_axes=(2,))
    with pytest.raises(ValueError, match="step"):
        gaussian_sliding_window(net, _image(8, 8), (4, 4), step=0)


def test_mirroring_is_the_average_over_every_flip_combination():
    assert mirror_combinations((0, 1, 2)) == [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
    image, patch = _image(8, 10, 8), (6, 6, 6)
    # a conv whose kernel is symmetric under every flip commutes with flips (zero 'same' padding): mirroring is void
    symmetric = _conv(3)
    with torch.no_grad():
        weight = symmetric.weight
        symmetric.weight.copy_(sum(weight.flip(dims) for dims in mirror_combinations((0, 1, 2))) / 8)
        torch.testing.assert_close(
            gaussian_sliding_window(symmetric, image, patch, mirror_axes=(0, 1, 2)),
            gaussian_sliding_window(symmetric, image, patch),
            rtol=1e-5,
            atol=1e-6,
        )
        # any other net: (1/2^|A|) Σ_B flip_B ∘ net ∘ flip_B, window by window (the blending is linear in them)
        net = _conv(3, seed=1)
        explicit = sum(
            gaussian_sliding_window(lambda x, dims=dims: net(x.flip(dims)).flip(dims) if dims else net(x), image, patch)
            for dims in mirror_combinations((0, 2))
        )
        mirrored = gaussian_sliding_window(net, image, patch, mirror_axes=(0, 2), window_batch=2)
        torch.testing.assert_close(mirrored, explicit / 4, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(mirrored, gaussian_sliding_window(net, image, patch), atol=1e-3)


def test_autocast_is_the_callers_and_the_sums_are_float32():
    net = _conv(3)
    image = _image(10, 12, 12)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = gaussian_sliding_window(net, image, (8, 8, 8))
    assert out.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(out, gaussian_sliding_window(net, image, (8, 8, 8)), rtol=0.05, atol=0.05)


# Sizes where nnU-Net's window starts (evenly spread) and MONAI's (every ⌊P/2⌋, the last moved to the border)
# coincide, S − P a multiple of ⌊P/2⌋, and one axis shorter than the patch (both pad ⌊(P − S)/2⌋ before).
MONAI_CASES = [
    ((12, 24, 16), (8, 8, 8), "unet3d"),
    ((5, 16, 12), (8, 8, 8), "unet3d"),
    ((17, 21, 17), (9, 11, 9), "conv"),
    ((40, 64), (16, 32), "unet2d"),
]


def _monai_starts(size: int, patch: int) -> list[int]:
    """MONAI's window starts at overlap 0.5: every ⌊P/2⌋, the last moved back to end at the border."""
    interval = max(patch // 2, 1) if size > patch else patch
    count = next(i for i in range(size) if i * interval + patch >= size) + 1
    return [min(i * interval, size - patch) for i in range(count)]


def _net(kind: str, dims: int) -> nn.Module:
    torch.manual_seed(0)
    if kind == "unet3d":
        return UNet3D(num_classes=3, in_channels=2, base_channels=4, depth=2).eval()
    if kind == "unet2d":
        return UNet(num_classes=3, in_channels=2, base_channels=4, depth=2).eval()
    return _conv(dims, kernel=5)


@pytest.mark.parametrize("size,patch,kind", MONAI_CASES)
def test_equal_to_monai_given_the_same_weight_map(size, patch, kind):
    """With MONAI's sliding_window_inference given our map (roi_weight_map), the windows, padding, order of sums
    and blending are the same: equal to float32 rounding for conv nets and U-Nets, 2D and 3D (rtol = atol = 1e-4:
    the windows are batched differently — ours window-major, MONAI image-major — and a CPU convolution's rounding
    depends on its batch; logits are O(1–10))."""
    from monai.inferers import sliding_window_inference

    for s, p in zip(size, patch):
        assert window_starts(max(s, p), p) == _monai_starts(max(s, p), p)
    net, image = _net(kind, len(size)), _image(*size)
    with torch.no_grad():
        ours = gaussian_sliding_window(net, image, patch, window_batch=3)
        monai = sliding_window_inference(
            image, patch, 3, net, overlap=0.5, mode="gaussian", sigma_scale=0.125,
            roi_weight_map=gaussian_importance_map(patch),
        )  # fmt: skip
    torch.testing.assert_close(ours, monai, rtol=1e-4, atol=1e-4)


def test_monais_own_gaussian_differs_by_its_floor_only():
    """MONAI's own mode="gaussian": a pointwise net gives the same logits (1e-5), any weights do; for a conv net
    with an odd patch the difference is MONAI's 1e-3 floor on the weights — our map with that floor equals it
    (1e-5) — and the floor matters: the corners of a 3D window weigh ~e^−19 (P = 9) to e^−24 (even P) here, 1e-3
    there, which is not small next to the e^−6 that a voxel's best window can weigh at 50 % overlap."""
    from monai.inferers import sliding_window_inference

    size, patch = (17, 21, 17), (9, 11, 9)
    image = _image(*size)
    with torch.no_grad():
        for kernel in (1, 5):
            net = _conv(3, kernel=kernel)
            ours = gaussian_sliding_window(net, image, patch)
            monai = sliding_window_inference(image, patch, 1, net, overlap=0.5, mode="gaussian", sigma_scale=0.125)
            if kernel == 1:
                torch.testing.assert_close(ours, monai, rtol=1e-5, atol=1e-5)
            else:
                floored = sliding_window_inference(
                    image, patch, 1, net, overlap=0.5, roi_weight_map=gaussian_importance_map(patch).clamp(min=1e-3)
                )
                torch.testing.assert_close(floored, monai, rtol=1e-5, atol=1e-5)
                assert (ours - monai).abs().max() > 1e-3
