"""Class weights from label statistics: inverse frequency, median frequency and ENet weighting."""

from __future__ import annotations

import math

import torch
from torch import Tensor

METHODS = ("inverse", "median_frequency", "enet")


def class_weights(counts: Tensor, method: str, image_pixels: Tensor | None = None, enet_c: float = 1.02) -> Tensor:
    """Per-class weights (float32, length C) from pixel counts n_c of the training labels.

    * ``inverse``: w_c = N / (C · n_c), N = Σ n_c (weights average to 1 under the label distribution).
    * ``median_frequency`` (Eigen & Fergus, ICCV 2015): freq_c = n_c / (pixels of the images that
      contain c) — ``image_pixels`` — and w_c = median(freq) / freq_c, the median over the classes
      that occur (the mean of the two middle values when their number is even).
    * ``enet`` (Paszke et al. 2016): w_c = 1 / ln(c + n_c / N), c = 1.02.

    A class with no pixels gets weight 0 for ``inverse`` and ``median_frequency`` (it is never a
    target, and an infinite weight would poison α-weighted losses).
    """
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if method not in METHODS:
        raise ValueError(f"unknown class-weight method {method!r}; choose one of {METHODS}")
    if counts.dim() != 1 or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(f"counts must be a non-negative 1-D tensor with some pixels, got {counts.tolist()}")
    present = counts > 0
    total, num_classes = counts.sum(), counts.numel()
    if method == "enet":
        weights = 1.0 / torch.log(enet_c + counts / total)
    elif method == "inverse":
        weights = torch.where(present, total / (num_classes * counts.clamp_min(1)), torch.zeros_like(counts))
    else:
        if image_pixels is None:
            raise ValueError("median_frequency needs image_pixels: the pixels of the images containing each class")
        image_pixels = torch.as_tensor(image_pixels, dtype=torch.float64)
        freq = torch.where(present, counts / image_pixels.clamp_min(1), torch.zeros_like(counts))
        median = torch.quantile(freq[present], 0.5)
        weights = torch.where(present, median / freq.clamp_min(math.ulp(0.0)), torch.zeros_like(counts))
    return weights.float()
