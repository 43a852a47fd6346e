"""BestScore: the best validation by the one optimised metric, carried through checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from segloss.errors import ConfigError
from segloss.models.best import BestScore, metric_value, optimizable_metrics

NAMES = ["road", "car"]


def results(miou: float, iou_car: float) -> dict:
    return {"mIoU": torch.tensor(miou), "IoU": torch.tensor([0.9, iou_car]), "acc": torch.tensor(0.5)}


def test_metric_values_by_name():
    r = results(0.4, 0.3)
    assert float(metric_value(r, "val/mIoU", NAMES)) == pytest.approx(0.4)
    assert float(metric_value(r, "val/IoU/car", NAMES)) == pytest.approx(0.3)
    assert metric_value(r, "val/IoU/bus", NAMES) is None and metric_value(r, "val/case_mDice", NAMES) is None


def test_the_best_follows_its_metric_only_and_never_a_nan():
    best = BestScore("val/IoU/car", NAMES)
    assert best.update(results(0.5, 0.2)) and best.value == pytest.approx(0.2)
    assert not best.update(results(0.9, 0.1))  # a better mIoU does not matter
    assert not best.update(results(0.1, math.nan)) and not best.update(results(0.1, 0.2))  # NaN, a tie
    assert best.update(results(0.1, 0.3)) and float(best.results["mIoU"]) == pytest.approx(0.1)
    with pytest.raises(ConfigError, match=r"optimized_metric=val/case_mDice is not among this run's validation"):
        BestScore("val/case_mDice", NAMES).update(results(0.1, 0.1))


def test_the_best_survives_a_checkpoint_of_the_same_metric_and_of_older_segloss():
    best = BestScore("val/mIoU", NAMES)
    best.update(results(0.6, 0.2))
    again = BestScore("val/mIoU", NAMES)
    again.load(best.state())
    assert again.value == pytest.approx(0.6) and not again.update(results(0.55, 0.9))
    old = BestScore("val/mIoU", NAMES)
    old.load({"mIoU": 0.7, "results": None})  # checkpoints written before optimized_metric existed
    assert old.value == pytest.approx(0.7)
    other = BestScore("val/acc", NAMES)
    other.load(best.state())  # chosen by another metric: not this run's best
    assert other.value is None


def test_the_metrics_that_may_be_optimised():
    plain, cases = optimizable_metrics(NAMES, per_case=False), optimizable_metrics(NAMES, per_case=True)
    assert plain[:3] == ["val/mIoU", "val/mDice", "val/acc"] and "val/IoU/car" in plain and "val/loss" not in plain
    assert set(cases) - set(plain) == {"val/case_mDice", "val/case_Dice/road", "val/case_Dice/car"}
