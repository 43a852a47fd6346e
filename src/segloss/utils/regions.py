"""Overlapping regions of a label space, for region-based (multi-label) training and evaluation.

BraTS is scored on nested *regions* of its labels, not on the labels themselves (Menze et al., IEEE TMI 2015;
Bakas et al. 2018). With the label values of the Medical Segmentation Decathlon's Task01_BrainTumour (0
background, 1 oedema, 2 non-enhancing tumour, 3 enhancing tumour — the BraTS labels 2 = ED, 1 = NCR/NET, 4 = ET
renumbered; nnU-Net's BraTS datasets use the same 1/2/3) the regions are::

    whole_tumour     = {1, 2, 3}   (WT)
    tumour_core      = {2, 3}      (TC)
    enhancing_tumour = {3}         (ET)

nnU-Net trains them with one sigmoid per region (Isensee et al., "nnU-Net for Brain Tumor Segmentation", BraTS
2020, 2021; ``regions`` and ``regions_class_order`` in its dataset.json). :class:`Regions` holds such a definition
``{name: [labels…]}`` in order and converts both ways:

* :meth:`Regions.to_multi_hot`: label map N×S… → multi-hot N×R×S… (channel r is 1 where the label lies in region
  r, 0 elsewhere, and the ignore value in every channel of an unlabelled voxel) — the target of
  :mod:`segloss.losses.multilabel`;
* :meth:`Regions.to_label_map`: region logits (or probabilities, or binary masks) N×R×S… → label map N×S…, as
  nnU-Net writes its segmentations (``LabelManager.convert_probabilities_to_segmentation``): start from 0 and, for
  the regions **in the given order**, write region r's label ``write[r]`` onto every voxel where σ(z_r) > the
  threshold (strictly; 0.5 by default, i.e. z_r > 0). A later region overwrites an earlier one, so a voxel gets the
  label of the *last* region (in the given order) that fires.

The label each region writes (nnU-Net's ``regions_class_order``) is, unless given, derived from the definition:
the one label of region r that no later region contains, write[r] = the single element of
labels(r) \\ ∪_{q>r} labels(q). For BraTS in the order WT, TC, ET::

    whole_tumour     writes 1 (oedema)                 {1, 2, 3} \\ {2, 3}
    tumour_core      writes 2 (non-enhancing tumour)   {2, 3} \\ {3}
    enhancing_tumour writes 3 (enhancing tumour)       {3}

so a voxel in WT only is 1, in WT and TC (not ET) 2, in ET 3 (also when WT or TC did not fire: the last firing
region wins, as in nnU-Net), in none 0 — nnU-Net's ``regions_class_order = [1, 2, 3]`` for these regions. With the
derived rule the round trip label map → multi-hot → (perfect predictions) → label map gives every label back:
the last region that contains label l is the one that writes l, and no region after it fires on l's voxels.
Labels that lie in no region come back as 0. If a region has no label of its own (it is covered by later regions:
list larger regions first) or more than one (ambiguous: split the region, or give ``class_order``), the
definition is refused with a :class:`ConfigError` naming ``data.regions``.

Regions may be nested (each pair disjoint or one inside the other, as BraTS's chain WT ⊃ TC ⊃ ET) or overlap
partially; :attr:`Regions.nested` says which. Label 0 is the background and belongs to no region (nnU-Net's rule);
with ``num_classes`` given, every label must lie in [1, num_classes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from segloss.errors import ConfigError, LabelValueError

KEY = "data.regions"

BRATS_REGIONS = {"whole_tumour": [1, 2, 3], "tumour_core": [2, 3], "enhancing_tumour": [3]}  # MSD Task01 labels


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Regions:
    """An ordered definition of regions ``{name: [labels…]}`` of a label space (see the module docstring).

    Args:
        regions: ``{name: labels}`` in order (a dict, an OmegaConf ``DictConfig``, or ``(name, labels)`` pairs);
            ``labels`` a list of ints or one int.
        num_classes: the size C of the label space (labels 0…C−1, 0 the background): every region label must lie
            in [1, C), and :meth:`to_multi_hot` checks label values on the CPU. None skips both.
        class_order: the label each region writes in :meth:`to_label_map` (nnU-Net's ``regions_class_order``),
            one per region and a member of it; None derives it (module docstring).
        key: the config key named in error messages.

    Raises:
        ConfigError: a malformed definition (names, labels, duplicates, background, labels outside the label
            space, a region without a label of its own to write).
    """

    def __init__(
        self,
        regions: Mapping[str, Sequence[int] | int] | Sequence[tuple[str, Sequence[int] | int]],
        num_classes: int | None = None,
        class_order: Sequence[int] | None = None,
        key: str = KEY,
    ) -> None:
        self.key = key
        items = self._items(regions)
        self.names: tuple[str, ...] = tuple(name for name, _ in items)
        self.labels: tuple[tuple[int, ...], ...] = tuple(labels for _, labels in items)
        self.num_classes = num_classes
        self._check_label_space(num_classes)
        self.write: tuple[int, ...] = self._write_labels(class_order)

    # --- the definition ---------------------------------------------------------------------------------------
    def _items(self, regions) -> list[tuple[str, tuple[int, ...]]]:
        try:  # an OmegaConf node: plain containers, in its (insertion) order
            from omegaconf import DictConfig, ListConfig, OmegaConf

            if isinstance(regions, DictConfig | ListConfig):
                regions = OmegaConf.to_container(regions, resolve=True)
        except ImportError:  # pragma: no cover - omegaconf is a dependency
            pass
        pairs = list(regions.items()) if isinstance(regions, Mapping) else list(regions or [])
        if not pairs:
            raise ConfigError(f"{self.key} is empty: define at least one region, e.g. {self.key}={BRATS_REGIONS}")
        items, seen = [], {}
        for pair in pairs:
            if not isinstance(pair, Sequence) or isinstance(pair, str) or len(pair) != 2:
                raise ConfigError(f"{self.key}: {pair!r} is not a (name, labels) pair; write {{name: [labels…]}}")
            name, labels = pair
            if not isinstance(name, str) or not name:
                raise ConfigError(f"{self.key}: region name {name!r} must be a non-empty string")
            if name in {n for n, _ in items}:
                raise ConfigError(f"{self.key}: region {name!r} is defined twice")
            labels = [labels] if _is_int(labels) else labels
            if isinstance(labels, str | bytes) or not isinstance(labels, Sequence) or not labels:
                raise ConfigError(f"{self.key}.{name}={labels!r} must be a non-empty list of integer labels")
            if not all(_is_int(label) for label in labels):
                raise ConfigError(f"{self.key}.{name}={list(labels)} must hold integer labels only")
            if len(set(labels)) != len(labels):
                raise ConfigError(f"{self.key}.{name}={list(labels)} lists a label twice")
            if 0 in labels:
                raise ConfigError(
                    f"{self.key}.{name}={list(labels)} holds label 0, the background, which belongs to no region "
                    "(nnU-Net's rule); list foreground labels only"
                )
            if any(label < 0 for label in labels):
                raise ConfigError(f"{self.key}.{name}={list(labels)} holds a negative label")
            same = seen.get(frozenset(labels))
            if same is not None:
                raise ConfigError(f"{self.key}: regions {same!r} and {name!r} hold the same labels {sorted(labels)}")
            seen[frozenset(labels)] = name
            items.append((name, tuple(int(label) for label in labels)))
        return items

    def _check_label_space(self, num_classes: int | None) -> None:
        if num_classes is None:
            return
        if not _is_int(num_classes) or num_classes < 2:
            raise ConfigError(f"data.num_classes={num_classes!r} must be an integer ≥ 2 for region-based training")
        for name, labels in zip(self.names, self.labels, strict=True):
            outside = [label for label in labels if label >= num_classes]
            if outside:
                raise ConfigError(
                    f"{self.key}.{name}={list(labels)}: label(s) {outside} are not in the label space "
                    f"[0, {num_classes}) of data.num_classes={num_classes}"
                )

    def _write_labels(self, class_order: Sequence[int] | None) -> tuple[int, ...]:
        if class_order is not None:
            order = list(class_order)
            if len(order) != len(self.names) or not all(_is_int(label) for label in order):
                raise ConfigError(
                    f"{self.key}: class_order={order} must give one integer label per region ({len(self.names)})"
                )
            for name, labels, label in zip(self.names, self.labels, order, strict=True):
                if label not in labels:
                    raise ConfigError(f"{self.key}.{name}={list(labels)} cannot write label {label} (class_order)")
            return tuple(order)
        write = []
        for r, (name, labels) in enumerate(zip(self.names, self.labels, strict=True)):
            later = set().union(*self.labels[r + 1 :])
            own = [label for label in labels if label not in later]
            if not own:
                raise ConfigError(
                    f"{self.key}.{name}={list(labels)} lies inside the regions after it, which would overwrite every "
                    f"voxel it writes; list larger regions first (e.g. {list(BRATS_REGIONS)})"
                )
            if len(own) > 1:
                raise ConfigError(
                    f"{self.key}.{name}={list(labels)} has labels {own} that no later region holds: the label map "
                    "could give back only one of them; split the region or give the label it writes (class_order)"
                )
            write.append(own[0])
        return tuple(write)

    # --- properties -------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"Regions({dict(zip(self.names, map(list, self.labels), strict=True))}, write={list(self.write)})"

    def as_dict(self) -> dict[str, list[int]]:
        """The definition as an ordered plain dict (what a config holds)."""
        return {name: list(labels) for name, labels in zip(self.names, self.labels, strict=True)}

    @property
    def nested(self) -> bool:
        """Whether every two regions are disjoint or one contains the other (a hierarchy, as BraTS's)."""
        sets = [set(labels) for labels in self.labels]
        return all(a <= b or b <= a or not a & b for i, a in enumerate(sets) for b in sets[i + 1 :])

    @property
    def round_trips(self) -> bool:
        """Whether :meth:`to_label_map` of perfect predictions gives every region label back (always with the
        derived write rule; with a given ``class_order`` only if it is the derived one)."""
        for label in set().union(*self.labels):
            last = max(r for r, labels in enumerate(self.labels) if label in labels)
            if self.write[last] != label:
                return False
        return True

    # --- conversions ------------------------------------------------------------------------------------------
    def to_multi_hot(
        self, label_map: Tensor, ignore_index: int = 255, check: bool | None = None, dtype: torch.dtype | None = None
    ) -> Tensor:
        """Multi-hot N×R×S… of a label map N×S… (int64 or any integer type).

        Channel r is 1 where the label lies in region r and 0 elsewhere; voxels whose label is ``ignore_index``
        hold ``ignore_index`` in **every** channel (the losses and metrics leave them out). The dtype is uint8 when
        ``ignore_index`` fits in it (0…255), else int64; ``dtype`` overrides. No host sync, except for the value
        check: ``check=None`` checks values on CPU tensors only (labels in [0, num_classes) or ``ignore_index``,
        when ``num_classes`` is known: the original BraTS label 4 would otherwise silently fall outside every
        region), ``True``/``False`` always/never.
        """
        if label_map.is_floating_point() or label_map.dtype == torch.bool or label_map.is_complex():
            raise ValueError(f"a label map must hold integer labels (int64), got {label_map.dtype}")
        if label_map.dim() < 2:
            raise ValueError(f"a label map must be N×spatial…, got shape {tuple(label_map.shape)}")
        clash = [name for name, labels in zip(self.names, self.labels, strict=True) if ignore_index in labels]
        if clash:
            raise ValueError(f"ignore_index={ignore_index} is a label of region(s) {clash}; choose another (e.g. 255)")
        ignored = label_map == ignore_index
        if (label_map.device.type == "cpu" if check is None else check) and self.num_classes is not None:
            bad = ~ignored & ((label_map < 0) | (label_map >= self.num_classes))
            if bool(bad.any()):
                values = torch.unique(label_map[bad]).tolist()[:10]
                raise LabelValueError(
                    f"label map holds values {values} outside [0, {self.num_classes}) that are not "
                    f"ignore_index={ignore_index}; remap the labels (BraTS's 4 = enhancing tumour is 3 in MSD Task01)"
                )
        if dtype is None:
            dtype = torch.uint8 if 0 <= ignore_index <= 255 else torch.int64
        channels = [
            torch.isin(label_map, torch.tensor(labels, dtype=label_map.dtype, device=label_map.device))
            for labels in self.labels
        ]
        multi_hot = torch.stack(channels, dim=1).to(dtype)
        return multi_hot.masked_fill_(ignored.unsqueeze(1), ignore_index)

    def region_masks(self, predictions: Tensor, threshold: float = 0.5, logits: bool = True) -> Tensor:
        """bool N×R×S… of the regions that fire: σ(z) > ``threshold`` for ``logits`` (z > log(t / (1 − t)), z > 0
        at 0.5), p > ``threshold`` for probabilities (``logits=False``); bool or integer 0/1 masks as they are."""
        if predictions.dim() < 3 or predictions.shape[1] != len(self):
            raise ValueError(
                f"region predictions must be N×R×spatial… with R={len(self)} ({', '.join(self.names)}), "
                f"got shape {tuple(predictions.shape)}"
            )
        if not predictions.is_floating_point():
            return predictions.bool() if predictions.dtype != torch.bool else predictions
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be a probability in (0, 1), got {threshold}")
        if logits:
            return predictions > math.log(threshold / (1 - threshold))
        return predictions > threshold

    def to_label_map(self, predictions: Tensor, threshold: float = 0.5, logits: bool = True) -> Tensor:
        """int64 label map N×S… of region logits (or probabilities with ``logits=False``, or bool masks)
        N×R×S…: nnU-Net's rule — 0, then for r in order, ``write[r]`` where region r fires (module docstring)."""
        fires = self.region_masks(predictions, threshold, logits)
        label_map = torch.zeros(fires.shape[:1] + fires.shape[2:], dtype=torch.int64, device=fires.device)
        for r, label in enumerate(self.write):
            label_map.masked_fill_(fires[:, r], label)
        return label_map


def regions_from_config(node, num_classes: int | None = None, class_order: Sequence[int] | None = None) -> Regions:
    """A :class:`Regions` of a config node (``data.regions``), or the given Regions as it is."""
    if isinstance(node, Regions):
        return node
    if node is None:
        raise ConfigError(f"{KEY} is not set: region-based training needs e.g. {KEY}={BRATS_REGIONS}")
    return Regions(node, num_classes=num_classes, class_order=class_order)
