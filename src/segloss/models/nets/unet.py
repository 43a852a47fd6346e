"""U-Net (Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015), written for this project.

Encoder: ``depth`` stages of two 3×3 conv–BN–ReLU blocks, each followed by 2×2 max-pooling, the
width doubling per stage (64-128-256-512-1024 in the paper: ``base_channels=64, depth=4``).
Decoder: 2×2 transposed convolution (or bilinear upsampling), concatenation with the encoder
feature of the same scale (the skip connection), two 3×3 conv–BN–ReLU blocks; a 1×1 conv gives the
class logits. Differences from the paper, as in common practice: padded ("same") convolutions so the
output has the input resolution, and BatchNorm after each convolution. Inputs whose sides do not
divide by 2^depth are replicate-padded and the logits cropped back.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from segloss.models.nets.padding import pad_to_multiple


def _double_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class _Up(nn.Module):
    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, bilinear: bool) -> None:
        super().__init__()
        if bilinear:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.Conv2d(in_ch, out_ch, 1)
            )
        else:
            self.up = nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)
        self.conv = _double_conv(out_ch + skip_ch, out_ch)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """U-Net returning logits ``N×num_classes×H×W`` for images ``N×in_channels×H×W`` of any size.

    Args:
        num_classes: output channels (1 for a binary sigmoid head).
        in_channels: image channels.
        base_channels: width of the first stage (64 in the paper); stage k has base·2^k channels.
        depth: number of down-sampling steps (4 in the paper).
        bilinear: bilinear upsampling + 1×1 conv instead of transposed convolutions.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        base_channels: int = 64,
        depth: int = 4,
        bilinear: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1 or base_channels < 1 or num_classes < 1:
            raise ValueError(
                f"UNet needs depth ≥ 1, base_channels ≥ 1, num_classes ≥ 1; got {depth}, {base_channels}, {num_classes}"
            )
        widths = [base_channels * 2**k for k in range(depth + 1)]
        self.depth = depth
        self.stem = _double_conv(in_channels, widths[0])
        self.down = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), _double_conv(widths[k], widths[k + 1])) for k in range(depth)
        )
        self.up = nn.ModuleList(_Up(widths[k + 1], widths[k], widths[k], bilinear) for k in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    def forward(self, image: Tensor) -> Tensor:
        x, (h, w) = pad_to_multiple(image, 2**self.depth)
        skips = [self.stem(x)]
        for stage in self.down:
            skips.append(stage(skips[-1]))
        x = skips.pop()
        for stage in self.up:
            x = stage(x, skips.pop())
        return self.head(x)[..., :h, :w]
