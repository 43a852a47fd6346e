"""segloss.utils.metric_registry is the one list of validation metrics: what a validation pass logs, what a
callback may monitor, what may be optimised and what `make compare` recomputes all come from it."""

from __future__ import annotations

import pytest
import torch

from segloss.checks import check_config
from segloss.comparison.significance import SCORES
from segloss.errors import ConfigError
from segloss.models.evaluation import EvaluationMetrics
from segloss.utils import metric_registry as R

NAMES = ["road", "car", "pole"]


def test_every_metric_a_validation_logs_is_in_the_registry():
    quality = {"boundary_iou": True, "calibration": True, "small_objects": True, "surface_distance": True}
    evaluation = EvaluationMetrics(3, 255, NAMES, quality)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 16, 16, generator=g)
    mask = torch.randint(0, 3, (2, 16, 16), generator=g)
    spacing = torch.ones(2, 3, dtype=torch.float64)  # a collated batch of items' voxel spacings
    batch = {"mask": mask, "name": ["c0_z000", "c0_z001"], "case": ["c0", "c0"], "spacing": spacing}
    evaluation.start()
    evaluation.update(logits.argmax(1), logits, batch)
    _, logged = evaluation.compute()
    names = {f"val/{key}" for key in logged}
    assert names <= R.logged_metrics(NAMES, per_case=True)
    assert {"val/ECE", "val/NLL", "val/mSmallRecall", "val/small_recall/car", "val/case_mDice"} <= names
    optimizable = set(R.optimizable_metrics(NAMES, per_case=True))
    assert optimizable <= R.logged_metrics(NAMES, per_case=True) and "val/ECE" not in optimizable


def test_make_compare_recomputes_the_registry_scores_with_their_direction():
    assert set(R.COMPARED) | {"mIoU", "IoU"} == set(SCORES)
    assert {name: R.BY_NAME[name].per_image for name in R.COMPARED} == {name: SCORES[name][0] for name in R.COMPARED}
    assert set(R.LOWER_IS_BETTER) & set(R.COMPARED) == {"ECE", "NLL"}
    # mIoU from per-image sums: classes with an empty union are left out of the mean
    sums = {"iou_tp": R.np.array([[2.0, 0.0, 1.0]]), "iou_union": R.np.array([[4.0, 0.0, 4.0]])}
    assert R.BY_NAME["mIoU"].recompute(sums)[0] == pytest.approx((0.5 + 0.25) / 2)


def test_a_callback_may_monitor_any_logged_metric_the_registry_knows(make_cfg):
    early = "+callbacks.early_stop._target_=lightning.pytorch.callbacks.EarlyStopping"
    check_config(make_cfg([early, "+callbacks.early_stop.monitor=val/ECE"]))  # refused before the registry
    check_config(make_cfg([early, "+callbacks.early_stop.monitor=val/small_recall/pole", "metrics=study"]))
    with pytest.raises(ConfigError, match=r"monitor='val/small_recall/pole' names no logged metric"):
        check_config(make_cfg([early, "+callbacks.early_stop.monitor=val/small_recall/pole"]))  # switched off
    with pytest.raises(
        ConfigError, match=r"callbacks\.early_stop\.monitor='val/case_HD95/road' names no logged metric"
    ):
        check_config(make_cfg([early, "+callbacks.early_stop.monitor=val/case_HD95/road"]))  # not per-case data
