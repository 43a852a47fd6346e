"""3D U-Net in nnU-Net's ``3d_fullres`` design, written for this project.

The 3D U-Net is Çiçek, Abdulkadir, Lienkamp, Brox & Ronneberger, "3D U-Net: Learning Dense Volumetric
Segmentation from Sparse Annotation", MICCAI 2016 (the 2D U-Net of Ronneberger et al., MICCAI 2015, with 3×3×3
convolutions); the configuration is that of nnU-Net (Isensee, Jaeger, Kohl, Petersen & Maier-Hein, "nnU-Net: a
self-configuring method for deep learning-based biomedical image segmentation", Nature Methods 18, 2021):

* **stage** k (k = 0 … ``depth``): two blocks ``conv k×k×k → InstanceNorm3d(affine, ε = 1e-5) → LeakyReLU(0.01)``,
  the first conv of stages k ≥ 1 strided by ``strides[k−1]`` (downsampling by strided convolution, no pooling);
  width ``c_k = min(base_channels · 2^k, max_channels)`` — nnU-Net: 32, 64, 128, 256, 320, 320 for ``depth=5``;
* **decoder** stage k (k = ``depth`` … 1): transposed conv with kernel = stride = ``strides[k−1]`` from ``c_k`` to
  ``c_{k−1}`` channels, concatenation with the encoder feature of stage k−1 (the skip), two blocks as above;
* **head**: a 1×1×1 conv to the class logits.

Anisotropic data (thick slices) take per-stage ``strides`` such as ``[[1, 2, 2], [2, 2, 2], …]`` and
``kernel_sizes`` such as ``[[1, 3, 3], [1, 3, 3], [3, 3, 3], …]`` (nnU-Net's ``pool_op_kernel_sizes`` without its
leading ``[1, 1, 1]``, and ``conv_kernel_sizes``). Weights are initialised as nnU-Net's: He (Kaiming) normal with
negative slope 0.01, biases zero; the convs keep their bias as nnU-Net's plans do (``conv_bias: true``), though
InstanceNorm's mean subtraction makes it redundant.

The total stride along axis d is ``T_d = Π_k strides[k][d]``; an input whose size S_d is not a multiple of T_d is
replicate-padded at the end to ``⌈S_d / T_d⌉ · T_d`` (as :mod:`segloss.models.nets.padding` does in 2D) and the
logits are cropped back, so any size works. InstanceNorm needs more than one voxel per channel, so a volume whose
bottleneck would be a single voxel is padded further along its last axis (one more stride).

Deep supervision (nnU-Net's auxiliary outputs on the decoder stages before the last) is
:class:`segloss.models.nets.aux_heads.AuxiliaryHeads`, which hooks onto ``up``; the net itself returns logits only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SPATIAL_DIMS = 3


def _triple(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    values = (value,) * SPATIAL_DIMS if isinstance(value, int) else tuple(int(v) for v in value)
    if len(values) != SPATIAL_DIMS or min(values) < 1:
        raise ValueError(f"UNet3D {name} entries are positive ints or lists of {SPATIAL_DIMS}; got {value!r}")
    return values  # type: ignore[return-value]


def pad_to_strides(x: Tensor, multiples: Sequence[int]) -> tuple[Tensor, tuple[int, ...]]:
    """Replicate-pad the end of each spatial axis of ``x`` (N×C×S₁×…×S_n) to a multiple of ``multiples[d]``.

    Returns the padded tensor and the original spatial size to crop back to (the N-D form of
    :func:`segloss.models.nets.padding.pad_to_multiple`)."""
    size = tuple(x.shape[2:])
    pads = [(-s) % m for s, m in zip(size, multiples, strict=True)]
    if any(pads):
        x = F.pad(x, [p for pad in reversed(pads) for p in (0, pad)], mode="replicate")
    return x, size


class ConvBlock(nn.Sequential):
    """``conv (kernel k, stride s, 'same' padding k//2) → InstanceNorm3d(affine=True, eps=1e-5) → LeakyReLU(0.01)``."""

    def __init__(self, in_ch: int, out_ch: int, kernel: Sequence[int], stride: Sequence[int] = (1, 1, 1)) -> None:
        super().__init__(
            nn.Conv3d(in_ch, out_ch, tuple(kernel), stride=tuple(stride), padding=tuple(k // 2 for k in kernel)),
            nn.InstanceNorm3d(out_ch, eps=1e-5, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
        )


def _stage(in_ch: int, out_ch: int, kernel: Sequence[int], stride: Sequence[int] = (1, 1, 1)) -> nn.Sequential:
    return nn.Sequential(ConvBlock(in_ch, out_ch, kernel, stride), ConvBlock(out_ch, out_ch, kernel))


class Up3D(nn.Module):
    """Decoder stage: transposed conv (kernel = stride) ``in_ch → out_ch``, concat ``[up, skip]``, two blocks.
    ``out_channels`` is the width of its output (what an auxiliary head on it takes)."""

    def __init__(self, in_ch: int, out_ch: int, stride: Sequence[int], kernel: Sequence[int]) -> None:
        super().__init__()
        self.out_channels = out_ch
        self.up = nn.ConvTranspose3d(in_ch, out_ch, kernel_size=tuple(stride), stride=tuple(stride))
        self.conv = _stage(2 * out_ch, out_ch, kernel)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNet3D(nn.Module):
    """nnU-Net-style 3D U-Net: logits ``N×num_classes×D×H×W`` for volumes ``N×in_channels×D×H×W`` of any size.

    Args:
        num_classes: output channels (1 for a binary sigmoid head).
        in_channels: image channels (modalities).
        base_channels: width of stage 0 (nnU-Net: 32); stage k has ``min(base·2^k, max_channels)``.
        max_channels: the cap on the width (nnU-Net 3D: 320).
        depth: number of downsampling steps (stages − 1; nnU-Net 3d_fullres: typically 5 for ~128³ patches).
        strides: per downsampling step, an int or a ``[s_D, s_H, s_W]`` list (default 2 everywhere).
        kernel_sizes: per stage (``depth + 1`` entries), an int or a ``[k_D, k_H, k_W]`` list, odd sizes
            (default 3 everywhere); decoder stage k uses the kernel of encoder stage k.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        base_channels: int = 32,
        max_channels: int = 320,
        depth: int = 5,
        strides: Sequence[int | Sequence[int]] | None = None,
        kernel_sizes: Sequence[int | Sequence[int]] | None = None,
    ) -> None:
        super().__init__()
        if depth < 1 or base_channels < 1 or max_channels < base_channels or num_classes < 1 or in_channels < 1:
            raise ValueError(
                "UNet3D needs depth ≥ 1, 1 ≤ base_channels ≤ max_channels, num_classes ≥ 1, in_channels ≥ 1; got "
                f"depth={depth}, base_channels={base_channels}, max_channels={max_channels}, "
                f"num_classes={num_classes}, in_channels={in_channels}"
            )
        strides = [2] * depth if strides is None else list(strides)
        kernel_sizes = [3] * (depth + 1) if kernel_sizes is None else list(kernel_sizes)
        if len(strides) != depth or len(kernel_sizes) != depth + 1:
            raise ValueError(
                f"UNet3D with depth={depth} takes {depth} strides and {depth + 1} kernel_sizes; got {len(strides)} "
                f"and {len(kernel_sizes)}"
            )
        self.strides = [_triple(s, "strides") for s in strides]
        self.kernel_sizes = [_triple(k, "kernel_sizes") for k in kernel_sizes]
        if any(k % 2 == 0 for kernel in self.kernel_sizes for k in kernel):
            raise ValueError(f"UNet3D kernel_sizes must be odd ('same' padding); got {kernel_sizes}")
        self.total_stride = tuple(math.prod(s[d] for s in self.strides) for d in range(SPATIAL_DIMS))
        self.depth, self.widths = depth, [min(base_channels * 2**k, max_channels) for k in range(depth + 1)]
        widths, kernels = self.widths, self.kernel_sizes
        self.stem = _stage(in_channels, widths[0], kernels[0])
        self.down = nn.ModuleList(
            _stage(widths[k], widths[k + 1], kernels[k + 1], self.strides[k]) for k in range(depth)
        )
        self.up = nn.ModuleList(
            Up3D(widths[k + 1], widths[k], self.strides[k], kernels[k]) for k in reversed(range(depth))
        )  # coarse to fine: up[-1] is the last (full-resolution) decoder stage
        self.head = nn.Conv3d(widths[0], num_classes, kernel_size=1)
        for module in self.modules():
            if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(module.weight, a=0.01)
                nn.init.zeros_(module.bias)

    def padded_multiples(self, size: Sequence[int]) -> tuple[int, ...]:
        """Per axis the multiple the input is padded to: the total stride, doubled on the last axis when the
        bottleneck would otherwise hold a single voxel (InstanceNorm needs at least two)."""
        multiples = list(self.total_stride)
        if all(math.ceil(s / t) == 1 for s, t in zip(size, multiples, strict=True)):
            multiples[-1] *= 2
        return tuple(multiples)

    def forward(self, image: Tensor) -> Tensor:
        if image.dim() != 2 + SPATIAL_DIMS:
            raise ValueError(f"UNet3D takes N×C×D×H×W volumes; got a tensor of shape {tuple(image.shape)}")
        x, size = pad_to_strides(image, self.padded_multiples(image.shape[2:]))
        skips = [self.stem(x)]
        for stage in self.down:
            skips.append(stage(skips[-1]))
        x = skips.pop()
        for stage in self.up:
            x = stage(x, skips.pop())
        return self.head(x)[(..., *(slice(0, s) for s in size))]
