"""``make download``: real datasets and pretrained encoder weights, fetched, verified and unpacked.

``python -m segloss.download download=voc|voc_aug|msd|kvasir|cityscapes`` (specs in ``configs/download/``)
and ``python -m segloss.download weights=resnet50`` (``paths.weights_dir``); see :mod:`.cli`.
"""
