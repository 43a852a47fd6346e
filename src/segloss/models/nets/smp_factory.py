"""Build any segmentation-models-pytorch architecture from config, offline by default."""

from __future__ import annotations

from torch import nn

from segloss.models.nets.padding import PadToStride


def build_smp_model(
    arch: str,
    num_classes: int,
    encoder_name: str = "resnet34",
    encoder_weights: str | None = None,
    in_channels: int = 3,
    pad_to_stride: bool = True,
    **kwargs,
) -> nn.Module:
    """``smp.create_model`` with the class count named like the rest of segloss.

    ``encoder_weights=None`` (the default) builds randomly initialised weights and needs no network;
    pretrained weights (e.g. ``"imagenet"``) are opt-in and fail with a clear message when they
    cannot be fetched. With ``pad_to_stride`` the net accepts any input size: inputs are padded to a
    multiple of the encoder's output stride and the logits cropped back to the input size.
    Extra keyword arguments go to the architecture (e.g. ``encoder_output_stride=16``).
    """
    import segmentation_models_pytorch as smp

    known = sorted(a.__name__ for a in smp._MODEL_ARCHITECTURES) if hasattr(smp, "_MODEL_ARCHITECTURES") else None
    try:
        net = smp.create_model(
            arch,
            encoder_name=encoder_name,
            encoder_weights=encoder_weights,
            in_channels=in_channels,
            classes=num_classes,
            **kwargs,
        )
    except KeyError as err:
        raise ValueError(f"unknown smp architecture or encoder ({err}); architectures: {known}") from err
    except (OSError, RuntimeError) as err:
        if encoder_weights is None:
            raise
        raise RuntimeError(
            f"could not load pretrained weights '{encoder_weights}' for encoder '{encoder_name}' ({err}). "
            "Pretrained weights are downloaded on first use and need network access: download them on a "
            "machine with network into the torch/HF cache, or set model.encoder_weights=null."
        ) from err
    if not pad_to_stride:
        return net
    stride = getattr(net.encoder, "output_stride", 32) if hasattr(net, "encoder") else 32
    return PadToStride(net, int(stride))
