"""The metrics of one evaluation stage (val or test), updated per batch and read once per split.

* split-level IoU, Dice, accuracy and recall from one confusion matrix (:mod:`segloss.metrics.confusion`);
* each image's TP/FP/FN and quality counts (:mod:`segloss.metrics.per_image`, what ``make compare`` resamples);
* the ``metrics`` config node's Boundary IoU, calibration and small-object recall
  (:mod:`segloss.metrics.quality`);
* for items with a ``"case"`` (slices of volumes): per-case Dice (:mod:`segloss.metrics.per_case`) and, with
  ``surface_distance``, per-case HD95/ASSD (:mod:`segloss.metrics.surface`).

``compute()`` returns the results dict the module keeps (``last_results``, the best epoch's) and the scalar
values to log, named without the stage prefix (``mIoU``, ``IoU/<class>``, ``case_mDice`` …).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from segloss.metrics import CaseDice, ConfusionScores
from segloss.metrics.per_image import PerImageCounts
from segloss.metrics.quality import QualityMetrics
from segloss.metrics.regions import CaseRegionDice, RegionScores
from segloss.metrics.surface import CaseSurfaceDistance
from segloss.utils import consumer_rules
from segloss.utils.regions import Regions
from segloss.utils.rules import Rule


class EvaluationMetrics(nn.Module):
    # metrics.surface_distance is read here; the other metrics options by QualityMetrics (its RULES).
    RULES: ClassVar[dict[str, Rule]] = consumer_rules.EVALUATION

    def __init__(
        self,
        num_classes: int,
        ignore_index: int,
        class_names: Sequence[str],
        quality: dict,
        regions: Regions | None = None,
    ) -> None:
        super().__init__()
        quality = dict(quality)
        if regions is not None:  # independent sigmoids per region: the softmax calibration of labels does not apply
            quality["calibration"] = False
        surface = quality.pop("surface_distance", False)  # per-case HD95/ASSD of volume data (MSD)
        self.RULES["surface_distance"].require(surface)
        self.class_names = list(class_names)
        self.split = ConfusionScores(num_classes, ignore_index)
        self.quality = QualityMetrics(num_classes, **quality)
        self.images = PerImageCounts(num_classes, ignore_index, self.quality.per_image_fields())
        self.case = CaseDice(num_classes, ignore_index)
        self.surface = CaseSurfaceDistance(num_classes, ignore_index) if surface else None
        self.seen = 0  # images this rank has scored in the current pass (for batches without "index")
        # Overlapping regions (data.regions): scored on the written label map, as the BraTS evaluation does.
        self.regions = regions
        if regions is not None:
            self.region_split = RegionScores(len(regions), ignore_index, names=list(regions.names))
            self.region_case = CaseRegionDice(len(regions), ignore_index)

    def start(self) -> None:
        """A new pass over the split begins."""
        self.seen = 0

    def update(self, preds: Tensor, logits: Tensor, batch: dict, world: int = 1) -> None:
        """One batch: ``preds`` N×H×W classes, ``logits`` N×C×H×W; each image's position in the split is the
        batch's ``"index"`` (:class:`segloss.data.sampling.IndexedItems`), whichever process scores it."""
        mask = batch["mask"]
        self.split.update(preds, mask)
        extras = self.quality.accumulate(preds, mask, logits)
        names = batch.get("name") or [""] * len(preds)
        index = batch.get("index")
        if index is None:  # a batch of one's own, without positions: numbered as they arrive (one process)
            if world > 1:
                raise ValueError('evaluation batches under several processes must carry "index" (IndexedItems)')
            index = torch.arange(self.seen, self.seen + len(preds))
        self.images.update(preds, mask, names, index, extras)
        self.seen += len(preds)
        if self.regions is not None:
            ignore = self.split.ignore_index
            written, truth = self.regions.to_multi_hot(preds, ignore), self.regions.to_multi_hot(mask, ignore)
            self.region_split.update(written, truth)
            if "case" in batch:
                self.region_case.update(written, truth, batch["case"])
        if "case" in batch:
            self.case.update(preds, mask, batch["case"])
            if self.surface is not None and "spacing" in batch:
                self.surface.update(preds, mask, batch["case"], batch["name"], batch["spacing"])

    def compute(self) -> tuple[dict, dict[str, Tensor]]:
        """``(results, logged)`` of the pass, then reset (see the module docstring)."""
        results = self.split.compute()  # one all-reduce of the confusion matrix under DDP
        self.split.reset()
        logged = {"mIoU": results["mIoU"], "mDice": results["mDice"], "acc": results["acc"]}
        logged["mRecall"] = results["mRecall"]
        for key in ("IoU", "Dice", "recall"):
            logged.update({f"{key}/{name}": value for name, value in zip(self.class_names, results[key])})
        extra = self.quality.compute()
        self.quality.reset()
        results = {**results, **extra}
        for key, value in extra.items():  # scalars as <key>, per-class vectors as <key>/<class>
            if value.dim() == 0:
                logged[key] = value
            elif key != "small_objects":
                logged.update({f"{key}/{name}": v for name, v in zip(self.class_names, value)})
        results["per_image"] = self.images.compute()
        self.images.reset()
        if self.case.update_called:
            case = self.case.compute()
            self.case.reset()
            results.update(case_Dice=case["Dice"], case_mDice=case["mDice"])
            logged["case_mDice"] = case["mDice"]
            logged.update({f"case_Dice/{name}": v for name, v in zip(self.class_names, case["Dice"])})
        if self.surface is not None and self.surface.update_called:
            distances = self.surface.compute()
            self.surface.reset()
            for key in ("HD95", "ASSD"):
                results[f"case_{key}"], results[f"case_m{key}"] = distances[key], distances[f"m{key}"]
                logged[f"case_m{key}"] = distances[f"m{key}"]
                names = self.class_names[1:]  # no distance for the background
                logged.update({f"case_{key}/{name}": v for name, v in zip(names, distances[key][1:])})
        if self.regions is not None:
            self._compute_regions(results, logged)
        return results, logged

    def _compute_regions(self, results: dict, logged: dict) -> None:
        """``region_mDice``, ``region_Dice/<region>`` (and per case) into ``results`` and ``logged``."""
        names = list(self.regions.names)
        split = self.region_split.compute()
        self.region_split.reset()
        results.update(region_Dice=split["Dice"], region_mDice=split["mDice"])
        logged["region_mDice"] = split["mDice"]
        logged.update({f"region_Dice/{name}": v for name, v in zip(names, split["Dice"])})
        if self.region_case.update_called:
            case = self.region_case.compute()
            self.region_case.reset()
            results.update(region_case_Dice=case["Dice"], region_case_mDice=case["mDice"])
            logged["region_case_mDice"] = case["mDice"]
            logged.update({f"region_case_Dice/{name}": v for name, v in zip(names, case["Dice"])})
