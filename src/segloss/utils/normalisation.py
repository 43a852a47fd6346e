"""The default image normalisation, (x/255 − mean)/std per channel with ImageNet's statistics (what pretrained
encoders expect). A dataset's own values are its config's ``data.normalize`` node, the one place a run's
normalisation is decided: the transforms apply it on the CPU, the module on the device for uint8 batches
(``data.normalize_on_device``, ``data.augment_on_device``), and pictures undo it (``segloss.build``)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
