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
    weights_dir: str | None = None,
    **kwargs,
) -> nn.Module:
    """``smp.create_model`` with the class count named like the rest of segloss.

    ``encoder_weights=None`` (the default) builds randomly initialised weights and needs no network;
    pretrained weights (e.g. ``"imagenet"``) are opt-in and fail with a clear message when they
    cannot be fetched. With ``pad_to_stride`` the net accepts any input size: inputs are padded to a
    multiple of the encoder's output stride and the logits cropped back to the input size.
    Extra keyword arguments go to the architecture (e.g. ``encoder_output_stride=16``).

    ``weights_dir`` (``paths.weights_dir``): when it holds the file that ``make download WEIGHTS=<encoder>``
    writes for these weights, the net is built without network access and the file is loaded into its
    encoder (strictly), so offline nodes train with pretrained weights.
    """
    import segmentation_models_pytorch as smp

    from segloss.errors import WeightsUnavailableError
    from segloss.utils.weights_cache import load_cached_encoder, weights_file

    cached = weights_file(weights_dir, encoder_name, encoder_weights) if weights_dir and encoder_weights else None
    if cached is not None and cached.is_file():
        net = build_smp_model(arch, num_classes, encoder_name, None, 3, pad_to_stride=False, **kwargs)
        load_cached_encoder(net.encoder, cached)
        if in_channels != 3:  # as smp does after loading: adapt the first convolution
            net.encoder.set_in_channels(in_channels, pretrained=True)
        return PadToStride(net, int(getattr(net.encoder, "output_stride", 32))) if pad_to_stride else net

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
        where = f" nor in {cached}" if cached is not None else ""
        raise WeightsUnavailableError(
            f"could not load pretrained weights '{encoder_weights}' for encoder '{encoder_name}': not reachable "
            f"({err}){where}. On a machine with network run `make download WEIGHTS={encoder_name}`, which stores "
            "them in paths.weights_dir (SEGLOSS_WEIGHTS) where runs read them offline, or set "
            "model.net.encoder_weights=null."
        ) from err
    if not pad_to_stride:
        return net
    stride = getattr(net.encoder, "output_stride", 32) if hasattr(net, "encoder") else 32
    return PadToStride(net, int(stride))
