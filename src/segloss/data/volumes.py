"""Medical Segmentation Decathlon tasks as 3D volumes for a 3D U-Net, the nnU-Net way (Isensee et al., Nature
Methods 18, 203–211, 2021): resampled to one spacing, intensity-normalised per modality, trained on patches
with foreground oversampling, validated on whole volumes (by a sliding window in the model).

Same layout, split and readers as the 2D slice dataset (:mod:`segloss.data.medical`): ``root`` is a
``TaskXX_Name`` folder with ``dataset.json``, ``imagesTr/`` and ``labelsTr/``; the cases are split by
:func:`segloss.data.medical.split_cases`. Preprocessing (reading, normalisation, resampling, caching):
:mod:`segloss.data.volume_preprocess`. Augmentation of the training patches: :mod:`segloss.data.volume_augment`.

* **Channels**: every modality of dataset.json "modality" in its order (BrainTumour: FLAIR, T1w, T1gd, T2w), or
  the ``modalities`` chosen (indices into it, in the order given). Images are ``C×D×H×W``, D the axial axis.
* **Training items** (``patches=True``, the default for ``split="train"``): one patch of ``patch_size``
  ``[D, H, W]`` per item from case ``cases[index % n_cases]`` (``samples_per_epoch`` items an epoch, default
  one per case). With probability ``oversample_foreground`` (nnU-Net: 1/3) **per item** — nnU-Net instead forces
  the items of each batch after the first ``round(2/3 · batch)`` (1 of a batch of 2), a position an item cannot
  know — the patch is centred on a voxel drawn uniformly from
  the foreground locations of a class drawn uniformly among the foreground classes the case holds (a random
  patch when it holds none); otherwise its position is uniform. Like nnU-Net the patch stays inside the volume
  along an axis where the volume is larger than the patch (a centred patch is shifted inwards, still holding its
  voxel) and is centred with a random offset where the volume is smaller; that part is padded (image 0 = the
  mean after normalisation, mask ``ignore_index``, counted in no loss). The draws come from a numpy generator
  seeded by one draw of torch's global RNG, which :class:`segloss.data.sampling.SeededItems` seeds per item.
* **Evaluation items** (``patches=False``): whole preprocessed volumes, one per case, for a sliding window.

Items (C modalities; ``spacing`` the (z, y, x) mm voxel size after resampling):

* training: ``{"image": float32 C×pD×pH×pW, "mask": int64 pD×pH×pW, "name": "<case>_patch<z>-<y>-<x>" (the patch
  origin), "case": str, "spacing": float64 (3,)}``;
* evaluation: ``{"image": float32 C×D×H×W, "mask": int64 D×H×W, "name": "<case>", "case": str, "spacing": …}``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from segloss.data import medical_preprocess as mp
from segloss.data import volume_preprocess as vp
from segloss.data.medical import SPLITS, msd_palette, task_split
from segloss.errors import ConfigError


def patch_origin(
    shape: Sequence[int], patch: Sequence[int], rng: np.random.Generator, locations: np.ndarray | None = None
) -> tuple[tuple[int, int, int], bool]:
    """``(origin, centred)``: the lower corner of a patch in a volume of ``shape`` (module docstring), centred on a
    foreground voxel of ``locations`` (rows ``(class, z, y, x)``) when given and not empty."""
    shape, patch = np.asarray(shape), np.asarray(patch)
    need = np.maximum(patch - shape, 0)
    low = -(need // 2)
    high = shape + need // 2 + need % 2 - patch
    if locations is not None and len(locations):
        classes = np.unique(locations[:, 0])
        rows = locations[locations[:, 0] == classes[rng.integers(len(classes))]]
        voxel = rows[rng.integers(len(rows)), 1:]
        origin = np.clip(voxel - patch // 2, low, high)
        return tuple(int(v) for v in origin), True
    return tuple(int(rng.integers(lo, hi + 1)) for lo, hi in zip(low, high, strict=True)), False


def crop_padded(array: np.ndarray, origin: Sequence[int], size: Sequence[int], fill, dtype=None) -> np.ndarray:
    """The window ``[origin, origin + size)`` of the last three axes of ``array`` (as ``dtype``, default its own),
    ``fill`` where the window leaves the array."""
    spatial = array.shape[-3:]
    out = np.full((*array.shape[:-3], *size), fill, dtype=dtype or array.dtype)
    src, dst = [], []
    for o, s, n in zip(origin, size, spatial, strict=True):
        lo, hi = max(o, 0), min(o + s, n)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - o, hi - o))
    lead = (slice(None),) * (array.ndim - 3)
    out[(*lead, *dst)] = array[(*lead, *src)]
    return out


class MSDVolumeDataset(Dataset):
    """3D volumes of one MSD task (see the module docstring for every convention).

    Args:
        root: the ``TaskXX_Name`` folder.
        split: ``train``, ``val`` or ``all``.
        transform: callable on the item dict (e.g. :class:`segloss.data.volume_augment.VolumeAugment`), or None.
            A transform with ``takes_region = True`` also gets ``region=``, a reader of larger windows around the
            patch (for rotations and zooms, :mod:`segloss.data.volume_augment`).
        patch_size: training patch ``[D, H, W]`` in voxels of the target spacing.
        spacing: target spacing ``[z, y, x]`` mm, or ``"median"`` of the train cases.
        val_fraction, seed: the case-level split (``seed`` also seeds the preprocessing samples).
        modalities: indices into dataset.json "modality" for the channels (default: all, in order).
        oversample_foreground: probability per training item of a foreground-centred patch (nnU-Net: 1/3).
        samples_per_epoch: training items per epoch (default: one per case; nnU-Net: 250 batches of 2).
        patches: patches (default for ``train``) or whole volumes (default otherwise).
        zscore_mask: ``nonzero`` or ``all``: the voxels of the non-CT z-score (:mod:`volume_preprocess`).
        ct_window: fixed CT clip window [lo, hi], else the training foreground 0.5/99.5 percentiles.
        ignore_index: the mask value of padding.
        cache_dir: folder for the preprocessed cases (never inside ``root``); None keeps them in memory.
    """

    PER_CASE = True  # items carry "case": the module also scores per-case volume Dice
    VOLUMETRIC = True  # items are C×D×H×W (3D models, sliding-window evaluation)

    CLASS_NAMES: list[str]  # set per instance from dataset.json "labels", in label order
    PALETTE: list[tuple[int, int, int]]
    IGNORE_INDEX = 255

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable | None = None,
        patch_size: Sequence[int] = (64, 128, 128),
        spacing: Sequence[float] | str = "median",
        val_fraction: float = 0.2,
        seed: int = 0,
        modalities: Sequence[int] | None = None,
        oversample_foreground: float = 1 / 3,
        samples_per_epoch: int | None = None,
        patches: bool | None = None,
        zscore_mask: str = "nonzero",
        ct_window: Sequence[float] | None = None,
        ignore_index: int = 255,
        cache_dir: str | Path | None = None,
    ) -> None:
        self._check(split, val_fraction, patch_size, oversample_foreground, samples_per_epoch, zscore_mask, ct_window)
        self.root, self.split, self.transform = Path(root).expanduser(), split, transform
        self.patch_size = tuple(int(n) for n in patch_size)
        self.seed, self.oversample_foreground, self.zscore_mask = seed, float(oversample_foreground), zscore_mask
        self.ct_window = None if ct_window is None else (float(ct_window[0]), float(ct_window[1]))
        self.ignore_index = self.IGNORE_INDEX = int(ignore_index)
        self.patches = split == "train" if patches is None else bool(patches)
        self.task = mp.read_task(self.root)
        self.CLASS_NAMES, self.PALETTE = self.task.class_names, msd_palette(len(self.task.class_names))
        self.channels = self._channels(modalities)
        by_id, train, self.cases = task_split(self.root, self.task, split, val_fraction, seed, cache_dir)
        self.cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()
        self.folder = None if self.cache_dir is None else self.cache_dir / "msd3d" / self.root.name
        train_cases = [by_id[c] for c in train]
        self.target_spacing = vp.target_spacing(spacing, [mp.read_spacing(c.label) for c in train_cases])
        self.intensity_stats = self._intensity_stats(train_cases)
        self._memory: dict[str, dict[str, np.ndarray]] = {}
        self._files: dict[str, dict[str, Path]] = {}
        for case in self.cases:
            self._prepare(by_id[case])
        self.locations = {case: np.asarray(self._array(case, "locations")) for case in self.cases}
        self.spacing = {case: tuple(float(v) for v in self._array(case, "spacing")) for case in self.cases}
        self.shapes = {case: tuple(self._array(case, "label").shape) for case in self.cases}
        self.samples_per_epoch = samples_per_epoch
        self.label_paths = [Path(by_id[case].label) for case in self.cases]  # what label caches key on
        if self.patches:
            self._check_patch_fits()

    # --- settings ------------------------------------------------------------------------------------
    @staticmethod
    def _check(split, val_fraction, patch_size, oversample, samples_per_epoch, zscore_mask, ct_window) -> None:
        if split not in SPLITS:
            raise ConfigError(
                f"MSD split {split!r} is not one of {SPLITS}; MSD test images (imagesTs/) have no labels, so "
                "evaluate on split=val (data.splits.test=null)"
            )
        if not 0 <= val_fraction < 1:
            raise ConfigError(f"data.dataset.val_fraction={val_fraction} must be in [0, 1)")
        sizes = list(patch_size) if not isinstance(patch_size, str | int) else []
        if len(sizes) != 3 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in sizes):
            raise ConfigError.value("data.dataset.patch_size", patch_size, "[D, H, W]: three positive integers",
                                    "data.dataset.patch_size=[64,128,128]")  # fmt: skip
        if not 0 <= float(oversample) <= 1:
            raise ConfigError.value("data.dataset.oversample_foreground", oversample, "a probability in [0, 1]",
                                    "data.dataset.oversample_foreground=0.33")  # fmt: skip
        if samples_per_epoch is not None and not (isinstance(samples_per_epoch, int) and samples_per_epoch >= 1):
            raise ConfigError.value("data.dataset.samples_per_epoch", samples_per_epoch, "a positive integer or null",
                                    "data.dataset.samples_per_epoch=500")  # fmt: skip
        if zscore_mask not in vp.ZSCORE_MASKS:
            raise ConfigError.value("data.dataset.zscore_mask", zscore_mask, f"one of {list(vp.ZSCORE_MASKS)}",
                                    "data.dataset.zscore_mask=nonzero")  # fmt: skip
        if ct_window is not None and (len(ct_window) != 2 or not ct_window[0] < ct_window[1]):
            raise ConfigError(f"data.dataset.ct_window={list(ct_window)} must be [lo, hi] with lo < hi (e.g. HU)")

    def _channels(self, chosen: Sequence[int] | None) -> list[int]:
        modalities = self.task.modalities
        if chosen is None:
            return list(range(len(modalities)))
        indices = [int(i) for i in chosen]
        if not indices or any(not 0 <= i < len(modalities) for i in indices):
            listed = ", ".join(f"{i}={name}" for i, name in enumerate(modalities))
            raise ConfigError(
                f"data.dataset.modalities={list(chosen)} must be indices into the modalities of {self.task.meta} "
                f"({listed}), or null for all of them"
            )
        return indices

    def _check_patch_fits(self) -> None:
        """A patch longer than every case along an axis would be padding there: refused, with the shapes."""
        shapes = np.array([self.shapes[c] for c in self.cases])
        largest, median = shapes.max(axis=0), np.median(shapes, axis=0).astype(int)
        if any(p > n for p, n in zip(self.patch_size, largest, strict=True)):
            raise ConfigError(
                f"data.dataset.patch_size={list(self.patch_size)} is larger than every {self.split} volume of "
                f"{self.root} along some axis: the largest is {largest.tolist()} (median {median.tolist()}) voxels "
                f"[D, H, W] after resampling to spacing {[round(s, 4) for s in self.target_spacing]} mm, so that "
                f"part of every patch would be padding. Choose a patch_size of at most {largest.tolist()} (nnU-Net "
                "caps it at the median shape), or a finer data.dataset.spacing"
            )

    # --- preprocessing -------------------------------------------------------------------------------
    def _intensity_stats(self, train: list[mp.MSDCase]) -> list[dict[str, float] | None]:
        if not any(mp.is_ct(self.task.modalities[m]) for m in self.channels):
            return [None] * len(self.channels)
        files = mp.file_signature([p for c in train for p in (c.image, c.label)])
        settings = {"v": vp.FORMAT_VERSION, "files": files, "channels": self.channels, "window": self.ct_window,
                    "seed": self.seed, "budget": mp.FOREGROUND_VOXEL_BUDGET, "kind": "3d"}  # fmt: skip
        return vp.cached_statistics(
            self.folder,
            settings,
            lambda: vp.ct_foreground_statistics(self.task, train, self.channels, self.ct_window, self.seed),
        )

    def _prepare(self, case: mp.MSDCase) -> None:
        settings = {
            "v": vp.FORMAT_VERSION,
            "files": mp.file_signature([case.image, case.label]),
            "channels": self.channels,
            "stats": self.intensity_stats,
            "zscore_mask": self.zscore_mask,
            "spacing": self.target_spacing,
            "modalities": self.task.modalities,
            "classes": len(self.task.class_names),
            "seed": self.seed,
        }

        def build() -> dict[str, np.ndarray]:
            return vp.preprocess_case(self.task, case, self.channels, self.intensity_stats, self.zscore_mask,
                                      self.target_spacing, self.seed)  # fmt: skip

        if self.folder is None:
            self._memory[case.case] = build()
        else:
            self._files[case.case] = vp.cached_case(self.folder, case.case, mp.digest(settings), build)

    def _array(self, case: str, kind: str) -> np.ndarray:
        """A preprocessed array of ``case``: in memory, or memory-mapped afresh on each call (works in forked
        or spawned workers and holds no file descriptor)."""
        if case in self._memory:
            return self._memory[case][kind]
        return np.load(self._files[case][kind], mmap_mode="r")

    # --- items ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        if self.patches and self.samples_per_epoch is not None:
            return self.samples_per_epoch
        return len(self.cases)

    def case_of(self, index: int) -> str:
        return self.cases[index % len(self.cases)]

    def load_mask(self, index: int) -> torch.Tensor:
        """The whole preprocessed label volume (int64 D×H×W) of item ``index``'s case, without the image."""
        return torch.from_numpy(np.asarray(self._array(self.case_of(index), "label")).astype(np.int64))

    def draw_patch(self, index: int, rng: np.random.Generator) -> tuple[str, tuple[int, int, int], bool]:
        """``(case, origin, centred)`` of a training patch of item ``index`` (module docstring)."""
        case = self.case_of(index)
        locations = self.locations[case] if rng.random() < self.oversample_foreground else None
        origin, centred = patch_origin(self.shapes[case], self.patch_size, rng, locations)
        return case, origin, centred

    def __getitem__(self, index: int) -> dict:
        if not self.patches:
            case = self.case_of(index)
            image = torch.from_numpy(np.array(self._array(case, "image"), dtype=np.float32))
            sample = {"image": image, "mask": self.load_mask(index), "name": case, "case": case,
                      "spacing": torch.tensor(self.spacing[case], dtype=torch.float64)}  # fmt: skip
            return self.transform(sample) if self.transform is not None else sample
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        case, origin, _ = self.draw_patch(index, rng)
        image, mask = self._region(case, origin, self.patch_size)
        sample = {
            "image": image,
            "mask": mask,
            "name": f"{case}_patch{origin[0]}-{origin[1]}-{origin[2]}",
            "case": case,
            "spacing": torch.tensor(self.spacing[case], dtype=torch.float64),
        }
        if self.transform is None:
            return sample
        if getattr(self.transform, "takes_region", False):
            return self.transform(sample, region=lambda size: self._region(case, origin, size))
        return self.transform(sample)

    def _region(self, case: str, origin: Sequence[int], size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Image (float32) and mask (int64) of the window of ``size`` centred on the patch at ``origin``, padded
        with 0 and ``ignore_index`` outside the volume."""
        start = [o - (s - p) // 2 for o, s, p in zip(origin, size, self.patch_size, strict=True)]
        image = crop_padded(self._array(case, "image"), start, size, 0.0, np.float32)
        mask = crop_padded(self._array(case, "label"), start, size, self.ignore_index, np.int64)
        return torch.from_numpy(image), torch.from_numpy(mask)
