"""A split's results as a JSON file (``results_<split>.json``): written by ``make eval`` and, with
``test_after_training``, by ``make train`` for the best checkpoint on the test split."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch


def save_results(results: dict, class_names: list[str], path: Path) -> None:
    """The results as JSON: every tensor as a (nested) list of numbers, NaN as null."""

    def plain(value):
        value = value.tolist() if isinstance(value, torch.Tensor) else value
        if isinstance(value, list):
            return [plain(v) for v in value]
        return None if isinstance(value, float) and math.isnan(value) else value

    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"class_names": class_names, **{key: plain(value) for key, value in results.items()}}
    path.write_text(json.dumps(payload, indent=1))
