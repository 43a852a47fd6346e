"""Kullback–Leibler divergence to a soft or (smoothed) hard target, with temperature."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from segloss.losses._checks import TargetChecks, at_least_float32, check_hard_target


class KLDivLoss(torch.nn.Module):
    """KL(q ‖ p) = Σ_c q_c (log q_c − log p_c), mean over non-ignored pixels, times T².

    * q is the target distribution: a soft target (float N×C×S… probabilities, e.g. a teacher's)
      or the one-hot of a hard target, smoothed to (1 − ε)·y + ε/C with ``label_smoothing`` ε.
    * p = softmax(logits / T); the T² factor keeps gradient magnitudes comparable across
      temperatures (Hinton et al. 2015, distillation).
    * 0·log 0 = 0. KL is **not symmetric**: KL(q ‖ p) with q one-hot equals cross-entropy, while
      KL(p ‖ one-hot) is infinite. With hard targets, ε = 0 and T = 1 this equals CE exactly.
    * Soft targets have no ignored pixels unless a pixel's q sums to 0, which marks it ignored.
    (MMSegmentation's KLDivLoss fed probabilities where torch expects log-probabilities.)
    """

    def __init__(
        self, temperature: float = 1.0, label_smoothing: float = 0.0, ignore_index: int = 255, check_values: bool = True
    ) -> None:
        super().__init__()
        if temperature <= 0 or not 0 <= label_smoothing <= 1:
            raise ValueError(f"need temperature > 0 and 0 ≤ label_smoothing ≤ 1, got {temperature}, {label_smoothing}")
        self.temperature, self.label_smoothing = temperature, label_smoothing
        self.ignore_index = ignore_index
        self.check_values = TargetChecks(check_values)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.shape[1] < 2:
            raise ValueError("KLDivLoss needs C ≥ 2 class logits (softmax); use BinaryCrossEntropyLoss for C = 1")
        log_p = F.log_softmax(at_least_float32(logits) / self.temperature, dim=1)
        if target.is_floating_point():
            if target.shape != logits.shape:
                raise ValueError(f"soft target shape {tuple(target.shape)} must equal logits {tuple(logits.shape)}")
            q = at_least_float32(target).to(log_p.dtype)
            valid = q.sum(1) > 0
        else:
            valid, safe = check_hard_target(logits, target, self.ignore_index, self.check_values)
            c = logits.shape[1]
            q = torch.zeros_like(log_p).scatter_(1, safe.unsqueeze(1), 1.0)
            q = q * (1 - self.label_smoothing) + self.label_smoothing / c
        kl = (torch.xlogy(q, q) - q * log_p).sum(1) * valid
        return kl.sum() / valid.sum().clamp_min(1) * self.temperature**2
