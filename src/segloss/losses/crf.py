"""Dense-CRF regularised loss (Tang et al., "On Regularized Losses for Weakly-supervised CNN Segmentation",
ECCV 2018), evaluated on bounded local windows as the Gated CRF loss does (Obukhov et al., "Gated CRF Loss for
Weakly Supervised Semantic Image Segmentation", arXiv:1906.04651, 2019). See ``docs/crf.md``."""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from segloss.losses._checks import TargetChecks, at_least_float32, check_hard_target

IMAGE_MISSING = (
    "DenseCRFLoss needs the batch's RGB image (N×3×S…, values in [0, 255]): call loss(logits, target, image=…); "
    "SegmentationModule passes it (SegmentationModule.rgb) to every loss that declares needs_image, also inside a "
    "CompoundLoss (segloss.losses.structure.wants_image)"
)


def _offsets(size: tuple[int, ...], radius: int | None) -> list[tuple[int, ...]]:
    """One offset δ of each pair {δ, −δ} in the window max_d |δ_d| ≤ r (the first non-zero component positive),
    without those that leave the grid (|δ_d| ≥ size_d); ``radius=None`` takes every offset of the grid."""
    reach = [s - 1 if radius is None else min(int(radius), s - 1) for s in size]
    found = []
    for delta in itertools.product(*(range(-r, r + 1) for r in reach)):
        first = next((d for d in delta if d), 0)
        if first > 0:
            found.append(delta)
    return found


def _downscale(x: Tensor, size: tuple[int, ...]) -> Tensor:
    """Area (box) average onto ``size``: adaptive average pooling, for 1 to 3 spatial dims."""
    if tuple(x.shape[2:]) == size:
        return x
    if x.dim() > 5:
        raise ValueError(f"scale < 1 is implemented for 1 to 3 spatial dims, got {x.dim() - 2}; use scale=1")
    return F.interpolate(x, size=size, mode="area")


def dense_crf_loss(
    logits: Tensor,
    target: Tensor,
    image: Tensor | None,
    sigma_rgb: float = 15.0,
    sigma_xy: float = 80.0,
    scale: float = 0.5,
    radius: int | None = 5,
    ignore_index: int = 255,
    ignore_unlabelled: bool = False,
    check_values: bool | TargetChecks = True,
) -> Tensor:
    """Dense-CRF energy of the soft segmentation, per counted pixel (Tang et al. 2018):

        L = (1/|V|) Σ_k S_kᵀ W (1 − S_k) = (1/|V|) Σ_{i ≠ j} m_i m_j w_ij (1 − ⟨S_i, S_j⟩),

        w_ij = exp(−‖p_i − p_j‖² / (2σ_xy²) − ‖I_i − I_j‖² / (2σ_rgb²)),

    with S = softmax(logits) over the classes (C = 1: S = [1 − σ(z), σ(z)]), I the image in [0, 255] (any number
    of channels; RGB for the paper's kernel), p the pixel position in full-resolution pixels, m_i ∈ [0, 1] whether
    pixel i counts (the counted fraction of a downscaled pixel), |V| = Σ_i m_i. It is the relaxation of the Potts
    model of the fully connected CRF (Krähenbühl & Koltun 2011) with its bilateral kernel: zero for a hard,
    piecewise-constant S whose changes fall where the colour changes, positive where pixels of similar colour and
    position disagree. It needs no labels.

    * Resolution: like Tang et al.'s code, the energy is computed on the image downscaled by ``scale`` (0.5 for
      their experiments); S and I are box-averaged (``F.interpolate(mode="area")``) to round(scale·size) per dim,
      and the position term measures distances in full-resolution pixels, so ``sigma_xy`` does not depend on
      ``scale``.
    * Window (Obukhov et al. 2019's local approximation): pairs with max_d |Δp_d| ≤ ``radius`` in the scaled grid;
      each pair is visited once per offset through shifted views, batched over the images. A radius that reaches
      across the scaled grid (or ``radius=None``) gives the exact dense energy, in O(P²) for P scaled pixels.
    * Normalisation: divided by |V|, the number of counted pixels of the scaled batch (their total area fraction
      where pooled), so λ does not depend on the image or batch size. It does depend on the window: with the
      default σ_xy ≫ r, each pixel sees up to (2r + 1)^D − 1 neighbours. Tang et al.'s code sums the energy over
      the scaled pixels and divides by the batch size N (weight λ_T ≈ 2e-9, without the constant Σ_ij w_ij, which
      leaves the gradient unchanged); their λ_T corresponds to λ = λ_T·P per image of P scaled pixels here (times
      the ratio of dense to windowed energy).
    * Ignored pixels: the term is label-free, so by default every pixel with an image counts whatever its label
      (m ≡ 1; Tang et al.'s weakly-supervised setting, in which the unlabelled pixels are the point; padding added
      by crops or batching counts with its fill colour). ``ignore_unlabelled=True`` follows segloss's convention
      instead: pixels with ``target == ignore_index`` count neither as i nor as j, nor in |V| (a scaled pixel
      counts with the fraction of its pixels that count, and its S averages those pixels only); an all-ignored
      batch then gives 0.

    Reduced in float32 (float64 stays float64); the image carries no gradient.
    """
    valid, _ = check_hard_target(logits, target, ignore_index, check_values)
    if image is None:
        raise ValueError(IMAGE_MISSING)
    if image.dim() != logits.dim() or image.shape[0] != logits.shape[0] or image.shape[2:] != logits.shape[2:]:
        raise ValueError(
            f"image shape {tuple(image.shape)} does not fit logits {tuple(logits.shape)}: DenseCRFLoss needs the "
            "batch's image N×channels×spatial… at the logits' resolution"
        )
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    logits = at_least_float32(logits)
    dtype = logits.dtype
    binary = logits.shape[1] == 1
    probs = torch.cat([torch.sigmoid(-logits), torch.sigmoid(logits)], 1) if binary else logits.softmax(1)
    full = tuple(logits.shape[2:])
    size = tuple(max(1, round(s * scale)) for s in full)
    # ‖I_i − I_j‖²/(2σ_rgb²) as a plain squared distance of the scaled colours
    colour = _downscale(image.detach().to(dtype), size) / (math.sqrt(2.0) * sigma_rgb)
    if ignore_unlabelled:
        counted = valid.unsqueeze(1).to(dtype)
        weight = _downscale(counted, size)  # the fraction of each scaled pixel that counts
        probs = _downscale(probs * counted, size) / weight.clamp_min(torch.finfo(dtype).tiny)
        weight = weight[:, 0]
    else:
        weight = None
        probs = _downscale(probs, size)
    step = [f / s for f, s in zip(full, size, strict=True)]  # a scaled pixel's extent in full-resolution pixels
    pairs = []
    for delta in _offsets(size, radius):
        near = math.exp(-sum((d * h) ** 2 for d, h in zip(delta, step, strict=True)) / (2.0 * sigma_xy**2))
        here = tuple(slice(max(0, -d), s - max(0, d)) for d, s in zip(delta, size, strict=True))
        there = tuple(slice(max(0, d), s - max(0, -d)) for d, s in zip(delta, size, strict=True))
        pairs.append((near, here, there))
    energy = _WindowedPotts.apply(probs, colour, weight, pairs)
    counted_pixels = weight.sum() if weight is not None else probs.new_tensor(float(probs.shape[0] * math.prod(size)))
    return energy / counted_pixels.clamp_min(1.0)


def _pair_kernels(colour: Tensor, weight: Tensor | None, pairs: list):
    """``(here, there, w)`` per offset: the slices of the pixels i and of their partners j = i + δ, and w_ij
    (times m_i m_j) over those pixels, N×S′."""
    for near, here, there in pairs:
        kernel = torch.exp(-(colour[(..., *here)] - colour[(..., *there)]).pow(2).sum(1)).mul_(near)
        if weight is not None:
            kernel = kernel * weight[(slice(None), *here)] * weight[(slice(None), *there)]
        yield here, there, kernel


class _WindowedPotts(torch.autograd.Function):
    """E = Σ_{i≠j} w_ij (1 − ⟨S_i, S_j⟩) over ordered pairs (each offset δ stands for δ and −δ), and its gradient
    ∂E/∂S_i = −2 Σ_j w_ij S_j (w symmetric), which backward recomputes offset by offset: autograd would keep
    tensors of every offset and add each slice's gradient into a full-size zero tensor."""

    @staticmethod
    def forward(ctx, probs: Tensor, colour: Tensor, weight: Tensor | None, pairs: list) -> Tensor:
        ctx.save_for_backward(probs, colour, weight)
        ctx.pairs = pairs
        total = probs.new_zeros(())
        for here, there, kernel in _pair_kernels(colour, weight, pairs):
            agree = (probs[(..., *here)] * probs[(..., *there)]).sum(1)
            total += (kernel * (1 - agree)).sum()
        return 2 * total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        probs, colour, weight = ctx.saved_tensors
        filtered = torch.zeros_like(probs)  # (W S)_i = Σ_j w_ij S_j
        for here, there, kernel in _pair_kernels(colour, weight, ctx.pairs):
            kernel = kernel.unsqueeze(1)
            filtered[(..., *here)].addcmul_(kernel, probs[(..., *there)])
            filtered[(..., *there)].addcmul_(kernel, probs[(..., *here)])
        return filtered.mul_(-2 * grad), None, None, None


class DenseCRFLoss(nn.Module):
    """Dense-CRF regularised loss of Tang et al. (ECCV 2018) on local windows, per counted pixel
    (see :func:`dense_crf_loss` for the formula, the normalisation and the conventions).

    Label-free: it needs the batch's image, so it declares ``needs_image = True`` and is called
    ``loss(logits, target, image=…)`` (:func:`segloss.losses.structure.wants_image`; the module passes
    ``SegmentationModule.rgb(batch["image"])``, RGB in [0, 255]). Used as L = L_CE + λ·L_CRF
    (``configs/loss/ce_crf.yaml``).

    Args:
        sigma_rgb: colour bandwidth σ_rgb on the [0, 255] scale (Tang et al.: 15).
        sigma_xy: position bandwidth σ_xy in full-resolution pixels (Tang et al.'s code: 80; their example
            training command passes 100).
        scale: the energy is computed on the image downscaled by this factor (their code: 0.5 on VOC crops).
        radius: half-width r of the window in the scaled grid (pairs with max_d |Δp_d| ≤ r); None = the whole
            image (exact dense energy, quadratic cost).
        ignore_index: label value of unlabelled pixels.
        ignore_unlabelled: exclude pixels with ``target == ignore_index`` (default False: the term covers every
            pixel, being label-free, as in the weakly-supervised setting).
        check_values: verify target values (one host sync per call on an accelerator, first calls only).
    """

    needs_image = True

    def __init__(
        self,
        sigma_rgb: float = 15.0,
        sigma_xy: float = 80.0,
        scale: float = 0.5,
        radius: int | None = 5,
        ignore_index: int = 255,
        ignore_unlabelled: bool = False,
        check_values: bool = True,
    ) -> None:
        super().__init__()
        if sigma_rgb <= 0 or sigma_xy <= 0:
            raise ValueError(f"sigma_rgb and sigma_xy must be > 0, got {sigma_rgb} and {sigma_xy}")
        if not 0 < scale <= 1:
            raise ValueError(f"scale must be in (0, 1], got {scale}")
        if radius is not None and radius < 1:
            raise ValueError(f"radius must be ≥ 1 (or None for the whole image), got {radius}")
        self.sigma_rgb, self.sigma_xy, self.scale, self.radius = float(sigma_rgb), float(sigma_xy), scale, radius
        self.ignore_index, self.ignore_unlabelled = ignore_index, bool(ignore_unlabelled)
        self.check_values = TargetChecks(check_values)

    def forward(self, logits: Tensor, target: Tensor, image: Tensor | None = None) -> Tensor:
        return dense_crf_loss(
            logits,
            target,
            image,
            self.sigma_rgb,
            self.sigma_xy,
            self.scale,
            self.radius,
            self.ignore_index,
            self.ignore_unlabelled,
            self.check_values,
        )
