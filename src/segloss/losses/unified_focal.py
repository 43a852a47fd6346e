"""Unified Focal loss (Yeung, Sala, Schönlieb & Rundo, "Unified Focal loss: Generalising Dice and cross
entropy-based losses to handle class imbalanced medical image segmentation", CMIG 95, 2022).

One family that holds CE, Focal, Dice, Tversky and Focal-Tversky as special cases, with three parameters:
λ weighs the two parts, δ the classes (and, in the Tversky part, false negatives against false
positives), γ the focal suppression/enhancement. With p the softmax (or, for C = 1, the two probabilities
1 − σ(z), σ(z)), y the one-hot target, b the background class and V the non-ignored pixels:

* class weight w_c = 1 − δ for the background, δ for every other class ("rare") class;
* focal part, mean over V:  L_F = −(1/|V|) Σ_V Σ_c w_c · m_c · y_c log p_c, with m_c = (1 − p_c)^γ for every class
  (symmetric) or for the background only and m_c = 1 for the rare classes (asymmetric: the rare classes
  are never down-weighted);
* Tversky part, per image and class: mTI_c = (TP_c + ε) / (TP_c + δ·FN_c + (1 − δ)·FP_c + ε) with
  TP = Σ p·y, FN = Σ (1 − p)·y, FP = Σ p·(1 − y) over the image's non-ignored pixels (δ weighs false
  negatives, the authors' convention — Tversky's α/β naming differs between libraries, see
  :class:`segloss.losses.TverskyLoss`), then L_T = mean over images and classes of (1 − mTI_c) for the
  background and (1 − mTI_c)^(1−γ) for the rare classes (asymmetric; symmetric: (1 − mTI_c)^(1−γ) for all);
* L_UF = λ·L_T + (1 − λ)·L_F.

Defaults are the paper's (λ = 0.5, δ = 0.6, γ = 0.5; ε = 1e-6 as the authors' code). The paper writes the
binary case; here every non-background class is rare, which is its multi-class reading (MONAI's
``AsymmetricUnifiedFocalLoss`` is binary only). An image with no valid pixel counts nowhere; an all-ignored
batch gives 0.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from segloss.losses._checks import TargetChecks, at_least_float32, check_hard_target
from segloss.losses._region import one_hot


class UnifiedFocalLoss(nn.Module):
    """λ·(focal Tversky part) + (1 − λ)·(focal part), symmetric or asymmetric (module docstring).

    Args:
        weight: λ, the share of the Tversky part.
        delta: δ, the weight of the rare classes (1 − δ for the background) and of false negatives.
        gamma: γ ∈ (0, 1]: focal exponent of the CE part, 1 − γ that of the Tversky part.
        asymmetric: suppress only the background (True, the paper's recommendation) or every class.
        background_index: the class that is suppressed; every other class is rare.
        smooth: ε of the Tversky index.
    """

    def __init__(
        self,
        weight: float = 0.5,
        delta: float = 0.6,
        gamma: float = 0.5,
        asymmetric: bool = True,
        background_index: int = 0,
        smooth: float = 1e-6,
        ignore_index: int = 255,
        check_values: bool = True,
    ) -> None:
        super().__init__()
        if not 0 <= weight <= 1 or not 0 <= delta <= 1 or not 0 < gamma <= 1:
            raise ValueError(f"UnifiedFocalLoss needs λ, δ in [0, 1] and γ in (0, 1]; got {weight}, {delta}, {gamma}")
        self.weight, self.delta, self.gamma, self.asymmetric = weight, delta, gamma, asymmetric
        self.background_index, self.smooth = background_index, smooth
        self.ignore_index = ignore_index
        self.check_values = TargetChecks(check_values)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        valid, safe = check_hard_target(logits, target, self.ignore_index, self.check_values)
        logits = at_least_float32(logits)
        if logits.shape[1] == 1:  # binary: background 1 − σ(z), foreground σ(z)
            log_p = torch.cat([F.logsigmoid(-logits), F.logsigmoid(logits)], dim=1)
        else:
            log_p = F.log_softmax(logits, dim=1)
        n, c = log_p.shape[:2]
        log_p = log_p.reshape(n, c, -1)
        v = valid.reshape(n, 1, -1).to(log_p.dtype)
        y = one_hot(safe.reshape(n, -1), c).to(log_p.dtype) * v
        rare = torch.arange(c, device=logits.device) != self.background_index
        return self.weight * self._tversky(log_p.exp(), y, v, rare) + (1 - self.weight) * self._focal(log_p, y, v, rare)

    def _focal(self, log_p: Tensor, y: Tensor, v: Tensor, rare: Tensor) -> Tensor:
        class_weight = torch.where(rare, self.delta, 1 - self.delta).view(1, -1, 1)
        gap = (-torch.expm1(log_p)).clamp_min(torch.finfo(log_p.dtype).tiny)  # 1 − p, finite slope of x^γ at 0
        modulation = gap.pow(self.gamma)
        if self.asymmetric:
            modulation = torch.where(rare.view(1, -1, 1), 1.0, modulation)
        per_pixel = -(class_weight * modulation * y * log_p).sum(1)
        return per_pixel.sum() / v.sum().clamp_min(1.0)

    def _tversky(self, p: Tensor, y: Tensor, v: Tensor, rare: Tensor) -> Tensor:
        p = p * v
        tp = (p * y).sum(-1)
        fn = ((1 - p) * y).sum(-1)  # y is 0 on ignored pixels
        fp = (p * (1 - y) * v).sum(-1)
        index = (tp + self.smooth) / (tp + self.delta * fn + (1 - self.delta) * fp + self.smooth)
        gap = (1 - index).clamp_min(torch.finfo(index.dtype).tiny)  # 1 − mTI ≥ 0; finite slope of x^(1−γ) at 0
        enhanced = gap.pow(1 - self.gamma)
        per_class = torch.where(rare.view(1, -1), enhanced, gap) if self.asymmetric else enhanced
        counted = (v.sum(-1) > 0).to(p.dtype)  # N × 1: images with valid pixels
        return (per_class * counted).sum() / (counted.sum() * per_class.shape[1]).clamp_min(1.0)
