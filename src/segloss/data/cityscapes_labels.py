"""The Cityscapes label definitions: labelId → trainId mapping, class names and colours.

Cityscapes ships 34 annotated label ids (plus -1 for licence plates). The benchmark evaluates 19 of
them, renumbered 0–18 as "trainIds"; every other id is ignored (trainId 255). Values below follow the
dataset's published label table (Cordts et al., CVPR 2016).
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255

# (labelId, name, trainId, RGB colour)
LABELS: tuple[tuple[int, str, int, tuple[int, int, int]], ...] = (
    (0, "unlabeled", 255, (0, 0, 0)),
    (1, "ego vehicle", 255, (0, 0, 0)),
    (2, "rectification border", 255, (0, 0, 0)),
    (3, "out of roi", 255, (0, 0, 0)),
    (4, "static", 255, (0, 0, 0)),
    (5, "dynamic", 255, (111, 74, 0)),
    (6, "ground", 255, (81, 0, 81)),
    (7, "road", 0, (128, 64, 128)),
    (8, "sidewalk", 1, (244, 35, 232)),
    (9, "parking", 255, (250, 170, 160)),
    (10, "rail track", 255, (230, 150, 140)),
    (11, "building", 2, (70, 70, 70)),
    (12, "wall", 3, (102, 102, 156)),
    (13, "fence", 4, (190, 153, 153)),
    (14, "guard rail", 255, (180, 165, 180)),
    (15, "bridge", 255, (150, 100, 100)),
    (16, "tunnel", 255, (150, 120, 90)),
    (17, "pole", 5, (153, 153, 153)),
    (18, "polegroup", 255, (153, 153, 153)),
    (19, "traffic light", 6, (250, 170, 30)),
    (20, "traffic sign", 7, (220, 220, 0)),
    (21, "vegetation", 8, (107, 142, 35)),
    (22, "terrain", 9, (152, 251, 152)),
    (23, "sky", 10, (70, 130, 180)),
    (24, "person", 11, (220, 20, 60)),
    (25, "rider", 12, (255, 0, 0)),
    (26, "car", 13, (0, 0, 142)),
    (27, "truck", 14, (0, 0, 70)),
    (28, "bus", 15, (0, 60, 100)),
    (29, "caravan", 255, (0, 0, 90)),
    (30, "trailer", 255, (0, 0, 110)),
    (31, "train", 16, (0, 80, 100)),
    (32, "motorcycle", 17, (0, 0, 230)),
    (33, "bicycle", 18, (119, 11, 32)),
)

LABEL_IDS: dict[str, int] = {name: label_id for label_id, name, _, _ in LABELS}

CLASS_NAMES: tuple[str, ...] = tuple(
    name for _, name, train_id, _ in sorted(LABELS, key=lambda r: r[2]) if train_id != 255
)
PALETTE: tuple[tuple[int, int, int], ...] = tuple(
    color for _, _, train_id, color in sorted(LABELS, key=lambda r: r[2]) if train_id != 255
)


def label_to_train_lut() -> np.ndarray:
    """A 256-entry lookup table mapping every uint8 labelId to its trainId (255 = ignore)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, _, train_id, _ in LABELS:
        lut[label_id] = train_id
    return lut


def train_to_label_lut() -> np.ndarray:
    """A 256-entry lookup table mapping each trainId 0–18 to its labelId (for result files in the
    official format); every other value maps to 0 ("unlabeled")."""
    lut = np.zeros(256, dtype=np.uint8)
    for label_id, _, train_id, _ in LABELS:
        if train_id != IGNORE_INDEX:
            lut[train_id] = label_id
    return lut
