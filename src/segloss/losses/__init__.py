"""Segmentation losses. Contract: ``loss(logits N×C×S…, target N×S…) -> 0-dim float32 tensor``.

C = 1 is binary (sigmoid of the single channel); C ≥ 2 is softmax over the classes. Every loss
reduces in float32, ignores ``ignore_index`` pixels everywhere (numerators, denominators, means,
sorts, class presence) and returns 0 for an all-ignored batch. Formulas, papers and conventions are
in each class's docstring and in ``docs/losses.md``.

A loss that also needs the batch's image (``needs_image``: :class:`DenseCRFLoss`, a label-free pairwise term that
by default covers every pixel, ignored ones included; ``docs/crf.md``) is called ``loss(logits, target, image=…)``
(:func:`wants_image`, :func:`total_and_terms`).
"""

from segloss.losses.class_weights import class_weights
from segloss.losses.cldice import ClDiceLoss
from segloss.losses.compound import CompoundLoss
from segloss.losses.crf import DenseCRFLoss, dense_crf_loss
from segloss.losses.cross_entropy import BinaryCrossEntropyLoss, CrossEntropyLoss, cross_entropy
from segloss.losses.distance import BoundaryLoss, HausdorffDTLoss
from segloss.losses.focal import FocalLoss, focal_loss
from segloss.losses.hard_mining import OhemCrossEntropyLoss, TopKCrossEntropyLoss
from segloss.losses.kl import KLDivLoss
from segloss.losses.lovasz import LovaszHingeLoss, LovaszSoftmaxLoss
from segloss.losses.mse import MSELoss
from segloss.losses.region import DiceLoss, FocalTverskyLoss, GeneralizedDiceLoss, JaccardLoss, TverskyLoss
from segloss.losses.structure import (
    DeepSupervision,
    scheduled_weights,
    set_progress,
    total_and_terms,
    wants_image,
)
from segloss.losses.unified_focal import UnifiedFocalLoss

__all__ = [
    "BinaryCrossEntropyLoss",
    "BoundaryLoss",
    "ClDiceLoss",
    "CompoundLoss",
    "CrossEntropyLoss",
    "DeepSupervision",
    "DenseCRFLoss",
    "DiceLoss",
    "FocalLoss",
    "FocalTverskyLoss",
    "GeneralizedDiceLoss",
    "HausdorffDTLoss",
    "JaccardLoss",
    "KLDivLoss",
    "LovaszHingeLoss",
    "LovaszSoftmaxLoss",
    "MSELoss",
    "OhemCrossEntropyLoss",
    "TopKCrossEntropyLoss",
    "TverskyLoss",
    "UnifiedFocalLoss",
    "class_weights",
    "cross_entropy",
    "dense_crf_loss",
    "focal_loss",
    "scheduled_weights",
    "set_progress",
    "total_and_terms",
    "wants_image",
]
