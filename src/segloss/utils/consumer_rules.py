"""The rules of the config values that segloss's constructors consume, in a module without torch or Lightning.

Each table is one consumer's ``RULES``: ``SegmentationDataModule.RULES is DATAMODULE``,
``SegmentationModule.RULES is MODULE``, ``NonFinitePolicy.RULES is NONFINITE``, ``QualityMetrics.RULES is
QUALITY``, ``EvaluationMetrics.RULES is EVALUATION``, ``DenseCRF.RULES is CRF``, and the training transform
applies :data:`TRAIN_TRANSFORM`. The constructor applies its table (:func:`segloss.utils.rules.require_all`);
:func:`segloss.checks.consumer_rules` reads the same objects to report every problem before anything is
built. The tables live here rather than in the consumers' modules so that reading them imports neither
Lightning nor torchmetrics: a command with a config mistake stops in about two seconds instead of paying
the ~4 s those imports take on a 2-core CPU first.
"""

from __future__ import annotations

from collections.abc import Sequence

from segloss.utils.rules import (
    Rule,
    bool_rule,
    int_at_least,
    is_bool,
    is_int,
    number_above,
    number_between,
    one_of,
    size_pair,
)

# segloss.data.datamodule.SegmentationDataModule
DATAMODULE: dict[str, Rule] = {
    "batch_size": Rule("data.batch_size", int_at_least(1), "a positive integer (the global batch)",
                       "data.batch_size=8"),
    "val_batch_size": Rule("data.val_batch_size", int_at_least(1, allow_none=True), "a positive integer or null",
                           "data.val_batch_size=2"),
    "num_workers": Rule("data.num_workers", int_at_least(0), "an integer ≥ 0", "data.num_workers=4"),
    "num_classes": Rule("data.num_classes", int_at_least(1), "a positive integer", "data.num_classes=19"),
    "ignore_index": Rule("data.ignore_index", is_int, "an integer outside [0, num_classes)",
                         "data.ignore_index=255"),
    "class_names": Rule("data.class_names", lambda v: isinstance(v, Sequence) and not isinstance(v, str)
                        and all(isinstance(x, str) for x in v), "a list of class names",
                        "data.class_names=[background,spleen]"),
    "normalize_on_device": bool_rule("data.normalize_on_device", True),
    "augment_on_device": bool_rule("data.augment_on_device", True),
}  # fmt: skip

# segloss.data.transforms.train_transform
TRAIN_TRANSFORM: dict[str, Rule] = {
    "crop_size": Rule("data.train_transform.crop_size", size_pair, "[height, width] in pixels",
                      "data.train_transform.crop_size=[512,1024]"),
    "base_size": Rule("data.train_transform.base_size", size_pair, "[height, width] in pixels",
                      "data.train_transform.base_size=[1024,2048]"),
}  # fmt: skip

# segloss.models.module.SegmentationModule
MODULE: dict[str, Rule] = {
    "channels_last": bool_rule("model.channels_last", True),
    "compile": bool_rule("model.compile", False),
    "train_metrics": bool_rule("model.train_metrics", True),
    "binary_threshold": Rule("model.binary_threshold", number_between(0, 1), "a probability in (0, 1)",
                             "model.binary_threshold=0.5"),
}  # fmt: skip

# segloss.models.nonfinite.NonFinitePolicy (model.nonfinite*)
NONFINITE_MODES = ("raise", "skip", "ignore")
NONFINITE: dict[str, Rule] = {
    "mode": Rule("model.nonfinite", one_of(*NONFINITE_MODES), "raise, skip or ignore", "model.nonfinite=raise"),
    "defer": Rule("model.nonfinite_defer", lambda v: v is None or is_bool(v), "true, false or null",
                  "model.nonfinite_defer=null"),
    "max_skips": Rule("model.nonfinite_max_skips", int_at_least(1), "a whole number ≥ 1",
                      "model.nonfinite_max_skips=20"),
}  # fmt: skip

# segloss.metrics.quality.QualityMetrics
QUALITY: dict[str, Rule] = {
    "boundary_iou": bool_rule("metrics.boundary_iou", True),
    "boundary_dilation": Rule("metrics.boundary_dilation", number_between(0, 1),
                              "a fraction of the image diagonal in (0, 1)", "metrics.boundary_dilation=0.02"),
    "calibration": bool_rule("metrics.calibration", True),
    "small_objects": bool_rule("metrics.small_objects", False),
    "small_object_area": Rule("metrics.small_object_area", int_at_least(1), "a positive number of pixels",
                              "metrics.small_object_area=1024"),
}  # fmt: skip

# segloss.models.evaluation.EvaluationMetrics
EVALUATION: dict[str, Rule] = {"surface_distance": bool_rule("metrics.surface_distance", False)}

# segloss.models.crf.DenseCRF (inference.crf.*)
CRF_NORMALIZATIONS = ("pixel", "none")
CRF: dict[str, Rule] = {
    "iterations": Rule("inference.crf.iterations", int_at_least(1), "a whole number ≥ 1 of mean-field steps",
                       "inference.crf.iterations=10"),
    "w1": Rule("inference.crf.w1", number_above(0, inclusive=True), "a weight ≥ 0", "inference.crf.w1=4"),
    "theta_alpha": Rule("inference.crf.theta_alpha", number_above(0), "a length in pixels > 0",
                        "inference.crf.theta_alpha=67"),
    "theta_beta": Rule("inference.crf.theta_beta", number_above(0), "a colour distance > 0 (0–255 scale)",
                       "inference.crf.theta_beta=3"),
    "w2": Rule("inference.crf.w2", number_above(0, inclusive=True), "a weight ≥ 0", "inference.crf.w2=3"),
    "theta_gamma": Rule("inference.crf.theta_gamma", number_above(0), "a length in pixels > 0",
                        "inference.crf.theta_gamma=1"),
    "radius": Rule("inference.crf.radius", int_at_least(1), "a whole number ≥ 1 of grid cells",
                   "inference.crf.radius=8"),
    "downsample": Rule("inference.crf.downsample", int_at_least(1), "a whole factor ≥ 1 (1: full resolution)",
                       "inference.crf.downsample=4"),
    "normalize": Rule("inference.crf.normalize", one_of(*CRF_NORMALIZATIONS), f"one of {CRF_NORMALIZATIONS}",
                      "inference.crf.normalize=pixel"),
}  # fmt: skip
