"""Tiny synthetic 3D tasks in the Medical Segmentation Decathlon layout, for CPU demos and tests of the 3D path
(:class:`segloss.data.volumes.MSDVolumeDataset`):

``<root>/dataset.json``, ``imagesTr/<case>.nii.gz`` (X×Y×Z, or X×Y×Z×4), ``labelsTr/<case>.nii.gz`` (uint8) and an
empty ``imagesTs/``. The volumes carry an LPS affine (axes 0 and 1 pointing Left and Posterior, as DICOM
converters write them, so the reader's reorientation is exercised) with anisotropic voxels that differ a
little from case to case (so resampling to the median spacing does something):

* ``spleen`` (like Task09_Spleen): CT, 1 channel in Hounsfield-like units (air −1000 outside an elliptic body of
  fat and soft tissue, a vertebra, an unlabelled liver), classes background / spleen (an ellipsoid of ~110 HU);
  about 32×32×24 voxels of ~1.2×1.2×2.5 mm.
* ``hippocampus`` (like Task04_Hippocampus): "MRI", 1 channel without zero background, classes background /
  Anterior / Posterior: two touching ellipsoids, darker than the surrounding tissue; ~28×32×24 voxels.
* ``brats`` (like Task01_BrainTumour): 4 channels FLAIR, T1w, t1gd, T2w, exact zeros outside a skull-stripped
  brain ellipsoid, labels nested in one tumour — 1 edema around 2 non-enhancing tumour (necrosis) around
  3 enhancing tumour, so whole tumour ⊃ tumour core ⊃ enhancing tumour; ~32×32×24 voxels.

Generation is deterministic in ``seed`` (case i has its own generator seeded by ``(seed, task, i)``), is written
to a scratch folder and renamed into place, and records its parameters in ``synthetic_volumes.json`` so that a
folder made otherwise is never taken for it.

Command line: ``python -m segloss.data.synthetic_volumes --task spleen --out data/Synthetic3D_Spleen``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from segloss.data.generated import generated_format
from segloss.errors import ConfigError

MARKER = "synthetic_volumes.json"
FORMAT = 1
TASKS = {
    "spleen": {"name": "Synthetic3D_Spleen", "modality": ["CT"], "labels": ["background", "spleen"]},
    "hippocampus": {"name": "Synthetic3D_Hippocampus", "modality": ["MRI"],
                    "labels": ["background", "Anterior", "Posterior"]},
    "brats": {"name": "Synthetic3D_BrainTumour", "modality": ["FLAIR", "T1w", "t1gd", "T2w"],
              "labels": ["background", "edema", "non-enhancing tumor", "enhancing tumour"]},
}  # fmt: skip
TASK_KEYS = {name: i for i, name in enumerate(TASKS)}


def _grid(shape: tuple[int, int, int], spacing: np.ndarray) -> list[np.ndarray]:
    """Physical coordinates (mm) of the voxel centres relative to the volume centre, per array axis."""
    return [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing, strict=True)]


def _ellipsoid(coords: list[np.ndarray], centre, radii) -> np.ndarray:
    """Normalised distance ``Σ ((x − c) / r)²`` (< 1 inside) on the broadcast grid ``coords``."""
    x, y, z = coords
    return (
        ((x[:, None, None] - centre[0]) / radii[0]) ** 2
        + ((y[None, :, None] - centre[1]) / radii[1]) ** 2
        + ((z[None, None, :] - centre[2]) / radii[2]) ** 2
    )


def _smooth_field(rng: np.random.Generator, coords: list[np.ndarray], amplitude: float) -> np.ndarray:
    """A low-frequency random field (a few cosines), for irregular shapes and bias fields."""
    x, y, z = (c[:, None, None] if i == 0 else c[None, :, None] if i == 1 else c[None, None, :]
               for i, c in enumerate(coords))  # fmt: skip
    field = 0.0
    for _ in range(3):
        k = rng.normal(0, 0.12, 3)
        field = field + np.cos(k[0] * x + k[1] * y + k[2] * z + rng.uniform(0, 2 * np.pi))
    return amplitude * field / 3


def _spleen(rng, shape, spacing) -> tuple[np.ndarray, np.ndarray]:
    coords = _grid(shape, spacing)
    extent = np.array(shape) * spacing / 2
    body = _ellipsoid(coords, (0, 0, 0), (extent[0] * 0.9, extent[1] * 0.8, 1e6)) < 1
    inner = _ellipsoid(coords, (0, 0, 0), (extent[0] * 0.8, extent[1] * 0.7, 1e6)) < 1
    image = np.full(shape, -1000.0)
    image[body] = -100.0  # subcutaneous fat
    image[inner] = 40.0  # soft tissue
    liver = _ellipsoid(coords, (-extent[0] * 0.3, -extent[1] * 0.15, 0), (extent[0] * 0.35, extent[1] * 0.35, 1e6))
    image[(liver < 1) & inner] = 60.0
    spine = _ellipsoid(coords, (0, extent[1] * 0.45, 0), (4.0, 4.0, 1e6)) < 1
    image[spine] = 500.0
    centre = (extent[0] * rng.uniform(0.2, 0.4), extent[1] * rng.uniform(-0.2, 0.1), extent[2] * rng.uniform(-0.3, 0.3))
    radii = (rng.uniform(5, 8), rng.uniform(4, 6), rng.uniform(8, 14))
    spleen = (_ellipsoid(coords, centre, radii) + _smooth_field(rng, coords, 0.3) < 1) & inner
    image[spleen] = 110.0
    image += rng.normal(0, 20, shape)
    return np.round(image).astype(np.int16), spleen.astype(np.uint8)


def _hippocampus(rng, shape, spacing) -> tuple[np.ndarray, np.ndarray]:
    coords = _grid(shape, spacing)
    image = 400.0 + _smooth_field(rng, coords, 60.0) + rng.gamma(9.0, 10.0, shape) - 90.0
    ventricle = _ellipsoid(coords, (rng.uniform(-3, 3), -6.0, 0), (4.0, 3.0, 8.0)) < 1
    image[ventricle] = 120.0
    centre = np.array([rng.uniform(-2, 2), rng.uniform(0, 3), rng.uniform(-3, 3)])
    anterior = _ellipsoid(coords, centre + np.array([0, -4.0, 0]), (rng.uniform(3, 4), 5.0, rng.uniform(4, 6))) < 1
    posterior = _ellipsoid(coords, centre + np.array([0, 4.5, 0]), (rng.uniform(2, 3), 5.0, rng.uniform(3, 5))) < 1
    label = np.zeros(shape, dtype=np.uint8)
    label[anterior] = 1
    label[posterior & ~anterior] = 2
    image[label == 1] -= 110.0
    image[label == 2] -= 80.0
    image += rng.normal(0, 15, shape)
    return np.clip(image, 1.0, None).astype(np.float32), label


# Mean intensity per class (background brain, edema, non-enhancing, enhancing) of FLAIR, T1w, t1gd, T2w.
BRATS_INTENSITY = np.array(
    [
        [300.0, 650.0, 450.0, 500.0],
        [400.0, 340.0, 220.0, 380.0],
        [400.0, 380.0, 160.0, 850.0],
        [300.0, 700.0, 760.0, 560.0],
    ]
)


def _brats(rng, shape, spacing) -> tuple[np.ndarray, np.ndarray]:
    coords = _grid(shape, spacing)
    extent = np.array(shape) * spacing / 2
    brain = _ellipsoid(coords, (0, 0, 0), extent * np.array([0.85, 0.9, 0.85])) < 1
    centre = extent * rng.uniform(-0.3, 0.3, 3)
    core = rng.uniform(2.5, 3.5)
    distance = np.sqrt(_ellipsoid(coords, centre, core * rng.uniform(0.8, 1.2, 3))) + _smooth_field(rng, coords, 0.2)
    label = np.zeros(shape, dtype=np.uint8)
    for value, radius in ((1, rng.uniform(2.6, 3.2)), (2, rng.uniform(1.7, 2.0)), (3, 1.0)):
        label[(distance < radius) & brain] = value  # nested: each class inside the one before
    channels = []
    for intensities in BRATS_INTENSITY:
        channel = intensities[label] + _smooth_field(rng, coords, 30.0) + rng.normal(0, 25, shape)
        channels.append(np.where(brain, np.clip(channel, 1.0, None), 0.0))
    return np.stack(channels, axis=-1).astype(np.float32), label


GENERATORS = {"spleen": _spleen, "hippocampus": _hippocampus, "brats": _brats}
SHAPES = {"spleen": ((30, 35), (30, 35), (20, 27)), "hippocampus": ((26, 31), (30, 35), (20, 27)),
          "brats": ((30, 35), (30, 35), (20, 27))}  # fmt: skip
SPACINGS = {"spleen": ((1.1, 1.3), (2.0, 2.5, 3.0)), "hippocampus": ((0.95, 1.05), (1.2, 1.5)),
            "brats": ((0.95, 1.05), (1.4, 1.5, 1.6))}  # fmt: skip


def make_case(task: str, seed: int, index: int) -> dict:
    """Volume ``index`` of ``task``: ``{"image": array as written (X×Y×Z[×4]), "label": uint8 X×Y×Z,
    "spacing": (x, y, z) mm, "affine": 4×4}``."""
    rng = np.random.default_rng([seed, TASK_KEYS[task], index])
    shape = tuple(int(rng.integers(lo, hi)) for lo, hi in SHAPES[task])
    (in_lo, in_hi), z_choices = SPACINGS[task]
    in_plane = round(float(rng.uniform(in_lo, in_hi)), 2)
    spacing = np.array([in_plane, in_plane, float(rng.choice(z_choices))])
    image, label = GENERATORS[task](rng, shape, spacing)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # LPS: axis 0 → Left, axis 1 → Posterior
    affine[:3, 3] = [100.0, 120.0, -50.0]
    return {"image": image, "label": label, "spacing": tuple(spacing.tolist()), "affine": affine}


def write_task(root: str | Path, task: str, cases: int, seed: int) -> dict[str, dict]:
    """Write the MSD tree of ``task`` at ``root`` (no marker, no atomic rename); returns the cases written."""
    import nibabel as nib

    if task not in TASKS:
        raise ConfigError.value("data.generator.task", task, f"one of {list(TASKS)}", "data.generator.task=spleen")
    root, spec = Path(root), TASKS[task]
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    written, ids = {}, [f"{spec['name'].split('_')[-1].lower()}_{i:03d}" for i in range(cases)]
    for i, case in enumerate(ids):
        volume = make_case(task, seed, i)
        nib.save(nib.Nifti1Image(volume["image"], volume["affine"]), str(root / "imagesTr" / f"{case}.nii.gz"))
        nib.save(nib.Nifti1Image(volume["label"], volume["affine"]), str(root / "labelsTr" / f"{case}.nii.gz"))
        written[case] = volume
    meta = {
        "name": spec["name"],
        "description": f"synthetic {task}-like task written by segloss.data.synthetic_volumes (seed {seed})",
        "reference": "segloss", "licence": "CC-BY-SA 4.0", "release": "1.0",
        "tensorImageSize": "4D" if len(spec["modality"]) > 1 else "3D",
        "modality": {str(i): name for i, name in enumerate(spec["modality"])},
        "labels": {str(i): name for i, name in enumerate(spec["labels"])},
        "numTraining": cases, "numTest": 0,
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in ids],
        "test": [],
    }  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(meta, indent=4))
    return written


@dataclass(frozen=True)
class SyntheticVolumes:
    """Parameters of a generated task; ``ensure(root)`` makes it if it is not there yet (the datamodule's
    ``generator``)."""

    task: str = "spleen"
    cases: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError.value("data.generator.task", self.task, f"one of {list(TASKS)}",
                                    "data.generator.task=spleen")  # fmt: skip
        if not isinstance(self.cases, int) or self.cases < 2:
            raise ConfigError.value("data.generator.cases", self.cases, "an integer ≥ 2 (train and val cases)",
                                    "data.generator.cases=10")  # fmt: skip

    def ensure(self, root: str | Path) -> Path:
        """Return ``root``, generating the task there first if it is missing; a :class:`ConfigError` if ``root``
        holds something else (another dataset, or one generated with other parameters): nothing is overwritten."""
        root = Path(root).expanduser()
        made = generated_format(root, MARKER, asdict(self), "a synthetic 3D task",
                                "Delete that folder or point data.root elsewhere.",
                                "Point data.root at an empty or missing folder (or set data.generator=null for a "
                                "real task).")  # fmt: skip
        if made is None:
            self.write(root)
        return root

    def write(self, root: Path) -> None:
        # One scratch folder per process: several DDP ranks may generate at once; the first rename wins.
        tmp = root.with_name(f".{root.name}.{os.getpid()}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        write_task(tmp, self.task, self.cases, self.seed)
        (tmp / MARKER).write_text(json.dumps({**asdict(self), "format": FORMAT}, indent=2))
        root.parent.mkdir(parents=True, exist_ok=True)
        if (root / MARKER).is_file():
            shutil.rmtree(tmp)
            return
        if root.exists():
            root.rmdir()  # empty by the check in ensure()
        try:
            tmp.rename(root)
        except OSError:
            if not (root / MARKER).is_file():
                raise
            shutil.rmtree(tmp)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a tiny synthetic 3D task in the MSD layout.")
    parser.add_argument("--task", choices=sorted(TASKS), default="spleen")
    parser.add_argument("--out", required=True, help="the task folder to write (it must be missing or empty)")
    parser.add_argument("--cases", type=int, default=SyntheticVolumes.cases)
    parser.add_argument("--seed", type=int, default=SyntheticVolumes.seed)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    root = SyntheticVolumes(args.task, args.cases, args.seed).ensure(args.out)
    print(f"synthetic {args.task} task ready at {root} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
