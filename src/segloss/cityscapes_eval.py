"""The official Cityscapes pixel-level evaluation, runnable in segloss's environment.

``python -m segloss.cityscapes_eval PREDICTIONS --dataset ROOT [--export-dir DIR]`` runs cityscapesscripts'
``evalPixelLevelSemanticLabeling`` — class and category IoU and the instance-level iIoU — on the labelId PNGs
that ``make eval … ARGS="save_predictions=true split=val"`` wrote (``<run>/predictions/val``), against
``ROOT/gtFine/val/<city>/*_gtFine_labelIds.png`` and ``*_gtFine_instanceIds.png``: real Cityscapes or the
embedded synthetic_city, which writes both. The official script is configured by three environment variables,
set here from the arguments (an argument left out falls back to the variable already set):

* ``CITYSCAPES_DATASET``: the dataset root, whose ``gtFine/val`` is the ground truth;
* ``CITYSCAPES_RESULTS``: the predictions folder, searched recursively for ``<city>_<seq>_<frame>*.png``;
* ``CITYSCAPES_EXPORT_DIR``: where ``resultPixelLevelSemanticLabeling.json`` goes (default: the predictions
  folder's parent, so that nothing is written into the dataset).

The official module then runs unchanged, as its ``csEvalPixelLevelSemanticLabeling`` entry point runs it (import,
then ``main()`` without arguments; a fresh copy each time, since it reads the variables when imported), after
checks that turn its usual failures (no ground truth, no instance ids, a frame without prediction) into one line
naming the fix. One compatibility shim: cityscapesscripts 2.3.0 calls ``np.in1d``, which numpy 2.4 removed
(deprecated since numpy 2.0 in favour of ``np.isin``). Only where numpy lacks it, and only during the run,
``np.in1d(a, b, …)`` is provided as ``np.isin(np.ravel(a), b, …)``, which is ``in1d``'s documented meaning.

Why a wrapper rather than a pinned evaluator environment (a second venv with numpy < 2.4): the incompatibility is
one removed name with an exact replacement, so the shim keeps the official code unchanged and leaves one
environment to install, update and test; ``tests/test_cityscapes_eval.py`` runs this end to end and compares
every class with segloss's own metric. A second environment would mean a second installation (network, disk),
a second numpy that drifts from the one segloss evaluates with, and a path to keep in the docs. Where numpy still
has ``np.in1d`` (< 2.4) the shim does nothing, and it becomes dead code once cityscapesscripts stops calling it.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from segloss.errors import ConfigError

MODULE = "cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling"
RESULT_FILE = "resultPixelLevelSemanticLabeling.json"
LABEL_SUFFIX, INSTANCE_SUFFIX = "_gtFine_labelIds.png", "_gtFine_instanceIds.png"
EXPORT_HINT = 'make eval CKPT=… EXP=… ARGS="save_predictions=true split=val" (it writes <run>/predictions/val)'


def official_evaluation(
    predictions: str | Path | None = None, dataset: str | Path | None = None, export_dir: str | Path | None = None
) -> dict:
    """Run the official pixel-level evaluation and return its result file (``classScores``,
    ``classInstScores``, ``averageScoreClasses``, ``averageScoreInstClasses``, … keyed by class name; NaN where
    a class is absent). ``None`` arguments fall back to the environment variables of the same meaning."""
    if importlib.util.find_spec("cityscapesscripts") is None:
        raise ConfigError(
            "cityscapesscripts (the official evaluation) is not installed: pip install 'segloss[cityscapes]' "
            "(or pip install cityscapesscripts; make install has it)"
        )
    predictions, dataset, export = resolve_paths(predictions, dataset, export_dir)
    ground_truth = _check_ground_truth(dataset)
    _check_predictions(predictions, ground_truth)
    export.mkdir(parents=True, exist_ok=True)
    (export / RESULT_FILE).unlink(missing_ok=True)  # no stale result if the run stops
    env = {"CITYSCAPES_DATASET": dataset, "CITYSCAPES_RESULTS": predictions, "CITYSCAPES_EXPORT_DIR": export}
    with _environment({key: str(value.resolve()) for key, value in env.items()}), _in1d_shim(), _argv([MODULE]):
        try:  # as the console script: import the module (a fresh copy: it reads the variables then), call main()
            spec = importlib.util.find_spec(MODULE)
            official = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(official)
            official.main()
        except SystemExit as stop:  # the official printError: its "ERROR: …" line is on stdout
            if stop.code not in (None, 0):
                message = f"the official evaluation stopped (see its ERROR line above) on {predictions}"
                raise ConfigError(message) from None
    return json.loads((export / RESULT_FILE).read_text())


def resolve_paths(
    predictions: str | Path | None, dataset: str | Path | None, export_dir: str | Path | None
) -> tuple[Path, Path, Path]:
    """``(predictions, dataset, export folder)`` from the arguments, else from the environment variables; the
    export folder defaults to the predictions folder's parent."""
    dataset = _given(dataset, "CITYSCAPES_DATASET", "--dataset ROOT (the folder holding gtFine/)")
    predictions = _given(predictions, "CITYSCAPES_RESULTS", "predictions folder")
    export = Path(export_dir or os.environ.get("CITYSCAPES_EXPORT_DIR") or predictions.parent).expanduser()
    return predictions, dataset, export


def _given(value: str | Path | None, variable: str, what: str) -> Path:
    value = value or os.environ.get(variable)
    if not value:
        raise ConfigError(f"no {what} given: pass it on the command line or set {variable}")
    return Path(value).expanduser()


def _check_ground_truth(dataset: Path) -> list[Path]:
    labels = sorted(dataset.glob(f"gtFine/val/*/*{LABEL_SUFFIX}"))
    if not labels:
        raise ConfigError(
            f"no ground truth under {dataset}: expected gtFine/val/<city>/*{LABEL_SUFFIX}; point --dataset "
            "(CITYSCAPES_DATASET) at the folder that holds gtFine/ (data/cityscapes or data/synthetic_city)"
        )
    missing = [p for p in labels if not p.with_name(p.name.replace(LABEL_SUFFIX, INSTANCE_SUFFIX)).is_file()]
    if missing:
        raise ConfigError(
            f"{len(missing)} of {len(labels)} ground-truth frames under {dataset} have no *{INSTANCE_SUFFIX} "
            f"(e.g. {missing[0].name}), which the official iIoU needs: unzip all of gtFine_trainvaltest.zip, or "
            f"for a synthetic_city made before these files existed run segloss-synthetic --root {dataset}"
        )
    return labels


def _check_predictions(predictions: Path, ground_truth: list[Path]) -> None:
    """Each ground-truth frame must match exactly one ``<city>_<seq>_<frame>*.png`` under ``predictions``."""
    if not predictions.is_dir():
        raise ConfigError(f"the predictions folder {predictions} does not exist: write it with {EXPORT_HINT}")
    names = [name for _, _, files in os.walk(predictions) for name in fnmatch.filter(files, "*.png")]
    counts = {p: len(fnmatch.filter(names, p.name[: -len(LABEL_SUFFIX)] + "*.png")) for p in ground_truth}
    missing = [p.name[: -len(LABEL_SUFFIX)] for p, n in counts.items() if n == 0]
    if missing:
        raise ConfigError(
            f"{len(missing)} of {len(ground_truth)} val frames have no prediction in {predictions} (e.g. "
            f"{missing[0]}.png): export the whole val split of this dataset with {EXPORT_HINT}"
        )
    repeated = [p.name[: -len(LABEL_SUFFIX)] for p, n in counts.items() if n > 1]
    if repeated:
        raise ConfigError(
            f"{len(repeated)} val frames have several predictions in {predictions} (e.g. {repeated[0]}*.png): "
            "point at one split's folder, e.g. <run>/predictions/val, not a folder holding several runs"
        )


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def _in1d_shim() -> Iterator[None]:
    """``np.in1d`` (removed in numpy 2.4) as ``np.isin`` of the flattened input, only while numpy lacks it."""
    if hasattr(np, "in1d"):
        yield
        return

    def in1d(ar1, ar2, assume_unique=False, invert=False, *, kind=None):
        return np.isin(np.ravel(ar1), ar2, assume_unique=assume_unique, invert=invert, kind=kind)

    np.in1d = in1d
    try:
        yield
    finally:
        del np.in1d


@contextmanager
def _argv(argv: list[str]) -> Iterator[None]:
    """The official ``main`` reads ``sys.argv``: no argument means "search the ground truth and predictions"."""
    saved, sys.argv = sys.argv, argv
    try:
        yield
    finally:
        sys.argv = saved


def main(argv: list[str] | None = None) -> dict:
    from segloss.utils.config import report_user_errors

    parser = argparse.ArgumentParser(prog="python -m segloss.cityscapes_eval", description=__doc__.split("\n")[0])
    parser.add_argument("predictions", nargs="?", help="the predictions folder (default: $CITYSCAPES_RESULTS)")
    parser.add_argument("--dataset", help="the folder holding gtFine/ (default: $CITYSCAPES_DATASET)")
    parser.add_argument(
        "--export-dir", help=f"where {RESULT_FILE} goes (default: $CITYSCAPES_EXPORT_DIR, else PREDICTIONS/..)"
    )
    args = parser.parse_args(argv)
    with report_user_errors():
        result = official_evaluation(args.predictions, args.dataset, args.export_dir)
        export = resolve_paths(args.predictions, args.dataset, args.export_dir)[2]
        print(
            f"official mIoU {result['averageScoreClasses']:.4f}, iIoU {result['averageScoreInstClasses']:.4f}; "
            f"every score in {export / RESULT_FILE}"
        )
    return result


if __name__ == "__main__":
    main()
