"""clDice (Shit, Paetzold, Sekuboyina, Ezhov, Unger, Zhylka, Pluim, Bauer & Menze, "clDice — a Novel
Topology-Preserving Loss Function for Tubular Structure Segmentation", CVPR 2021).

Thin structures (vessels, poles, wires) are scored by their centrelines: with a soft skeleton S(·),

    Tprec = (Σ S(P)·L + ε) / (Σ S(P) + ε)      (how much of the predicted skeleton lies in the label)
    Tsens = (Σ S(L)·P + ε) / (Σ S(L) + ε)      (how much of the label's skeleton is predicted)
    clDice = 2·Tprec·Tsens / (Tprec + Tsens)

for a class's probability map P and its one-hot label L, sums over the batch and the pixels (voxels). The
soft skeleton is the paper's iterative soft morphology, on images (N×C×H×W) or volumes (N×C×D×H×W, the
paper's 3-D experiments): erosion = the minimum of the axis-wise 3-wide min-pools (3×1 and 1×3 in 2-D;
3×1×1, 1×3×1 and 1×1×3 in 3-D, i.e. a min over the cross-shaped 4- / 6-neighbourhood, each min-pool being
−maxpool(−x)), dilation = the full 3×3 (3×3×3) max-pool, opening = dilation(erosion); S = ReLU(I − open(I)),
then ``iterations`` times: I ← erode(I), δ = ReLU(I − open(I)), S ← S + ReLU(δ − S·δ). That is the 3-D
definition of the authors' code (``soft_skeleton.py``: ``soft_erode`` takes the min of three
``max_pool3d`` min-pools with kernels (3,1,1), (1,3,1), (1,1,3), ``soft_dilate`` a (3,3,3) ``max_pool3d``),
as MONAI's ``soft_skel`` (tested: 3-D against max-pools, 2-D against MONAI). The loss is the paper's soft-clDice:

    L = (1 − α)·(1 − softDice) + α·(1 − clDice),   softDice = (2 Σ P·L + ε) / (Σ P + Σ L + ε)

averaged over the classes without the background (``include_background=False``), ε = 1 as the authors
(α = 1: clDice alone). Ignored pixels are zeroed in P and L before skeletonisation (they are neither
structure nor background to it) and count nowhere. Any number of spatial dims.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from segloss.losses._checks import TargetChecks, at_least_float32, check_hard_target
from segloss.losses._region import class_probabilities, one_hot


class _Max3(torch.autograd.Function):
    """max(x[i−1], x[i], x[i+1]) along one axis (−∞ past the edges): a stride-1, width-3 max-pool.

    On the CPU, ``F.max_pool2d`` with stride 1 costs ~40× these shifted maxima, and both
    ``torch.maximum``'s backward (which splits ties) and boolean masks (comparisons, ``where``) are as
    slow again; so the window's argmax is kept as two 0/1 float masks made by ``sign`` and the backward
    is products and shifted sums. The gradient rule is max-pool's: all of it to the first maximum of
    the window (positions i−1, i, i+1 in that order)."""

    @staticmethod
    def forward(ctx, x: Tensor, dim: int) -> Tensor:
        n = x.shape[dim]
        edge = x.new_full(x.narrow(dim, 0, 1).shape, float("-inf"))
        padded = torch.cat([edge, x, edge], dim)
        before, after = padded.narrow(dim, 0, n), padded.narrow(dim, 2, n)
        first = torch.maximum(before, x)
        out = torch.maximum(first, after)
        if not ctx.needs_input_grad[0]:  # labels: no masks to keep
            return out
        here_wins = (x - before).sign_().clamp_(min=0)  # 1 where x[i] > x[i−1]
        to_after = (after - first).sign_().clamp_(min=0)  # 1 where x[i+1] beats both
        to_before = (1 - here_wins).mul_(1 - to_after)
        ctx.save_for_backward(to_before, to_after)
        ctx.dim = dim
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        to_before, to_after = ctx.saved_tensors
        dim, n = ctx.dim, grad.shape[ctx.dim]
        back, ahead = grad * to_before, grad * to_after  # output i's share for input i − 1, i + 1
        out = grad - back - ahead
        out.narrow(dim, 0, n - 1).add_(back.narrow(dim, 1, n - 1))
        out.narrow(dim, 1, n - 1).add_(ahead.narrow(dim, 0, n - 1))
        return out, None


def _max3(x: Tensor, dim: int) -> Tensor:
    return _Max3.apply(x, dim)


def _spatial_dims(x: Tensor) -> range:
    """The spatial dims of an N×C×S… tensor, as negative indices from the first (−2, −1 for N×C×H×W)."""
    return range(2 - x.dim(), 0)


def soft_erode(x: Tensor) -> Tensor:
    """The paper's cross-shaped erosion: the min over the spatial axes of the axis-wise 3-wide min-pools
    (3×1 and 1×3 of N×C×H×W maps; 3×1×1, 1×3×1 and 1×1×3 of N×C×D×H×W volumes)."""
    negated = -x
    axes = iter(_spatial_dims(x))
    out = _max3(negated, next(axes))
    for dim in axes:
        out = torch.maximum(out, _max3(negated, dim))
    return -out


def soft_dilate(x: Tensor) -> Tensor:
    """The full 3×3 (3×3×3) max-pool, as separable 3-wide maxima along each spatial axis in turn."""
    for dim in _spatial_dims(x):
        x = _max3(x, dim)
    return x


def soft_skeleton(x: Tensor, iterations: int) -> Tensor:
    """The soft skeleton of N×C×S… maps in [0, 1]: images or volumes (module docstring).

    The paper's loop erodes each iterate twice (once to step, once inside the opening); the erosion of
    step k is the next step's iterate, so it is computed once here: the same values, 4 erosions instead of
    7 for 3 iterations."""
    eroded = soft_erode(x)
    skeleton = F.relu(x - soft_dilate(eroded))
    for _ in range(iterations):
        x, eroded = eroded, soft_erode(eroded)
        delta = F.relu(x - soft_dilate(eroded))
        skeleton = skeleton + F.relu(delta - skeleton * delta)
    return skeleton


class ClDiceLoss(nn.Module):
    """(1 − α)·soft-Dice loss + α·(1 − clDice), mean over the (foreground) classes (module docstring).

    Args:
        alpha: α, the share of the clDice term (the paper trains with 0.1–0.5).
        iterations: skeletonisation steps; about the largest half-width of the structures, in pixels (voxels).
        smooth: ε.
    """

    def __init__(
        self,
        alpha: float = 0.5,
        iterations: int = 3,
        smooth: float = 1.0,
        include_background: bool = False,
        ignore_index: int = 255,
        check_values: bool = True,
    ) -> None:
        super().__init__()
        if not 0 <= alpha <= 1 or iterations < 0:
            raise ValueError(f"ClDiceLoss needs alpha in [0, 1] and iterations ≥ 0; got {alpha}, {iterations}")
        self.alpha, self.iterations, self.smooth = alpha, iterations, smooth
        self.include_background, self.ignore_index, self.check_values = (
            include_background,
            ignore_index,
            TargetChecks(check_values),
        )

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        valid, safe = check_hard_target(logits, target, self.ignore_index, self.check_values)
        probs = class_probabilities(at_least_float32(logits))
        if probs.shape[1] == 1:
            probs = torch.cat([1 - probs, probs], dim=1)
        v = valid.unsqueeze(1).to(probs.dtype)
        label = one_hot(safe, probs.shape[1]).to(probs.dtype) * v
        first = 0 if self.include_background else 1
        p, y = (probs * v)[:, first:], label[:, first:]
        eps, dims = self.smooth, (0, *range(2, p.dim()))
        dice = (2 * (p * y).sum(dims) + eps) / (p.sum(dims) + y.sum(dims) + eps)
        skel_p, skel_y = soft_skeleton(p, self.iterations), soft_skeleton(y, self.iterations)
        precision = ((skel_p * y).sum(dims) + eps) / (skel_p.sum(dims) + eps)
        sensitivity = ((skel_y * p).sum(dims) + eps) / (skel_y.sum(dims) + eps)
        cl_dice = 2 * precision * sensitivity / (precision + sensitivity)
        return ((1 - self.alpha) * (1 - dice) + self.alpha * (1 - cl_dice)).mean()
