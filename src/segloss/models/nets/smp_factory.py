"""Build any segmentation-models-pytorch architecture from config, offline by default."""

from __future__ import annotations

from pathlib import Path

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
    writes for these weights (found as :func:`segloss.download.weights.resolve_weights` finds it), the net is
    built without network access: an smp encoder loads the file strictly, a ``tu-`` (timm) encoder through
    timm, which also adapts the first convolution to ``in_channels``. Otherwise smp and timm fetch the weights
    themselves (through ``huggingface_hub``: ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and its cache apply).
    """
    import segmentation_models_pytorch as smp

    from segloss.errors import ConfigError, WeightsUnavailableError

    cached, unresolved = None, None
    if encoder_weights is not None:
        from segloss.download.weights import resolve_weights

        try:
            source = resolve_weights(encoder_name, encoder_weights)
            cached = Path(weights_dir).expanduser() / source.local_name if weights_dir else None
        except ConfigError as err:  # not on the hub: timm may still fetch them from its own URL
            unresolved = err
    if cached is not None and cached.is_file():
        net = _from_file(cached, source.timm, arch, num_classes, encoder_name, in_channels, **kwargs)
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
        if unresolved is not None:
            raise unresolved from err
        raise ValueError(f"unknown smp architecture or encoder ({err}); architectures: {known}") from err
    except (OSError, RuntimeError) as err:
        if encoder_weights is None:
            raise
        if unresolved is not None:
            raise unresolved from err
        from huggingface_hub import constants

        where = f"not in {cached}" if cached is not None else "no paths.weights_dir was given"
        offline = ", HF_HUB_OFFLINE=1" if constants.HF_HUB_OFFLINE else ""
        raise WeightsUnavailableError(
            f"pretrained weights {encoder_weights!r} for encoder {encoder_name!r} are {where} and could not be fetched "
            f"({type(err).__name__}{offline}): run `make download WEIGHTS={encoder_name}` where the Hugging Face hub "
            "is reachable (it stores them in paths.weights_dir, SEGLOSS_WEIGHTS, where runs read them offline), or "
            "set model.net.encoder_weights=null"
        ) from err
    if not pad_to_stride:
        return net
    stride = getattr(net.encoder, "output_stride", 32) if hasattr(net, "encoder") else 32
    return PadToStride(net, int(stride))


def _from_file(path: Path, timm: bool, arch: str, num_classes: int, encoder_name: str, in_channels: int, **kwargs):
    """The net with the pretrained encoder weights in ``path`` (``make download``'s file), without network."""
    import segmentation_models_pytorch as smp

    from segloss.errors import WeightsUnavailableError
    from segloss.utils.weights_cache import load_cached_encoder

    if not timm:
        net = build_smp_model(arch, num_classes, encoder_name, None, 3, pad_to_stride=False, **kwargs)
        load_cached_encoder(net.encoder, path)
        if in_channels != 3:  # as smp does after loading: adapt the first convolution
            net.encoder.set_in_channels(in_channels, pretrained=True)
        return net
    try:  # timm reads the file as it reads its own download, adapting the first convolution to in_channels
        return smp.create_model(
            arch,
            encoder_name=encoder_name,
            encoder_weights=True,
            in_channels=in_channels,
            classes=num_classes,
            pretrained_cfg_overlay={"file": str(path)},
            **kwargs,
        )
    except RuntimeError as err:
        raise WeightsUnavailableError(
            f"the cached weights {path} do not fit encoder {encoder_name!r} ({str(err).splitlines()[0]}): delete "
            f"the file and run `make download WEIGHTS={encoder_name}`, or set model.net.encoder_weights=null"
        ) from err
