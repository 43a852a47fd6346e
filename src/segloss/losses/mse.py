"""Mean squared error between class probabilities and the one-hot target."""

from __future__ import annotations

import torch
from torch import Tensor

from segloss.losses._checks import TargetChecks, check_hard_target
from segloss.losses._region import class_probabilities


class MSELoss(torch.nn.Module):
    """L = mean over non-ignored pixels and classes of (p_c − y_c)², p = softmax (sigmoid for C = 1).

    The classic comparison with cross-entropy: for a sigmoid output p = σ(z), ∂(p − y)²/∂z =
    2(p − y)·p(1 − p), which vanishes when p saturates at the wrong answer, whereas ∂CE/∂z = p − y
    does not; MSE therefore learns slowly from confident mistakes (see docs/losses.md).
    """

    def __init__(self, ignore_index: int = 255, check_values: bool = True) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.check_values = TargetChecks(check_values)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        valid, safe = check_hard_target(logits, target, self.ignore_index, self.check_values)
        probs = class_probabilities(logits)
        if probs.shape[1] == 1:
            squared = (probs[:, 0] - (safe == 1).to(probs.dtype)).square()
        else:  # Σ_c (p_c − y_c)² = Σ_c p_c² − 2 p_t + 1, without a one-hot tensor
            p_true = probs.gather(1, safe.unsqueeze(1)).squeeze(1)
            squared = probs.square().sum(1) - 2 * p_true + 1
        return (squared * valid).sum() / (valid.sum() * probs.shape[1]).clamp_min(1)
