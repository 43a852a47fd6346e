"""Weighted sums of losses (CE + Dice, CE + Lovász, …), each term reported separately."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class CompoundLoss(nn.Module):
    """L = Σ_i w_i L_i over named terms.

    Args:
        terms: ``{name: loss}``; each follows the loss contract.
        weights: ``{name: w_i}``; a term without a weight gets 1.

    ``forward(logits, target, return_terms=True)`` also returns the unweighted term values, which
    the LightningModule logs as ``<stage>/loss/<name>``.
    """

    def __init__(self, terms: dict[str, nn.Module], weights: dict[str, float] | None = None) -> None:
        super().__init__()
        if not terms:
            raise ValueError("CompoundLoss needs at least one term")
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(terms))
        if unknown:
            raise ValueError(f"weights name terms {unknown} that are not in terms {sorted(terms)}")
        self.terms = nn.ModuleDict(terms)
        self.weights = {name: float(weights.get(name, 1.0)) for name in terms}

    def forward(self, logits: Tensor, target: Tensor, return_terms: bool = False):
        values = {name: term(logits, target) for name, term in self.terms.items()}
        total = torch.stack([self.weights[name] * value for name, value in values.items()]).sum()
        return (total, values) if return_terms else total
