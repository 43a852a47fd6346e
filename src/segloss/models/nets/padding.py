"""Pad inputs to a multiple of the network's total stride and crop the logits back."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Replicate-pad the bottom/right of ``x`` (N×C×H×W) so H and W divide by ``multiple``.

    Returns the padded tensor and the original ``(H, W)`` to crop back to.
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return x, (h, w)


class PadToStride(nn.Module):
    """Wrap a net that needs sizes divisible by ``stride`` so it accepts any size (logits at input size)."""

    def __init__(self, net: nn.Module, stride: int) -> None:
        super().__init__()
        self.net, self.stride = net, stride

    def forward(self, image: Tensor) -> Tensor:
        padded, (h, w) = pad_to_multiple(image, self.stride)
        return self.net(padded)[..., :h, :w]
