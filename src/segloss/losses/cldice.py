"""clDice (Shit, Paetzold, Sekuboyina, Ezhov, Unger, Zhylka, Pluim, Bauer & Menze, "clDice — a Novel
Topology-Preserving Loss Function for Tubular Structure Segmentation", CVPR 2021).

Thin structures (vessels, poles, wires) are scored by their centrelines: with a soft skeleton S(·),

    Tprec = (Σ S(P)·L + ε) / (Σ S(P) + ε)      (how much of the predicted skeleton lies in the label)
    Tsens = (Σ S(L)·P + ε) / (Σ S(L) + ε)      (how much of the label's skeleton is predicted)
    clDice = 2·Tprec·Tsens / (Tprec + Tsens)

for a class's probability map P and its one-hot label L, sums over the batch and the pixels. The soft
skeleton is the paper's iterative soft morphology: erosion = min of a 3×1 and a 1×3 min-pool, dilation =
3×3 max-pool, opening = dilation(erosion); S = ReLU(I − open(I)), then ``iterations`` times: I ← erode(I),
δ = ReLU(I − open(I)), S ← S + ReLU(δ − S·δ). The loss is the paper's soft-clDice combination

    L = (1 − α)·(1 − softDice) + α·(1 − clDice),   softDice = (2 Σ P·L + ε) / (Σ P + Σ L + ε)

averaged over the classes without the background (``include_background=False``), ε = 1 as the authors
(α = 1: clDice alone). Ignored pixels are zeroed in P and L before skeletonisation (they are neither
structure nor background to it) and count nowhere. 2-D only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from segloss.losses._checks import at_least_float32, check_hard_target
from segloss.losses._region import class_probabilities, one_hot


def soft_erode(x: Tensor) -> Tensor:
    return torch.minimum(-F.max_pool2d(-x, (3, 1), 1, (1, 0)), -F.max_pool2d(-x, (1, 3), 1, (0, 1)))


def soft_dilate(x: Tensor) -> Tensor:
    return F.max_pool2d(x, 3, 1, 1)


def soft_skeleton(x: Tensor, iterations: int) -> Tensor:
    """The soft skeleton of N×C×H×W maps in [0, 1] (module docstring)."""
    skeleton = F.relu(x - soft_dilate(soft_erode(x)))
    for _ in range(iterations):
        x = soft_erode(x)
        delta = F.relu(x - soft_dilate(soft_erode(x)))
        skeleton = skeleton + F.relu(delta - skeleton * delta)
    return skeleton


class ClDiceLoss(nn.Module):
    """(1 − α)·soft-Dice loss + α·(1 − clDice), mean over the (foreground) classes (module docstring).

    Args:
        alpha: α, the share of the clDice term (the paper trains with 0.1–0.5).
        iterations: skeletonisation steps; about the largest half-width of the structures, in pixels.
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
        self.include_background, self.ignore_index, self.check_values = include_background, ignore_index, check_values

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.dim() != 4:
            raise ValueError(f"ClDiceLoss is 2-D: logits must be N×C×H×W, got {tuple(logits.shape)}")
        valid, safe = check_hard_target(logits, target, self.ignore_index, self.check_values)
        probs = class_probabilities(at_least_float32(logits))
        if probs.shape[1] == 1:
            probs = torch.cat([1 - probs, probs], dim=1)
        v = valid.unsqueeze(1).to(probs.dtype)
        label = one_hot(safe, probs.shape[1]).to(probs.dtype) * v
        first = 0 if self.include_background else 1
        p, y = (probs * v)[:, first:], label[:, first:]
        eps, dims = self.smooth, (0, 2, 3)
        dice = (2 * (p * y).sum(dims) + eps) / (p.sum(dims) + y.sum(dims) + eps)
        skel_p, skel_y = soft_skeleton(p, self.iterations), soft_skeleton(y, self.iterations)
        precision = ((skel_p * y).sum(dims) + eps) / (skel_p.sum(dims) + eps)
        sensitivity = ((skel_y * p).sum(dims) + eps) / (skel_y.sum(dims) + eps)
        cl_dice = 2 * precision * sensitivity / (precision + sensitivity)
        return ((1 - self.alpha) * (1 - dice) + self.alpha * (1 - cl_dice)).mean()
