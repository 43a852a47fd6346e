"""Weighted sums of losses (CE + Dice, CE + Lovász, …), each term reported separately."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from segloss.losses.schedules import WeightSchedule
from segloss.losses.structure import image_kwargs, wants_image


class CompoundLoss(nn.Module):
    """L = Σ_i w_i L_i over named terms.

    Args:
        terms: ``{name: loss}``; each follows the loss contract.
        weights: ``{name: w_i}``; a term without a weight gets 1. A weight may be a schedule of the training
            progress (:mod:`segloss.losses.schedules`): the module calls :meth:`set_progress` at every
            training batch, and logs the scheduled weights as ``train/loss_weight/<name>``.

    ``with_terms(logits, target)`` (or ``forward(…, return_terms=True)``) also returns the unweighted term
    values, which the LightningModule logs as ``<stage>/loss/<name>`` (:mod:`segloss.losses.structure`).

    A term that needs the batch's image (``needs_image``, e.g. :class:`~segloss.losses.crf.DenseCRFLoss`) makes
    the compound need it too (:attr:`needs_image`); ``image=`` is then passed to those terms only, the others are
    called ``term(logits, target)`` as before.
    """

    def __init__(self, terms: dict[str, nn.Module], weights: Mapping[str, float | Mapping] | None = None) -> None:
        super().__init__()
        if not terms:
            raise ValueError("CompoundLoss needs at least one term")
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(terms))
        if unknown:
            raise ValueError(f"weights name terms {unknown} that are not in terms {sorted(terms)}")
        self.terms = nn.ModuleDict(terms)
        self.schedules = {name: WeightSchedule.of(weights.get(name, 1.0)) for name in terms}
        self.set_progress(0, 0)

    def set_progress(self, step: int, epoch: int) -> None:
        """Evaluate the weight schedules at this optimizer step and epoch."""
        self.weights = {name: schedule(step, epoch) for name, schedule in self.schedules.items()}

    @property
    def scheduled(self) -> list[str]:
        """The terms whose weight changes during training."""
        return [name for name, schedule in self.schedules.items() if not schedule.constant]

    @property
    def needs_image(self) -> bool:
        """Whether a term takes the batch's image (:func:`segloss.losses.structure.wants_image`)."""
        return any(wants_image(term) for term in self.terms.values())

    def with_terms(
        self, logits: Tensor, target: Tensor, image: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``(total, {name: unweighted term value})`` (:mod:`segloss.losses.structure`); ``image`` goes to the
        terms that want it."""
        values = {name: term(logits, target, **image_kwargs(term, image)) for name, term in self.terms.items()}
        total = torch.stack([self.weights[name] * value for name, value in values.items()]).sum()
        return total, values

    def forward(self, logits: Tensor, target: Tensor, return_terms: bool = False, image: Tensor | None = None):
        total, values = self.with_terms(logits, target, image)
        return (total, values) if return_terms else total
