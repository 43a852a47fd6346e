"""Medical Segmentation Decathlon (MSD) tasks: reading ``dataset.json`` and the NIfTI volumes, and the
one-off per-case preprocessing behind :class:`segloss.data.medical.MSDSliceDataset`.

MSD: Antonelli et al., "The Medical Segmentation Decathlon", Nature Communications 13, 4128 (2022);
Simpson et al., arXiv:1902.09063 (2019); data at http://medicaldecathlon.com/.

Orientation: volumes are reoriented with ``nibabel.as_closest_canonical`` to RAS+ (array axis 0 increases
towards the patient's Right, axis 1 towards Anterior, axis 2 towards Superior), so axis 2 is axial. Slice
``z`` is then shown upright in the radiological convention of clinical viewers: row 0 is the most anterior
row and column 0 the patient's right, ``display[r, c] = volume[X-1-c, Y-1-r, z]`` (= ``volume[::-1, ::-1, z].T``,
so H = Y and W = X). Image and label get the same transform.

Intensities (nnU-Net conventions, Isensee et al., Nature Methods 18, 203–211, 2021):

* CT (modality name "CT"): ``z = (clip(x, lo, hi) − mean) / std`` with dataset-level statistics from the
  train-split cases (validation cases never inform them): [lo, hi] = ``ct_window`` or the 0.5/99.5
  percentiles of the foreground (label > 0) voxel intensities; mean/std (population, ddof 0) of those
  foreground voxels after clipping to [lo, hi]. A case contributes all its foreground voxels up to
  ``FOREGROUND_VOXEL_BUDGET / n_train_cases``, beyond that a seeded uniform sample of that size (nnU-Net also
  estimates them from a per-case foreground sample).
* any other modality (MR sequences, "ADC", …): per volume and channel, ``z = (x − mean) / std`` with
  mean/std over the volume's nonzero voxels, or over the whole volume if every voxel is zero. Every voxel
  (the zero background too) is normalised. Standard deviations are floored at 1e-8.

uint8 encoding: ``u = round(clip(z, −z_clip, z_clip) · 127.5 / z_clip + 127.5)``; the quantisation step is
``q = 2·z_clip/255`` (in units of σ) and ``(u − 127.5) · q`` recovers the clipped z within ``q/2``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segloss.data.image_io import check_label_values
from segloss.errors import DatasetFormatError, DatasetNotFoundError

NAME = "MSD task"
LAYOUT = (
    "TaskXX_Name/dataset.json, TaskXX_Name/imagesTr/<case>.nii.gz and TaskXX_Name/labelsTr/<case>.nii.gz "
    "(the pairs listed in dataset.json 'training'), optionally imagesTs/"
)
SOURCE = (
    "http://medicaldecathlon.com/ (one tarball per task, e.g. Task09_Spleen.tar; extract it and point "
    "data.root at the TaskXX_Name folder)"
)
REQUIRED_KEYS = ("labels", "modality", "training")
EXPECTED_JSON = (
    '"labels": {"0": "background", …}, "modality": {"0": "CT", …}, '
    '"training": [{"image": "./imagesTr/<case>.nii.gz", "label": "./labelsTr/<case>.nii.gz"}, …]'
)
FOREGROUND_VOXEL_BUDGET = 20_000_000
STD_FLOOR = 1e-8


@dataclass(frozen=True)
class MSDCase:
    """One training case of dataset.json: its id (the label file name without ``.nii.gz``) and files."""

    case: str
    image: Path
    label: Path


@dataclass(frozen=True)
class MSDTask:
    """What dataset.json says: modality names (index order), class names (label order) and cases."""

    meta: Path
    modalities: list[str]
    class_names: list[str]
    cases: list[MSDCase]


def nibabel():
    """The nibabel module, or an ImportError that says how to install it."""
    try:
        import nibabel as nib
    except ImportError as err:
        msg = "reading MSD volumes (.nii.gz) needs nibabel, which is not installed: pip install segloss[medical]"
        raise ImportError(msg) from err
    return nib


def _format_error(meta: Path, problem: str) -> DatasetFormatError:
    return DatasetFormatError(f"{meta} {problem}; re-extract dataset.json from the task tarball ({SOURCE})")


def _case_id(label: Path) -> str:
    return label.name.removesuffix(".gz").removesuffix(".nii")


def read_task(root: Path) -> MSDTask:
    """Parse ``root/dataset.json`` and check that every file it lists exists (``._*`` junk is never looked at)."""
    meta = root / "dataset.json"
    for path, problem in ((root, "the folder does not exist"), (meta, f"there is no {meta}")):
        if not path.exists():
            raise DatasetNotFoundError(NAME, root, problem, LAYOUT, SOURCE)
    if not (root / "imagesTr").is_dir():
        raise DatasetNotFoundError(NAME, root, f"there is no {root / 'imagesTr'}", LAYOUT, SOURCE)
    try:
        info = json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _format_error(meta, f"is not valid JSON ({err})") from err
    if not isinstance(info, dict):
        raise _format_error(meta, "is not a JSON object")
    for key in (k for k in REQUIRED_KEYS if k not in info):
        raise _format_error(meta, f'has no "{key}" entry (expected {EXPECTED_JSON})')
    try:
        labels = {int(value): str(name) for value, name in info["labels"].items()}
        modality = info["modality"]
        modalities = [modality] if isinstance(modality, str) else [str(modality[k]) for k in sorted(modality, key=int)]
        cases = [MSDCase(_case_id(Path(e["label"])), root / e["image"], root / e["label"]) for e in info["training"]]
    except (AttributeError, TypeError, KeyError, ValueError) as err:
        raise _format_error(meta, f"does not follow the MSD format ({err!r}); expected {EXPECTED_JSON}") from err
    if sorted(labels) != list(range(len(labels))) or not 2 <= len(labels) <= 255:
        raise _format_error(meta, f'"labels" has values {sorted(labels)}; expected 0, 1, …, K−1 with 2 ≤ K ≤ 255')
    if not cases:
        raise _format_error(meta, 'lists no case in "training"')
    if len({c.case for c in cases}) != len(cases):
        raise _format_error(meta, 'lists the same label file twice in "training"')
    missing = [str(p) for c in cases for p in (c.image, c.label) if not p.is_file()]
    if missing:
        raise DatasetFormatError(
            f'{len(missing)} of {2 * len(cases)} files listed in {meta} "training" are missing, e.g. '
            f"{', '.join(missing[:3])}; extract the complete task tarball from {SOURCE}"
        )
    return MSDTask(meta, modalities, [labels[v] for v in range(len(labels))], cases)


def to_display(volume: np.ndarray) -> np.ndarray:
    """RAS+ (X, Y, Z[, M]) → axial slices (Z, [M,] H=Y, W=X), upright and radiological (see module doc)."""
    flipped = volume[::-1, ::-1]
    axes = (2, 1, 0) if volume.ndim == 3 else (2, 3, 1, 0)
    return np.ascontiguousarray(flipped.transpose(axes))


def _read(path: Path, dtype=None) -> np.ndarray:
    nib = nibabel()
    try:
        img = nib.as_closest_canonical(nib.load(str(path)))
        return img.get_fdata(dtype=dtype) if dtype is not None else np.asanyarray(img.dataobj)
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as err:
        raise DatasetFormatError(f"cannot read NIfTI file {path}: {err}; re-extract it from {SOURCE}") from err


def read_spacing(path: Path) -> tuple[float, float, float]:
    """The voxel size (mm) of a NIfTI file in display order (z, y, x) — :func:`to_display`'s axes — from its
    header alone: the zooms of the axes that reorientation to RAS+ maps to X, Y and Z."""
    nib = nibabel()
    try:
        img = nib.load(str(path))
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as err:
        raise DatasetFormatError(f"cannot read NIfTI file {path}: {err}; re-extract it from {SOURCE}") from err
    zooms = img.header.get_zooms()[:3]
    to_ras = nib.orientations.io_orientation(img.affine)  # row i: the RAS axis that input axis i becomes
    ras = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(to_ras[:3]):
        ras[int(target)] = float(zooms[axis])
    return ras[2], ras[1], ras[0]


def read_case(task: MSDTask, case: MSDCase, channels: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Raw intensities of the selected modality ``channels`` as float32 (Z, C, H, W) and the label as
    uint8 (Z, H, W), in display orientation, with the label values checked against dataset.json."""
    image, label = _read(case.image, np.float32), _read(case.label)
    n_mod = len(task.modalities)
    if image.ndim == 3 and n_mod == 1:
        image = image[..., None]
    if image.ndim != 4 or image.shape[3] != n_mod:
        raise DatasetFormatError(
            f"{case.image} has shape {image.shape} but {task.meta} lists {n_mod} modalities; expected "
            f"{'X×Y×Z' if n_mod == 1 else f'X×Y×Z×{n_mod}'}"
        )
    if label.ndim == 4 and label.shape[3] == 1:
        label = label[..., 0]
    if label.shape != image.shape[:3]:
        raise DatasetFormatError(
            f"image {case.image} is {image.shape[:3]} (X, Y, Z after reorientation to RAS) but its label "
            f"{case.label} is {label.shape}; the pair in {task.meta} must share one voxel grid"
        )
    if not np.issubdtype(label.dtype, np.integer) and (label != np.round(label)).any():
        raise DatasetFormatError(
            f"{case.label} holds non-integer label values {np.unique(label[label != np.round(label)])[:5].tolist()}; "
            "labels must be the integer class values of dataset.json"
        )
    try:
        check_label_values(label, range(len(task.class_names)), case.label, f'classes of {task.meta} "labels"')
    except DatasetFormatError as err:
        raise DatasetFormatError(f'{err}; add the value to "labels" in {task.meta} or fix the label file') from err
    selected = image[..., channels]
    broken = int(selected.size - np.count_nonzero(np.isfinite(selected)))
    if broken:  # one NaN makes the CT statistics NaN (every case blank) or blanks an MR case: refuse
        raise DatasetFormatError(
            f"{case.image} holds {broken} non-finite voxel(s) (NaN or ±Inf) of {selected.size}; normalised, they "
            "would blank this case (MR) or, through the CT statistics, every case. Repair the volume (e.g. "
            f"replace them with the background intensity) or remove the case from {task.meta}"
        )
    return to_display(selected), to_display(label.astype(np.uint8))


def is_ct(modality: str) -> bool:
    """Whether a dataset.json modality name gets the CT normalisation."""
    return modality.strip().upper() == "CT"


def training_ct_statistics(
    task: MSDTask, train: list[MSDCase], channels: list[int], window: tuple[float, float] | None, seed: int
) -> list[dict[str, float] | None]:
    """Per selected channel, :func:`ct_statistics` of the foreground voxels of the ``train`` cases (each case
    capped at ``FOREGROUND_VOXEL_BUDGET // len(train)`` voxels, seeded sample), or None for a non-CT channel."""
    ct = [i for i, m in enumerate(channels) if is_ct(task.modalities[m])]
    rng, cap = np.random.default_rng(seed), max(1, FOREGROUND_VOXEL_BUDGET // max(len(train), 1))
    pooled: dict[int, list[np.ndarray]] = {i: [] for i in ct}
    for case in train:
        image, label = read_case(task, case, channels)
        for i in ct:
            voxels = image[:, i][label > 0]
            pooled[i].append(voxels if voxels.size <= cap else rng.choice(voxels, size=cap, replace=False))
    if any(sum(v.size for v in pooled[i]) == 0 for i in ct):
        raise DatasetFormatError(
            f"the training cases of {task.meta.parent} have no foreground voxel (label > 0), so the CT "
            "normalisation statistics cannot be estimated; check labelsTr/ or the split"
        )
    return [ct_statistics(np.concatenate(pooled[i]), window) if i in ct else None for i in range(len(channels))]


def ct_statistics(voxels: np.ndarray, window: tuple[float, float] | None) -> dict[str, float]:
    """``{"lo", "hi", "mean", "std"}`` of the CT normalisation from pooled foreground voxels."""
    voxels = voxels.astype(np.float64)
    lo, hi = window if window is not None else np.percentile(voxels, [0.5, 99.5])
    clipped = np.clip(voxels, lo, hi)
    return {"lo": float(lo), "hi": float(hi), "mean": float(clipped.mean()), "std": float(clipped.std())}


def normalise(image: np.ndarray, stats: list[dict[str, float] | None]) -> np.ndarray:
    """z-scores of float32 (Z, C, H, W) ``image``, in place: channel c with CT ``stats[c]``, or the per-volume
    nonzero z-score where ``stats[c]`` is None."""
    for c, channel_stats in enumerate(stats):
        x = image[:, c]
        if channel_stats is not None:
            np.clip(x, channel_stats["lo"], channel_stats["hi"], out=x)
            mean, std = channel_stats["mean"], channel_stats["std"]
        else:
            nonzero = x[x != 0]
            reference = nonzero if nonzero.size else x
            mean, std = float(reference.mean(dtype=np.float64)), float(reference.std(dtype=np.float64))
        x -= mean
        x /= max(std, STD_FLOOR)
    return image


def encode_uint8(z: np.ndarray, z_clip: float) -> np.ndarray:
    """``round(clip(z, −z_clip, z_clip) · 127.5 / z_clip + 127.5)`` as uint8 (see module doc)."""
    return np.rint(np.clip(z, -z_clip, z_clip) * (127.5 / z_clip) + 127.5).astype(np.uint8)


def decode_uint8(u: np.ndarray, z_clip: float) -> np.ndarray:
    """Inverse of :func:`encode_uint8` up to quantisation: ``(u − 127.5) · 2·z_clip / 255``."""
    return (u.astype(np.float64) - 127.5) * (2.0 * z_clip / 255.0)


def file_signature(paths: list[Path]) -> list[tuple[str, int, int]]:
    """(absolute path, size, mtime in ns) of each file: a changed file gets a new cache key."""
    return [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]


def digest(settings: object) -> str:
    """A short hex key of a JSON-serialisable ``settings`` object."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def write_atomic(path: Path, write) -> None:
    """Write ``path`` through ``write(file_object)`` into a temporary file of the same folder, then rename it
    into place, so a reader (another rank, an interrupted run) never sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
