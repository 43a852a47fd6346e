"""The default image normalisation, (x/255 − mean)/std per channel with ImageNet's statistics (what pretrained
encoders expect). A dataset's own values are its config's ``data.normalize`` node, the one place a run's
normalisation is decided: the transforms apply it on the CPU, the module on the device for uint8 batches
(``data.normalize_on_device``, ``data.augment_on_device``), and pictures undo it (``segloss.build``)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalise_image(transform, rgb):
    """``transform`` (a data config's eval transform, on ``{"image", "mask", "name"}``) applied to one uint8 C×H×W
    image; :class:`segloss.errors.ConfigError` when it changes the size (prediction writes masks on the input's
    grid, so it needs a normalising-only eval transform)."""
    import torch

    from segloss.errors import ConfigError

    height, width = rgb.shape[-2:]
    mask = torch.zeros((height, width), dtype=torch.int64)  # the joint transform wants one; unused
    image = transform({"image": rgb, "mask": mask, "name": ""})["image"]
    if image.shape[-2:] != (height, width):
        raise ConfigError(
            f"data.eval_transform changed the image size ({height}×{width} → {tuple(image.shape[-2:])}); "
            "prediction needs a normalising-only eval transform"
        )
    return image
