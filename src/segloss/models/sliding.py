"""Sliding-window inference with Gaussian weighting and mirroring, in 2D and 3D, as nnU-Net predicts.

nnU-Net (Isensee, Jaeger, Kohl, Petersen & Maier-Hein, Nature Methods 18, 2021) predicts a volume patch by patch
and blends the overlapping patches with a Gaussian importance map, because a convolutional net is most accurate
at the centre of its patch (far from the zero padding of its borders). For an image of spatial size S (any number
of axes) and patch P:

* **windows**: along axis d, ``n_d = ⌈(S_d − P_d) / (t · P_d)⌉ + 1`` windows (t = ``step``, nnU-Net's
  ``tile_step_size``, default 0.5), starting at ``round(i · (S_d − P_d) / (n_d − 1))`` for i = 0 … n_d − 1: evenly
  spread, the first at 0 and the last ending at the border (one window at 0 when S_d = P_d), every combination
  of the per-axis starts;
* **importance map**: ``g(x) = Π_d exp(−(x_d − ⌊P_d/2⌋)² / (2σ_d²))`` with ``σ_d = sigma_scale · P_d``
  (sigma_scale = 1/8), its maximum 1 at the centre voxel ⌊P/2⌋; zeros (an underflow) are raised to the smallest
  positive value so no voxel has zero total weight. nnU-Net gets the same map by Gaussian-filtering a unit impulse
  at ⌊P/2⌋ (``scipy.ndimage.gaussian_filter``, truncated at 4σ = P/2, so no voxel of the patch is cut off) and
  dividing by its maximum;
* **blending**: ``logits(x) = Σ_w g(x − o_w) · f_w(x) / Σ_w g(x − o_w)`` over the windows w (origin o_w) that
  cover x — **logits** are averaged, not probabilities: nnU-Net v2's
  ``predict_sliding_window_return_logits`` accumulates ``prediction * gaussian`` of the raw network output and
  divides by the accumulated Gaussian, the softmax coming later (verified in ``nnunetv2/inference/
  predict_from_raw_data.py`` and ``sliding_window_prediction.py`` of MIC-DKFZ/nnUNet);
* **mirroring** (test-time augmentation): with spatial axes A = ``mirror_axes``, each window's output is
  ``f_w = (1 / 2^|A|) Σ_{B ⊆ A} flip_B(net(flip_B(window)))`` — the net on every combination of flips of the
  chosen axes (all 8 for the three axes of a volume), each flipped back, logits averaged (nnU-Net's
  ``_internal_maybe_mirror_and_predict``);
* **small images**: an axis shorter than the patch is zero-padded to the patch size, ⌊(P − S)/2⌋ before and the
  rest after (nnU-Net's ``pad_nd_image``, MONAI's ``sliding_window_inference``), and the logits cropped back.

Precision is the caller's (run it under ``torch.autocast`` for mixed precision); the window outputs are cast to
float32 before they are weighted and summed, so the sums are float32 (nnU-Net v2 accumulates in float16 on the
GPU, with the map scaled by 10). ``window_batch`` windows (of every image in the batch) go through the net per
call; nnU-Net runs one window per call. Compared with MONAI's ``sliding_window_inference(overlap=0.5,
mode="gaussian", sigma_scale=0.125)``: MONAI starts windows at ``i · ⌊P·(1 − overlap)⌋``, the last moved back to
the border (the same starts as here when S − P is a multiple of that interval), centres its Gaussian at
``(P − 1)/2`` (the same as ⌊P/2⌋ for odd P; half a voxel off for even P) and raises every weight below 1e-3 to
1e-3 (here only zeros are raised, as nnU-Net does).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor


def window_starts(size: int, patch: int, step: float = 0.5) -> list[int]:
    """Window starts along one axis of length ``size`` for a patch ``patch`` (module docstring; nnU-Net's
    ``compute_steps_for_sliding_window``). ``size`` must be at least ``patch`` (pad smaller images first)."""
    if size < patch:
        raise ValueError(f"an axis of {size} is shorter than the patch ({patch}); pad it to the patch size first")
    count = math.ceil((size - patch) / (patch * step)) + 1
    if count == 1:
        return [0]
    spacing = (size - patch) / (count - 1)
    return [round(spacing * i) for i in range(count)]


@lru_cache(maxsize=8)
def _importance_map(patch_size: tuple[int, ...], sigma_scale: tuple[float, ...]) -> Tensor:
    grids = torch.meshgrid(*(torch.arange(p, dtype=torch.float64) for p in patch_size), indexing="ij")
    exponent = sum(
        (x - p // 2) ** 2 / (2 * (s * p) ** 2) for x, p, s in zip(grids, patch_size, sigma_scale, strict=True)
    )
    weights = torch.exp(-exponent)
    weights = (weights / weights.max()).float()
    positive = weights[weights > 0]
    return torch.where(weights > 0, weights, positive.min())


def gaussian_importance_map(
    patch_size: Sequence[int], sigma_scale: float | Sequence[float] = 0.125, device: torch.device | str | None = None
) -> Tensor:
    """The Gaussian importance map (float32, shape ``patch_size``): ``Π_d exp(−(x_d − ⌊P_d/2⌋)² / (2σ_d²))``,
    ``σ_d = sigma_scale · P_d``, maximum 1, zeros raised to the smallest positive value (nnU-Net's
    ``compute_gaussian``; see the module docstring)."""
    patch = tuple(int(p) for p in patch_size)
    scales = (float(sigma_scale),) * len(patch) if isinstance(sigma_scale, (int, float)) else tuple(sigma_scale)
    if len(scales) != len(patch) or min(scales) <= 0 or min(patch) < 1:
        raise ValueError(f"patch_size {list(patch)} and sigma_scale {sigma_scale} must be positive, one per axis")
    return _importance_map(patch, tuple(float(s) for s in scales)).to(device, copy=True)  # the cached map stays


def mirror_combinations(mirror_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of the spatial axes ``mirror_axes`` (0 = the first spatial axis) as tensor dimensions
    (spatial axis + 2), the empty one (no flip) first: 2^|A| combinations."""
    dims = [int(a) + 2 for a in mirror_axes]
    return [combo for r in range(len(dims) + 1) for combo in itertools.combinations(dims, r)]


def mirrored(forward: Callable[[Tensor], Tensor], x: Tensor, flips: Sequence[tuple[int, ...]] = ((),)) -> Tensor:
    """``(1/|flips|) Σ_B flip_B(forward(flip_B(x)))`` in float32: the logits averaged over the flips."""
    total = None
    for dims in flips:
        out = forward(x.flip(dims) if dims else x).float()
        out = out.flip(dims) if dims else out
        total = out if total is None else total + out
    return total / len(flips) if len(flips) > 1 else total


def gaussian_sliding_window(
    forward: Callable[[Tensor], Tensor],
    image: Tensor,
    patch_size: int | Sequence[int],
    step: float = 0.5,
    window_batch: int = 1,
    mirror_axes: Sequence[int] = (),
    sigma_scale: float | Sequence[float] = 0.125,
) -> Tensor:
    """Float32 logits ``N×K×S…`` of ``forward`` over patches of ``image`` (``N×C×S…``, 2D or 3D), blended with
    the Gaussian importance map, optionally mirrored (module docstring: nnU-Net's sliding-window prediction).

    Args:
        forward: the net (logits ``B×K×P…`` for patches ``B×C×P…``), in eval mode; gradients are the caller's
            (call under ``torch.no_grad()`` / ``torch.inference_mode()``), and so is the precision (autocast).
        image: the batch, ``N×C×S₁×…×S_n``.
        patch_size: the window, one size per spatial axis (an int: the same on every axis).
        step: the step between windows as a fraction of the patch, in (0, 1] (nnU-Net's tile_step_size, 0.5).
        window_batch: windows per call of ``forward`` (each call takes ``window_batch · N`` patches).
        mirror_axes: spatial axes (0-based) to mirror for test-time augmentation: ``(0, 1, 2)`` in 3D is
            nnU-Net's default (8 predictions per window); ``()`` none.
        sigma_scale: σ of the Gaussian as a fraction of the patch (per axis or one for all), nnU-Net's 1/8.
    """
    dims = image.dim() - 2
    if dims < 1:
        raise ValueError(f"sliding window inference takes N×C×S… images; got shape {tuple(image.shape)}")
    patch = (int(patch_size),) * dims if isinstance(patch_size, int) else tuple(int(p) for p in patch_size)
    if len(patch) != dims or min(patch) < 1:
        raise ValueError(f"patch_size {list(patch)} must give {dims} positive sizes for an image of {dims} axes")
    if not 0 < step <= 1:
        raise ValueError(f"step={step}: give the step between windows as a fraction of the patch in (0, 1]")
    if not isinstance(window_batch, int) or window_batch < 1:
        raise ValueError(f"window_batch={window_batch!r}: give a positive number of windows per call")
    if any(not 0 <= int(a) < dims for a in mirror_axes) or len(set(mirror_axes)) != len(mirror_axes):
        raise ValueError(f"mirror_axes={list(mirror_axes)}: distinct spatial axes in 0 … {dims - 1}")

    size = tuple(image.shape[2:])
    short = [max(p - s, 0) for p, s in zip(patch, size, strict=True)]
    before = [d // 2 for d in short]
    if any(short):
        pads = [p for d, b in zip(reversed(short), reversed(before), strict=True) for p in (b, d - b)]
        image = F.pad(image, pads, mode="constant", value=0)
    padded = tuple(image.shape[2:])
    origins = list(itertools.product(*(window_starts(s, p, step) for s, p in zip(padded, patch, strict=True))))
    gaussian = gaussian_importance_map(patch, sigma_scale, image.device)
    flips = mirror_combinations(mirror_axes)
    n = image.shape[0]
    logits: Tensor | None = None
    weights = torch.zeros(padded, dtype=torch.float32, device=image.device)
    for start in range(0, len(origins), window_batch):
        group = [
            tuple(slice(o, o + p) for o, p in zip(origin, patch)) for origin in origins[start : start + window_batch]
        ]
        out = mirrored(forward, torch.cat([image[(..., *window)] for window in group]), flips)
        if tuple(out.shape[2:]) != patch or out.shape[0] != n * len(group):
            raise ValueError(f"the net gave logits of shape {tuple(out.shape)} for {len(group) * n} patches {patch}")
        out = out * gaussian  # not in place: the net's output may be needed by autograd or held by the net
        if logits is None:
            logits = torch.zeros((n, out.shape[1], *padded), dtype=torch.float32, device=image.device)
        for i, window in enumerate(group):
            logits[(..., *window)] += out[i * n : (i + 1) * n]
            weights[window] += gaussian
    logits /= weights
    return logits[(..., *(slice(b, b + s) for b, s in zip(before, size, strict=True)))]
