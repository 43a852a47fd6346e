"""Medical Segmentation Decathlon (Antonelli et al., Nature Communications 2022; Simpson et al. 2019) as
2D axial slices.

Layout under ``root`` (one task, http://medicaldecathlon.com/)::

    TaskXX_Name/dataset.json                 "modality", "labels", "training": [{"image", "label"}, …]
    TaskXX_Name/imagesTr/<case>.nii.gz       3D (X, Y, Z) or 4D (X, Y, Z, modality)
    TaskXX_Name/labelsTr/<case>.nii.gz       integer class values, keys of dataset.json "labels"

dataset.json "training" is the list of cases (the ``._*`` macOS files of the tarballs are never read).

* Split, by case: the sorted case ids are shuffled by ``numpy.random.default_rng(seed)``; the last
  ``round(val_fraction · K)`` (at least 1 when val_fraction > 0, at most K − 1) are ``val``, the rest
  ``train``; ``all`` is every case. No slice of a val case is ever a train sample.
* ``fg_ratio`` (train split only): every slice with foreground (label > 0) is kept, plus a seeded random
  subset of background-only slices sized so that foreground slices are as close as possible to the fraction
  ``fg_ratio`` of the kept slices (1.0 → foreground slices only). None, and every other split: all slices.
* Orientation, intensity normalisation and the uint8 encoding: see :mod:`segloss.data.medical_preprocess`
  (RAS+, radiological display; nnU-Net CT / per-volume z-score; ``u = round(clip(z, ±z_clip)·127.5/z_clip +
  127.5)``, step 2·z_clip/255 σ, so ``mean=[0.5]*3, std=[1/(2·z_clip)]*3`` on [0, 1] images gives back z).
* Channels: the selected modalities (``modalities`` = indices into dataset.json "modality", default all, at
  most 3), padded to 3 by repeating the last one (one modality → the same slice three times).
* Each case is preprocessed once into uint8 ``.npy`` arrays under ``cache_dir/msd/<task folder>/`` keyed by a
  hash of (files, sizes, mtimes, normalisation settings), written atomically and then read slice by slice
  with ``np.load(mmap_mode="r")``; with ``cache_dir=None`` the preprocessed cases stay in memory.

Items: ``{"image": uint8 3×H×W, "mask": int64 H×W, "name": "<case>_z<zzz>", "case": "<case>", "spacing": float64
(z, y, x) voxel size in mm}`` (the spacing feeds the per-case surface distances, :mod:`segloss.metrics.surface`).
"""

from __future__ import annotations

import colorsys
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from segloss.data import medical_preprocess as mp
from segloss.errors import ConfigError

SPLITS = ("train", "val", "all")
FORMAT_VERSION = 1  # bump when the preprocessing changes, so old cache entries are not reused
_STATS_MEMO: dict[str, list] = {}


def msd_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """Background black, then hues spaced by the golden ratio (distinct for any practical class count)."""
    colours = [(0, 0, 0)]
    for k in range(1, num_classes):
        r, g, b = colorsys.hsv_to_rgb((k * 0.618033988749895) % 1.0, 0.65 + 0.35 * (k % 2), 0.95 - 0.25 * (k % 3 == 0))
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return colours


def split_cases(case_ids: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, val) case ids by the seeded rule of the module docstring, each sorted."""
    ids = sorted(case_ids)
    shuffled = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    n_val = min(max(round(val_fraction * len(ids)), 1 if val_fraction > 0 else 0), len(ids) - 1)
    cut = len(ids) - n_val
    return sorted(shuffled[:cut]), sorted(shuffled[cut:])


def task_split(root: Path, task, split: str, val_fraction: float, seed: int, cache_dir) -> tuple[dict, list, list]:
    """``(cases by id, train ids, the ids of split)`` of an MSD task by :func:`split_cases`, and the cache folder
    checked: a split left empty or a cache inside the dataset folder is a :class:`ConfigError` naming the key."""
    by_id = {c.case: c for c in task.cases}
    train, val = split_cases(list(by_id), val_fraction, seed)
    chosen = {"train": train, "val": val, "all": sorted(by_id)}[split]
    if not chosen:
        raise ConfigError(
            f"the {split} split of {root} is empty ({len(by_id)} cases, val_fraction={val_fraction}); "
            "raise data.dataset.val_fraction or add cases"
        )
    if cache_dir is not None and Path(cache_dir).expanduser().resolve().is_relative_to(root.resolve()):
        raise ConfigError(
            f"data.dataset.cache_dir={Path(cache_dir).expanduser()} is inside the dataset folder {root}; "
            "point it elsewhere (the default is ${paths.cache_dir})"
        )
    return by_id, train, chosen


def background_count(n_foreground: int, n_background: int, fg_ratio: float) -> int:
    """How many background-only slices to keep so foreground slices are closest to ``fg_ratio`` of all."""
    ideal = n_foreground * (1.0 - fg_ratio) / fg_ratio
    candidates = {min(max(int(np.floor(ideal)), 0), n_background), min(int(np.ceil(ideal)), n_background)}
    return min(sorted(candidates), key=lambda b: abs(n_foreground / (n_foreground + b) - fg_ratio))


def select_channels(modalities: list[str], chosen: Sequence[int] | None, meta: Path) -> list[int]:
    """Indices of the modalities that become the image channels (see the module docstring)."""
    listed = ", ".join(f"{i}={name}" for i, name in enumerate(modalities))
    if chosen is None:
        if len(modalities) > 3:
            raise ConfigError(
                f"{meta} lists {len(modalities)} modalities ({listed}) but images have 3 channels; choose up to 3 "
                "with data.dataset.modalities=[i,j,k] (indices into that list)"
            )
        return list(range(len(modalities)))
    indices = [int(i) for i in chosen]
    if not 1 <= len(indices) <= 3 or any(not 0 <= i < len(modalities) for i in indices):
        raise ConfigError(
            f"data.dataset.modalities={list(chosen)} must be 1 to 3 indices into the modalities of {meta} ({listed})"
        )
    return indices


def _check_settings(split: str, val_fraction: float, fg_ratio, ct_window, z_clip: float) -> None:
    if split not in SPLITS:
        raise ConfigError(
            f"MSD split {split!r} is not one of {SPLITS}; MSD test images (imagesTs/) have no labels, so "
            "evaluate on split=val (data.splits.test=null)"
        )
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"data.dataset.val_fraction={val_fraction} must be in [0, 1)")
    if fg_ratio is not None and not 0 < fg_ratio <= 1:
        raise ConfigError(f"data.dataset.fg_ratio={fg_ratio} must be in (0, 1], or null to keep every slice")
    if ct_window is not None and (len(ct_window) != 2 or not ct_window[0] < ct_window[1]):
        raise ConfigError(f"data.dataset.ct_window={list(ct_window)} must be [lo, hi] with lo < hi (e.g. HU)")
    if not z_clip > 0:
        raise ConfigError(f"data.dataset.z_clip={z_clip} must be > 0")


class MSDSliceDataset(Dataset):
    """Axial 2D slices of one MSD task (see the module docstring for every convention).

    Args:
        root: the ``TaskXX_Name`` folder.
        split: ``train``, ``val`` or ``all``.
        transform: callable on the item dict (see :mod:`segloss.data.transforms`), or None.
        val_fraction, seed: the case-level split.
        fg_ratio: None, or the fraction of foreground slices among the kept train slices.
        modalities: indices into dataset.json "modality" for the image channels (required if more than 3).
        ct_window: fixed CT clip window [lo, hi], else the training foreground 0.5/99.5 percentiles.
        z_clip: z-scores are clipped to ±z_clip before the uint8 encoding.
        cache_dir: folder for the preprocessed cases (never inside ``root``); None keeps them in memory.
    """

    PER_CASE = True  # items carry "case": the module also scores per-case volume Dice

    CLASS_NAMES: list[str]  # set per instance from dataset.json "labels", in label order
    PALETTE: list[tuple[int, int, int]]  # one RGB colour per class, background black
    IGNORE_INDEX = 255

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable | None = None,
        val_fraction: float = 0.2,
        seed: int = 0,
        fg_ratio: float | None = None,
        modalities: Sequence[int] | None = None,
        ct_window: Sequence[float] | None = None,
        z_clip: float = 4.0,
        cache_dir: str | Path | None = None,
    ) -> None:
        _check_settings(split, val_fraction, fg_ratio, ct_window, z_clip)
        self.root, self.split, self.transform = Path(root).expanduser(), split, transform
        self.seed, self.fg_ratio, self.z_clip = seed, fg_ratio, float(z_clip)
        self.ct_window = None if ct_window is None else (float(ct_window[0]), float(ct_window[1]))
        self.task = mp.read_task(self.root)
        self.CLASS_NAMES, self.PALETTE = self.task.class_names, msd_palette(len(self.task.class_names))
        self.channels = select_channels(self.task.modalities, modalities, self.task.meta)
        self._channel_index = np.array([*range(len(self.channels)), *[len(self.channels) - 1] * 3][:3])
        by_id, train, self.cases = task_split(self.root, self.task, split, val_fraction, seed, cache_dir)
        self.cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()
        self.intensity_stats = self._intensity_stats([by_id[c] for c in train])
        self._memory: dict[str, dict[str, np.ndarray]] = {}
        self._files: dict[str, dict[str, Path]] = {}
        foreground = {case: self._prepare(by_id[case]) for case in self.cases}
        self._sizes = {case: tuple(self._array(case, "label").shape[1:]) for case in self.cases}
        self._spacing = {case: mp.read_spacing(by_id[case].label) for case in self.cases}  # (z, y, x) mm
        self.samples = self._index(foreground)
        self.label_paths = [Path(by_id[case].label) for case in self.cases]  # what label caches key on

    # --- preprocessing -------------------------------------------------------------------------------
    def _intensity_stats(self, train: list[mp.MSDCase]) -> list[dict[str, float] | None]:
        """Per selected channel: CT statistics from the train cases, or None (per-volume z-score)."""
        if not any(mp.is_ct(self.task.modalities[m]) for m in self.channels):
            return [None] * len(self.channels)
        files = mp.file_signature([p for c in train for p in (c.image, c.label)])
        settings = {"v": FORMAT_VERSION, "files": files, "channels": self.channels, "window": self.ct_window}
        key = mp.digest({**settings, "seed": self.seed, "budget": mp.FOREGROUND_VOXEL_BUDGET})
        path = None if self.cache_dir is None else self.cache_dir / "msd" / self.root.name / f"ct_stats-{key}.json"
        if key not in _STATS_MEMO and path is not None and path.is_file():
            _STATS_MEMO[key] = json.loads(path.read_text())
        if key not in _STATS_MEMO:
            stats = mp.training_ct_statistics(self.task, train, self.channels, self.ct_window, self.seed)
            _STATS_MEMO[key] = stats
            if path is not None:
                mp.write_atomic(path, lambda f: f.write(json.dumps(stats).encode()))
        return _STATS_MEMO[key]

    def _prepare(self, case: mp.MSDCase) -> np.ndarray:
        """Preprocess ``case`` unless cached; returns its per-slice foreground flags (bool, Z)."""
        settings = {
            "v": FORMAT_VERSION,
            "files": mp.file_signature([case.image, case.label]),
            "channels": self.channels,
            "stats": self.intensity_stats,
            "z_clip": self.z_clip,
            "modalities": self.task.modalities,
        }
        key = mp.digest(settings)
        if self.cache_dir is not None:
            folder = self.cache_dir / "msd" / self.root.name
            files = {kind: folder / f"{case.case}-{key}.{kind}.npy" for kind in ("image", "label", "foreground")}
            if not all(_readable(p) for p in files.values()):  # missing, or cut short by a killed run: redone
                for kind, array in self._preprocess(case).items():
                    mp.write_atomic(files[kind], lambda f, a=array: np.save(f, a))
            self._files[case.case] = files
            return np.load(files["foreground"])
        self._memory[case.case] = self._preprocess(case)
        return self._memory[case.case]["foreground"]

    def _preprocess(self, case: mp.MSDCase) -> dict[str, np.ndarray]:
        image, label = mp.read_case(self.task, case, self.channels)
        encoded = mp.encode_uint8(mp.normalise(image, self.intensity_stats), self.z_clip)
        return {"image": encoded, "label": label, "foreground": label.reshape(len(label), -1).any(axis=1)}

    def _index(self, foreground: dict[str, np.ndarray]) -> list[tuple[str, int]]:
        samples = [(case, z) for case in self.cases for z in range(len(foreground[case]))]
        if self.split != "train" or self.fg_ratio is None:
            return samples
        fg = [s for s in samples if foreground[s[0]][s[1]]]
        bg = [s for s in samples if not foreground[s[0]][s[1]]]
        if not fg:
            raise ConfigError(
                f"data.dataset.fg_ratio={self.fg_ratio} but no train slice of {self.root} holds foreground; "
                "set fg_ratio=null"
            )
        n_bg = background_count(len(fg), len(bg), self.fg_ratio)
        chosen = np.random.default_rng(self.seed).choice(len(bg), size=n_bg, replace=False)
        keep = set(fg) | {bg[i] for i in chosen.tolist()}
        return [s for s in samples if s in keep]

    # --- reading -------------------------------------------------------------------------------------
    def _array(self, case: str, kind: str) -> np.ndarray:
        """A preprocessed array of ``case`` (``image`` Z×C×H×W or ``label`` Z×H×W, uint8): in memory, or
        memory-mapped afresh on each call (works in forked or spawned workers and holds no file descriptor)."""
        if case in self._memory:
            return self._memory[case][kind]
        return np.load(self._files[case][kind], mmap_mode="r")

    def __len__(self) -> int:
        return len(self.samples)

    def image_size(self, index: int) -> tuple[int, int]:
        """(H, W) of sample ``index`` (all slices of a case share it), for batching equal sizes together."""
        return self._sizes[self.samples[index][0]]

    def load_mask(self, index: int) -> torch.Tensor:
        """The label slice (int64 H×W) of sample ``index``, without reading the image."""
        case, z = self.samples[index]
        return torch.from_numpy(self._array(case, "label")[z].astype(np.int64))

    def __getitem__(self, index: int) -> dict:
        case, z = self.samples[index]
        image = np.ascontiguousarray(self._array(case, "image")[z][self._channel_index])
        sample = {
            "image": torch.from_numpy(image),
            "mask": self.load_mask(index),
            "name": f"{case}_z{z:03d}",
            "case": case,
            "spacing": torch.tensor(self._spacing[case], dtype=torch.float64),
        }
        return self.transform(sample) if self.transform is not None else sample


def _readable(path: Path) -> bool:
    """Whether a cached ``.npy`` opens whole (a file truncated by a full disk or a killed run does not: numpy
    raises "mmap length is greater than file size"); such a file is written again from the NIfTI."""
    try:
        np.load(path, mmap_mode="r")
        return True
    except (OSError, ValueError, EOFError):
        return False
