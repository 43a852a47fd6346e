"""What the training reads of a loss's structure, without knowing its class: named terms, weight schedules,
deep supervision.

A loss is any ``nn.Module`` ``loss(logits, target) -> 0-dim tensor``. One that is made of parts (such as
:class:`~segloss.losses.compound.CompoundLoss`) also offers

- ``with_terms(logits, target) -> (total, {name: unweighted value})``, logged as ``<stage>/loss/<name>``;
- ``set_progress(step, epoch)`` and ``scheduled`` / ``weights``, for term weights that follow the training
  (logged as ``train/loss_weight/<name>``);
- ``needs_image = True``, for a loss that also needs the batch's image (a pairwise CRF term such as
  :class:`~segloss.losses.crf.DenseCRFLoss`): it is called ``loss(logits, target, image=…)`` with the image as
  float RGB in [0, 255] (``SegmentationModule.rgb``). A CompoundLoss needs it when one of its terms does, and passes
  it to those terms only.

:func:`total_and_terms`, :func:`set_progress`, :func:`scheduled_weights` and :func:`wants_image` read that protocol
(a plain loss has no terms, no schedule and needs no image; it is called ``loss(logits, target)`` exactly as before).
:class:`DeepSupervision` applies a loss to a net's auxiliary outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


def wants_image(loss: nn.Module) -> bool:
    """Whether ``loss`` takes the batch's image: it declares ``needs_image`` (a CompoundLoss does when one of its
    terms wants it)."""
    return bool(getattr(loss, "needs_image", False))


def image_kwargs(loss: nn.Module, image: Tensor | None) -> dict[str, Tensor | None]:
    """``{"image": image}`` for a loss that wants the image (None included: the loss says what is missing),
    ``{}`` for the others, which are called as before."""
    return {"image": image} if wants_image(loss) else {}


def total_and_terms(
    loss: nn.Module, logits: Tensor, target: Tensor, image: Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """``(total, terms)``: the loss and its named parts (``{}`` for a loss without parts). ``image`` (RGB in
    [0, 255]) reaches only a loss that wants it (:func:`wants_image`)."""
    extra = image_kwargs(loss, image)
    with_terms = getattr(loss, "with_terms", None)
    if with_terms is None:
        return loss(logits, target, **extra), {}
    total, terms = with_terms(logits, target, **extra)
    return total, dict(terms)


def set_progress(loss: nn.Module, step: int, epoch: int) -> None:
    """Tell a loss whose term weights follow the training where the training is (others ignore it)."""
    update = getattr(loss, "set_progress", None)
    if update is not None:
        update(step, epoch)


def scheduled_weights(loss: nn.Module) -> dict[str, float]:
    """The current weights of the terms whose weight changes during training (``{}`` for most losses)."""
    return {name: loss.weights[name] for name in getattr(loss, "scheduled", [])}


class DeepSupervision:
    """Deep supervision: ``L = L(main) + Σ_k w_k · L(aux_k)`` over a net's auxiliary outputs (nnU-Net's deep
    supervision; MMSegmentation's auxiliary FCN head at ``loss_weight`` 0.4).

    ``outputs`` is what the net returned: the logits, or in training ``(logits, [aux logits, …])`` from
    :class:`segloss.models.nets.aux_heads.AuxiliaryHeads`. Each auxiliary loss is also a term, ``aux<k>``
    (unweighted). Holds no parameters, and takes the loss as an argument instead of wrapping it, so the
    module's ``loss.*`` checkpoint keys stay what they were (old checkpoints load)."""

    def __init__(self, weights: Sequence[float] = ()) -> None:
        self.weights = [float(w) for w in weights]

    def __call__(
        self, loss: nn.Module, outputs, target: Tensor, image: Tensor | None = None
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """``(total, main logits, terms)``. ``image`` reaches a loss that wants it (:func:`wants_image`), for the
        auxiliary outputs too (they come at the main output's size)."""
        logits, aux = outputs if isinstance(outputs, tuple) else (outputs, [])
        total, terms = total_and_terms(loss, logits, target, image)
        for k, (weight, extra) in enumerate(zip(self.weights, aux, strict=False)):
            terms[f"aux{k}"] = loss(extra, target, **image_kwargs(loss, image))
            total = total + weight * terms[f"aux{k}"]
        return total, logits, terms
