"""Auxiliary heads (deep supervision) on a segmentation net: ``model.aux``.

In training the wrapped net returns ``(logits, [aux logits, …])``, each auxiliary map upsampled (bilinear) to the
size of the main logits; the module applies the loss to every output at its weight,
``L = L(main) + Σ_k w_k·L(aux_k)`` (:class:`segloss.models.module.SegmentationModule`). In evaluation and
inference it returns the main logits only, so metrics, checkpoints' use and predictions are unchanged.

* **smp nets** (DeepLabV3/V3+, FPN, PSPNet, U-Net++ …): one FCN head on an encoder stage, as MMSegmentation's
  Cityscapes/VOC baselines (``auxiliary_head=FCNHead(in_index=2, channels=256, num_convs=1,
  concat_input=False, dropout 0.1, loss_weight=0.4)`` on ResNet stage C4): 3×3 conv → BN → ReLU →
  dropout → 1×1 conv to the classes. ``stage`` indexes the encoder's feature list (−2: C4 of a ResNet).
* **the seed U-Net** and **the 3D U-Net** (:class:`segloss.models.nets.unet3d.UNet3D`): nnU-Net-style deep
  supervision (Isensee et al., Nature Methods 2021), a 1×1 (1×1×1) conv to the classes on the output of each of
  the decoder stages before the last, finest first (``weights[k]`` for the k-th); the 3D maps are upsampled
  trilinearly. nnU-Net itself downsamples the *target* to each auxiliary output's resolution and takes the loss
  there; upsampling the auxiliary *logits* to the full size, as here, is not the same loss (every full-size voxel
  counts, the low-resolution logits are interpolated) but lets :class:`segloss.losses.DeepSupervision` apply the
  loss unchanged.

Features are taken with forward hooks, so the wrapped net's own forward (padding included) is untouched; the
padded input size is recorded too, so an auxiliary map is upsampled to the padded frame and cropped like the
main logits (2D and 3D alike: the frame is every spatial axis).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn import functional as F

from segloss.errors import ConfigError
from segloss.models.nets.padding import PadToStride
from segloss.models.nets.unet import UNet
from segloss.models.nets.unet3d import UNet3D


def fcn_head(in_channels: int, num_classes: int, channels: int = 256, dropout: float = 0.1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
        nn.Dropout2d(dropout),
        nn.Conv2d(channels, num_classes, 1),
    )


class AuxiliaryHeads(nn.Module):
    """``net`` with auxiliary heads (module docstring). ``weights`` are the auxiliary loss weights, one per head."""

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        weights: Sequence[float] = (0.4,),
        stage: int = -2,
        channels: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if not weights or any(w < 0 for w in weights):
            raise ConfigError(f"model.aux.weights={list(weights)} must be one or more non-negative weights")
        self.net, self.weights = net, [float(w) for w in weights]
        inner = net.net if isinstance(net, PadToStride) else net
        self.unet = isinstance(inner, (UNet, UNet3D))
        self._captured: list[Tensor] = []
        self._frame: tuple[int, ...] | None = None
        if isinstance(inner, UNet3D):
            stages = list(inner.up)[:-1][::-1]  # decoder stages before the last, finest first
            if len(self.weights) > len(stages):
                raise ConfigError(
                    f"model.aux.weights has {len(self.weights)} entries but this 3D U-Net (depth {inner.depth}) has "
                    f"{len(stages)} decoder stages before the last; give at most {len(stages)} weights"
                )
            self.heads = nn.ModuleList(
                nn.Conv3d(stage.out_channels, num_classes, 1) for stage in stages[: len(self.weights)]
            )
            for stage in stages[: len(self.weights)]:
                stage.register_forward_hook(self._keep_output)
            inner.stem.register_forward_pre_hook(self._keep_frame)
        elif isinstance(inner, UNet):
            stages = list(inner.up)[:-1][::-1]  # decoder stages before the last, finest first
            if len(self.weights) > len(stages):
                raise ConfigError(
                    f"model.aux.weights has {len(self.weights)} entries but this U-Net (depth {inner.depth}) has "
                    f"{len(stages)} decoder stages before the last; give at most {len(stages)} weights"
                )
            widths = [[m for m in stage.modules() if isinstance(m, nn.Conv2d)][-1].out_channels for stage in stages]
            self.heads = nn.ModuleList(nn.Conv2d(widths[k], num_classes, 1) for k in range(len(self.weights)))
            for stage in stages[: len(self.weights)]:
                stage.register_forward_hook(self._keep_output)
            inner.stem.register_forward_pre_hook(self._keep_frame)
        elif hasattr(inner, "encoder") and hasattr(inner.encoder, "out_channels"):
            if len(self.weights) != 1:
                raise ConfigError(f"an smp net takes one auxiliary FCN head: model.aux.weights=[w], got {self.weights}")
            self.stage = stage
            in_channels = list(inner.encoder.out_channels)[stage]
            self.heads = nn.ModuleList([fcn_head(in_channels, num_classes, channels, dropout)])
            inner.encoder.register_forward_hook(self._keep_stage)
            inner.encoder.register_forward_pre_hook(self._keep_frame)
        else:
            raise ConfigError(
                f"model.aux supports smp nets, the seed U-Net and UNet3D, not {type(inner).__name__}; "
                "set model.aux=null"
            )

    def _keep_frame(self, module: nn.Module, inputs: tuple) -> None:
        if self.training:
            self._frame = tuple(inputs[0].shape[2:])

    def _keep_output(self, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        if self.training:
            self._captured.append(output)

    def _keep_stage(self, module: nn.Module, inputs: tuple, output: Sequence[Tensor]) -> None:
        if self.training:
            self._captured.append(output[self.stage])

    def forward(self, image: Tensor) -> Tensor | tuple[Tensor, list[Tensor]]:
        self._captured = []
        logits = self.net(image)
        if not self.training:
            return logits
        captured = self._captured[::-1] if self.unet else self._captured  # the U-Net runs coarse to fine
        self._captured = []
        crop = (..., *(slice(0, s) for s in logits.shape[2:]))
        mode = "trilinear" if logits.dim() == 5 else "bilinear"
        aux = []
        for head, features in zip(self.heads, captured, strict=False):
            out = F.interpolate(head(features), size=self._frame, mode=mode, align_corners=False)
            aux.append(out[crop])
        return logits, aux


def with_aux_heads(net: nn.Module, num_classes: int, aux: dict | None) -> nn.Module:
    """``net`` wrapped in :class:`AuxiliaryHeads` when ``aux`` (the ``model.aux`` node) is given, else ``net``."""
    if not aux:
        return net
    known = {"weights", "stage", "channels", "dropout"}
    unknown = sorted(set(aux) - known)
    if unknown:
        raise ConfigError(f"model.aux has unknown keys {unknown}; it takes {sorted(known)} (or model.aux=null)")
    return AuxiliaryHeads(net, num_classes, **aux)
