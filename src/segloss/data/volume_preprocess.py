"""The one-off per-case preprocessing behind :class:`segloss.data.volumes.MSDVolumeDataset`: nnU-Net's recipe
(Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image segmentation",
Nature Methods 18, 203–211, 2021) for the 3D U-Net, on MSD volumes read by :mod:`segloss.data.medical_preprocess`.

Per case, in this order (nnU-Net's: normalise, then resample):

1. **Read** every selected modality as float32 and the label as uint8, reoriented to RAS+ and laid out as
   ``C×D×H×W`` with D = the axial (z) axis (the display orientation of :func:`medical_preprocess.to_display`:
   ``D×H×W = Z×Y×X``); labels outside dataset.json "labels" and non-finite voxels are refused there.
2. **Normalise** each channel (statistics from the raw voxels, before resampling):

   * CT ("CT" in dataset.json "modality"; nnU-Net's CTNormalization): ``z = (clip(x, lo, hi) − mean) / std`` with
     dataset-level statistics of the **foreground voxels (label > 0) of the train-split cases** (validation cases
     never inform them): [lo, hi] = the 0.5 / 99.5 percentiles (or a fixed ``ct_window``), mean and std
     (population, ddof 0) of the **unclipped** foreground voxels, as nnU-Net's dataset fingerprint computes
     them. (The 2D slice dataset takes mean/std after clipping; the difference is small.) Each case contributes
     all its foreground voxels up to ``FOREGROUND_VOXEL_BUDGET / n_train_cases``, beyond that a seeded sample.
   * every other modality (nnU-Net's ZScoreNormalization), per case and channel ``z = (x − mean) / std``:
     ``zscore_mask="nonzero"`` (default) takes mean/std over the volume's **nonzero mask** — voxels nonzero in
     any channel, no hole filling — and sets the voxels outside it to 0, as nnU-Net does when cropping to the
     nonzero region shrinks the volumes (BraTS); ``"all"`` takes every voxel (nnU-Net's choice otherwise). On
     volumes without exact zeros (Hippocampus, Prostate) the two coincide. A volume of zeros uses every voxel.

   Standard deviations are floored at 1e-8.
3. **Resample** to the target spacing ``[z, y, x]`` mm — ``"median"`` is the per-axis median spacing of the
   train-split cases (nnU-Net's default; its 10th-percentile rule for strongly anisotropic tasks is not
   applied): the new shape is ``round(shape · spacing / target)`` (at least 1), the image is resampled
   **trilinearly** (``torch.nn.functional.interpolate``, ``align_corners=False``; nnU-Net uses third-order
   splines in-plane) and the label by **nearest neighbour** (``nearest-exact``: the source voxel whose centre is
   nearest, so labels keep their values). A case whose shape does not change is not resampled. The case's
   spacing becomes ``spacing · shape / new_shape`` (the target up to rounding).
4. **Foreground locations** for nnU-Net's oversampling: per foreground class, the coordinates of up to
   ``LOCATIONS_PER_CLASS`` of its voxels (all when fewer; a seeded uniform sample otherwise), int32 rows
   ``(class, z, y, x)``.

With a ``cache_dir`` every case is preprocessed once into ``.npy`` files (image float32 C×D×H×W, label uint8
D×H×W, locations, spacing) keyed by a hash of (files, sizes, mtimes, settings), each written atomically; a file
that does not open whole (cut short by a full disk or a killed run) makes the case be preprocessed again.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from segloss.data import medical_preprocess as mp
from segloss.errors import ConfigError, DatasetFormatError
from segloss.utils.seeding import mix_seed

FORMAT_VERSION = 1  # bump when the preprocessing changes, so old cache entries are not reused
LOCATIONS_PER_CLASS = 10_000  # foreground voxels kept per class for the oversampling (nnU-Net samples 10 000)
ZSCORE_MASKS = ("nonzero", "all")
KINDS = ("image", "label", "locations", "spacing")
_STATS_MEMO: dict[str, list] = {}


def target_spacing(spacing, train_spacings: Sequence[Sequence[float]]) -> tuple[float, float, float]:
    """``spacing`` as three positive floats (z, y, x) mm, or the per-axis median of ``train_spacings`` for
    ``"median"``; a :class:`ConfigError` for anything else."""
    if isinstance(spacing, str) and spacing == "median":
        return tuple(float(v) for v in np.median(np.asarray(train_spacings, dtype=np.float64), axis=0))
    try:
        values = [float(v) for v in spacing]
    except (TypeError, ValueError):
        values = []
    if isinstance(spacing, str) or len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise ConfigError.value("data.dataset.spacing", spacing, "[z, y, x] in mm (three positive numbers) or median",
                                "data.dataset.spacing=[1.6,0.8,0.8]")  # fmt: skip
    return values[0], values[1], values[2]


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    """``round(shape · spacing / target)`` per axis, at least 1 (nnU-Net's rule)."""
    return tuple(max(1, int(np.round(n * s / t))) for n, s, t in zip(shape, spacing, target, strict=True))


def resample(image: np.ndarray, label: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``image`` C×D×H×W trilinearly and uint8 ``label`` D×H×W by nearest neighbour onto ``shape``."""
    shape = tuple(int(n) for n in shape)
    if tuple(label.shape) == shape:
        return image, label
    return resample_image(image, shape), resample_labels(label, shape).astype(np.uint8)


def resample_image(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """float32 ``image`` C×D×H×W trilinearly onto ``shape`` (``align_corners=False``); unchanged if already there."""
    shape = tuple(int(n) for n in shape)
    if tuple(image.shape[1:]) == shape:
        return image
    with torch.no_grad():
        return F.interpolate(torch.from_numpy(np.ascontiguousarray(image))[None], size=shape, mode="trilinear",
                             align_corners=False)[0].numpy()  # fmt: skip


def resample_labels(label: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Integer ``label`` D×H×W onto ``shape`` by nearest neighbour (``nearest-exact``), in its own dtype."""
    shape = tuple(int(n) for n in shape)
    if tuple(label.shape) == shape:
        return label
    with torch.no_grad():
        lab = F.interpolate(torch.from_numpy(np.ascontiguousarray(label))[None, None].float(), size=shape,
                            mode="nearest-exact")[0, 0]  # fmt: skip
    return lab.numpy().astype(label.dtype)


def read_volume(task: mp.MSDTask, case: mp.MSDCase, channels: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Raw float32 image C×D×H×W (the ``channels`` in that order) and uint8 label D×H×W of ``case``."""
    image, label = mp.read_case(task, case, channels)  # (Z, C, H, W), (Z, H, W)
    return np.ascontiguousarray(image.transpose(1, 0, 2, 3)), label


def read_image_volume(path: Path, modalities: list[str], channels: list[int]) -> tuple[np.ndarray, tuple]:
    """One image volume without a label (``make predict``): raw float32 C×D×H×W of the selected ``channels`` in
    :func:`read_volume`'s orientation, and its (z, y, x) spacing in mm; ``modalities`` are dataset.json's, whose
    count the file's 4th dimension must match (a 3D file for one modality)."""
    image = mp._read(path, np.float32)
    if image.ndim == 3 and len(modalities) == 1:
        image = image[..., None]
    if image.ndim != 4 or image.shape[3] != len(modalities):
        raise DatasetFormatError(
            f"{path} has shape {image.shape} but the model's dataset.json lists {len(modalities)} modalities "
            f"({', '.join(modalities)}); expected {'X×Y×Z' if len(modalities) == 1 else f'X×Y×Z×{len(modalities)}'}"
        )
    selected = image[..., channels]
    broken = int(selected.size - np.count_nonzero(np.isfinite(selected)))
    if broken:
        raise DatasetFormatError(f"{path} holds {broken} non-finite voxel(s) (NaN or ±Inf) of {selected.size}")
    return np.ascontiguousarray(mp.to_display(selected).transpose(1, 0, 2, 3)), mp.read_spacing(path)


def preprocess_image(
    image: np.ndarray,
    spacing: Sequence[float],
    stats: list[dict[str, float] | None],
    zscore_mask: str,
    target: Sequence[float],
) -> np.ndarray:
    """Steps 2–3 of the module docstring for one image volume (C×D×H×W float32, normalised in place) without a
    label: normalised with ``stats`` (the training set's) and resampled to the ``target`` spacing."""
    normalise(image, stats, zscore_mask)
    return resample_image(image, resampled_shape(image.shape[1:], spacing, target)).astype(np.float32, copy=False)


def ct_foreground_statistics(
    task: mp.MSDTask, train: list[mp.MSDCase], channels: list[int], window: tuple[float, float] | None, seed: int
) -> list[dict[str, float] | None]:
    """Per selected channel ``{"lo", "hi", "mean", "std"}`` of the CT normalisation from the foreground voxels of
    the ``train`` cases (module docstring, step 2), or None for a channel that is not CT."""
    ct = [i for i, m in enumerate(channels) if mp.is_ct(task.modalities[m])]
    if not ct:
        return [None] * len(channels)
    rng, cap = np.random.default_rng(seed), max(1, mp.FOREGROUND_VOXEL_BUDGET // max(len(train), 1))
    pooled: dict[int, list[np.ndarray]] = {i: [] for i in ct}
    for case in train:
        image, label = read_volume(task, case, channels)
        foreground = label > 0
        for i in ct:
            voxels = image[i][foreground]
            pooled[i].append(voxels if voxels.size <= cap else rng.choice(voxels, size=cap, replace=False))
    if any(sum(v.size for v in pooled[i]) == 0 for i in ct):
        raise DatasetFormatError(
            f"the training cases of {task.meta.parent} have no foreground voxel (label > 0), so the CT "
            "normalisation statistics cannot be estimated; check labelsTr/ or the split"
        )
    stats: list[dict[str, float] | None] = [None] * len(channels)
    for i in ct:
        voxels = np.concatenate(pooled[i]).astype(np.float64)
        lo, hi = window if window is not None else np.percentile(voxels, [0.5, 99.5])
        stats[i] = {"lo": float(lo), "hi": float(hi), "mean": float(voxels.mean()), "std": float(voxels.std())}
    return stats


def normalise(image: np.ndarray, stats: list[dict[str, float] | None], zscore_mask: str) -> np.ndarray:
    """Normalise float32 ``image`` C×D×H×W in place: channel c with CT ``stats[c]``, or the per-volume z-score
    (over the nonzero mask or all voxels, ``zscore_mask``) where ``stats[c]`` is None (module docstring)."""
    mask = None
    if zscore_mask == "nonzero" and any(s is None for s in stats):
        mask = (image != 0).any(axis=0)
        mask = mask if mask.any() else None
    for c, channel_stats in enumerate(stats):
        x = image[c]
        if channel_stats is not None:
            np.clip(x, channel_stats["lo"], channel_stats["hi"], out=x)
            x -= channel_stats["mean"]
            x /= max(channel_stats["std"], mp.STD_FLOOR)
            continue
        reference = x[mask] if mask is not None else x
        mean, std = float(reference.mean(dtype=np.float64)), float(reference.std(dtype=np.float64))
        x -= mean
        x /= max(std, mp.STD_FLOOR)
        if mask is not None:
            x[~mask] = 0.0
    return image


def foreground_locations(label: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """int32 rows ``(class, z, y, x)``: per foreground class up to :data:`LOCATIONS_PER_CLASS` of its voxels."""
    rng = np.random.default_rng(seed)
    rows = [np.zeros((0, 4), dtype=np.int32)]
    for value in range(1, num_classes):
        coords = np.argwhere(label == value)
        if len(coords) > LOCATIONS_PER_CLASS:
            coords = coords[np.sort(rng.choice(len(coords), size=LOCATIONS_PER_CLASS, replace=False))]
        rows.append(np.concatenate([np.full((len(coords), 1), value), coords], axis=1).astype(np.int32))
    return np.concatenate(rows)


def preprocess_case(
    task: mp.MSDTask,
    case: mp.MSDCase,
    channels: list[int],
    stats: list[dict[str, float] | None],
    zscore_mask: str,
    target: Sequence[float],
    seed: int,
) -> dict[str, np.ndarray]:
    """Steps 1–4 of the module docstring for one case: ``{"image", "label", "locations", "spacing"}``."""
    image, label = read_volume(task, case, channels)
    spacing = mp.read_spacing(case.label)
    normalise(image, stats, zscore_mask)
    raw_shape = label.shape
    shape = resampled_shape(raw_shape, spacing, target)
    image, label = resample(image, label, shape)
    effective = np.array([s * n / m for s, n, m in zip(spacing, raw_shape, shape, strict=True)])
    locations = foreground_locations(label, len(task.class_names), mix_seed(seed, int(mp.digest(case.case), 16)))
    return {"image": image.astype(np.float32, copy=False), "label": label, "locations": locations,
            "spacing": effective}  # fmt: skip


def cached_statistics(folder: Path | None, settings: dict, compute: Callable[[], list]) -> list:
    """``compute()`` once per ``settings`` (memo, and a JSON file in ``folder`` when given)."""
    key = mp.digest(settings)
    path = None if folder is None else folder / f"ct_stats-{key}.json"
    if key not in _STATS_MEMO and path is not None and path.is_file():
        with contextlib.suppress(json.JSONDecodeError, UnicodeDecodeError):  # cut short: computed again below
            _STATS_MEMO[key] = json.loads(path.read_text())
    if key not in _STATS_MEMO:
        _STATS_MEMO[key] = compute()
    stats = _STATS_MEMO[key]
    if path is not None and not path.is_file():
        mp.write_atomic(path, lambda f: f.write(json.dumps(stats).encode()))
    return stats


def cached_case(folder: Path, case_id: str, key: str, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, Path]:
    """The cache files of one case (``folder/<case>-<key>.<kind>.npy``), written from ``build()`` unless every
    one of them opens whole."""
    files = {kind: folder / f"{case_id}-{key}.{kind}.npy" for kind in KINDS}
    if not all(_readable(p) for p in files.values()):
        for kind, array in build().items():
            mp.write_atomic(files[kind], lambda f, a=array: np.save(f, a))
    return files


def _readable(path: Path) -> bool:
    """Whether a cached ``.npy`` opens whole (a truncated one raises "mmap length is greater than file size")."""
    try:
        np.load(path, mmap_mode="r")
        return True
    except (OSError, ValueError, EOFError):
        return False
