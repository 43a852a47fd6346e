"""Tiny Medical Segmentation Decathlon tasks in the official layout (``TaskXX_Name/dataset.json``,
``imagesTr/``, ``labelsTr/``, ``imagesTs/``), with real gzipped NIfTI volumes written by nibabel and the
macOS ``._*`` resource-fork junk that the official tarballs carry next to the volumes.

The volumes are stored with an affine that is not canonical: array axis 0 points Anterior, axis 1 points
to the patient's Left and axis 2 Superior (orientation codes ``("A", "L", "S")``), so a loader has to
transpose and flip to reach RAS+. ``world_order_slices`` derives the expected upright slices of a written
volume from the affine alone (independently of the loader's code).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

# Voxel (i, j, k) -> world (x, y, z) in mm, RAS+ world: i -> +y (anterior), j -> -x (left), k -> +z (superior).
AFFINE = np.array(
    [
        [0.0, -0.8, 0.0, 10.0],
        [0.7, 0.0, 0.0, -20.0],
        [0.0, 0.0, 2.5, 5.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
JUNK = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    """Write ``array`` as a gzipped NIfTI-1 file with ``affine``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))


def world_order_slices(volume: np.ndarray) -> np.ndarray:
    """Axial slices of a volume written with AFFINE, ordered from world coordinates alone: slices inferior
    to superior, rows anterior to posterior (y descending), columns patient's right to left (x descending)."""
    ijk = np.indices(volume.shape).reshape(3, -1)
    x, y, z = AFFINE[:3, :3] @ ijk + AFFINE[:3, 3:4]

    def rank(values: np.ndarray, descending: bool) -> np.ndarray:
        levels = np.unique(values)
        position = np.searchsorted(levels, values)
        return len(levels) - 1 - position if descending else position

    out = np.zeros((len(np.unique(z)), len(np.unique(y)), len(np.unique(x))), volume.dtype)
    out[rank(z, False), rank(y, True), rank(x, True)] = volume.reshape(-1)
    return out


def case_label(rng: np.random.Generator, shape: tuple[int, int, int], num_labels: int, slab: int) -> np.ndarray:
    """Background everywhere except a box in ``slab`` consecutive slices (axis 2) holding every class
    1…num_labels−1 (one column band per class), so some slices are foreground and the rest background-only."""
    label = np.zeros(shape, dtype=np.uint8)
    z0 = int(rng.integers(0, shape[2] - slab + 1))
    x0, y0 = int(rng.integers(0, shape[0] // 3)), int(rng.integers(0, shape[1] // 3))
    bands = np.array_split(np.arange(y0, y0 + shape[1] // 2), num_labels - 1)
    for value, band in enumerate(bands, start=1):
        label[x0 : x0 + shape[0] // 2, band, z0 : z0 + slab] = value
    return label


def case_image(rng: np.random.Generator, label: np.ndarray, modality: str) -> np.ndarray:
    """CT: Hounsfield-like float32 noise, brighter per class inside the labelled box. Other modalities:
    positive intensities in a central body block and exact zeros outside (as skull-stripped MR)."""
    if modality.upper() == "CT":
        image = rng.normal(-400.0, 250.0, label.shape) + rng.normal(80.0, 40.0, label.shape) * label
        return image.astype(np.float32)
    image = rng.gamma(4.0, 50.0, label.shape) + 60.0 * label
    body = np.zeros(label.shape, dtype=bool)
    body[2:-2, 2:-2, :] = True
    return np.where(body, image, 0.0).astype(np.float32)


def write_msd_task(
    root: Path,
    cases: Sequence[str] | int = 5,
    modality: str | Sequence[str] = "CT",
    shape: tuple[int, int, int] = (24, 20, 6),
    labels: Sequence[str] = ("background", "organ", "tumour"),
    seed: int = 0,
    slab: int = 2,
) -> dict[str, dict[str, np.ndarray]]:
    """Write an MSD task folder at ``root``.

    Args:
        cases: case ids, or a count (ids ``case_000``, ``case_001``, …).
        modality: one name (3D images) or a list of names (4D images X×Y×Z×M, one volume per modality).
        shape: (X, Y, Z) of every volume in array order (before reorientation).
        labels: class names of dataset.json "labels", in value order.
        slab: number of consecutive slices of each case that hold foreground.

    Returns ``{case: {"image": float32 array as written, "label": uint8 array as written}}``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    ids = [f"case_{i:03d}" for i in range(cases)] if isinstance(cases, int) else list(cases)
    names = [modality] if isinstance(modality, str) else list(modality)
    written: dict[str, dict[str, np.ndarray]] = {}
    for case in ids:
        label = case_label(rng, shape, len(labels), slab)
        channels = [case_image(rng, label, name) for name in names]
        image = channels[0] if isinstance(modality, str) else np.stack(channels, axis=-1)
        save_nifti(root / "imagesTr" / f"{case}.nii.gz", image)
        save_nifti(root / "labelsTr" / f"{case}.nii.gz", label)
        for folder in ("imagesTr", "labelsTr"):
            (root / folder / f"._{case}.nii.gz").write_bytes(JUNK)
        written[case] = {"image": image, "label": label}
    save_nifti(root / "imagesTs" / "unlabelled_000.nii.gz", np.zeros(shape, dtype=np.float32))
    meta = {
        "name": root.name,
        "description": "tiny synthetic MSD task for tests",
        "tensorImageSize": "3D" if isinstance(modality, str) else "4D",
        "modality": {str(i): name for i, name in enumerate(names)},
        "labels": {str(i): name for i, name in enumerate(labels)},
        "numTraining": len(ids),
        "numTest": 1,
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in ids],
        "test": ["./imagesTs/unlabelled_000.nii.gz"],
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=4))
    return written
