"""Evaluate a checkpoint: ``python -m segloss.eval ckpt_path=PATH [experiment=NAME] [split=val|test]``.

``save_predictions=true`` also writes every prediction under ``predictions_dir`` in the dataset's
result format (Cityscapes: labelId PNGs for the official evaluation / benchmark server), and
``inference.mode=slide`` evaluates with a sliding window. A split whose labels are withheld (the Cityscapes
``split=test``: every pixel is ignored) is still predicted and exported, and said to have no metric.

The net is built from the config (the same experiment as training) and the checkpoint's weights
are loaded with ``torch.load(weights_only=True)``: a checkpoint is data, never code.
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
import rich
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from segloss.checks import check_config
from segloss.errors import ConfigError
from segloss.utils.config import CONFIG_DIR, report_user_errors, set_environment
from segloss.utils.ranks import launch_rank
from segloss.utils.rich_output import config_tree

set_environment()


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.split``; prints and returns the per-class results and the
    throughput (``frames``, ``seconds``, ``frames_per_s``: the whole split, data loading included) and
    writes them to ``<output_dir>/results_<split>.json`` (with the confusion matrix). The Trainer runs
    under the resolved ``trainer.precision`` (autocast for the mixed precisions).

    Runs on several processes too (``trainer=ddp_cpu|ddp``): each image is scored exactly once and the
    results equal a single-process evaluation; only rank 0 prints and writes.
    """
    if not cfg.get("ckpt_path"):
        raise ConfigError("no checkpoint given: run `make eval CKPT=path/to/file.ckpt` (ckpt_path=…)")
    split = cfg.get("split", "val")
    if split not in ("val", "test"):
        raise ConfigError(f"split={split!r}: choose val or test")
    check_config(cfg)  # before Lightning is imported: a mistake costs ~2 s
    if cfg.get("print_config", True) and launch_rank() == 0:
        rich.print(config_tree(cfg))
    from lightning.pytorch.utilities import rank_zero_only

    from segloss.build import build_module, build_trainer
    from segloss.callbacks import PredictionWriter
    from segloss.metrics.per_image import save_per_image
    from segloss.metrics.results import save_results
    from segloss.utils.checkpoints import load_weights
    from segloss.utils.config import instantiate, instantiate_group
    from segloss.utils.rich_output import print_results

    rank_zero_only.rank = launch_rank()
    datamodule = instantiate(cfg.data, "data")
    datamodule.prepare_data()
    module = build_module(cfg, with_optimizer=False, datamodule=datamodule)
    load_weights(module, cfg.ckpt_path)
    writer = [PredictionWriter(cfg.predictions_dir)] if cfg.get("save_predictions") else []
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    trainer = build_trainer(cfg, instantiate_group(cfg.get("logger"), "logger"), writer, multirun=multirun)
    datamodule.check_world_size(trainer.world_size, train=False)
    run = trainer.validate if split == "val" else trainer.test
    start = time.perf_counter()
    run(module, datamodule=datamodule, verbose=False)
    seconds = time.perf_counter() - start  # loading, inference and metrics of the whole split, all ranks
    frames = len(datamodule.datasets[split])
    results = {**module.last_results[split], "frames": frames, "seconds": seconds, "frames_per_s": frames / seconds}
    if trainer.is_global_zero:
        print_results(f"{split} — {Path(cfg.ckpt_path).name}", module.class_names, results)
        rich.print(f"{frames} frames in {seconds:.1f} s: {frames / seconds:.2f} frames/s ({module.inference}, "
                   f"{trainer.precision}, {trainer.world_size} process(es))")  # fmt: skip
        out = Path(cfg.paths.output_dir)
        per_image = results.pop("per_image", None)
        save_results(results, module.class_names, out / f"results_{split}.json")
        if per_image is not None:  # each image's TP/FP/FN (segloss.metrics.per_image)
            save_per_image(out / f"per_image_{split}.npz", per_image, module.class_names, f"{split}/mIoU", None)
        if "confmat" in results and int(results["confmat"].sum()) == 0:
            rich.print(
                f"[yellow]the {split} split has no labelled pixel (its labels are withheld, as for the Cityscapes "
                "test split): no metric is computed (all NaN); only the predictions count"
            )
        if cfg.get("save_predictions"):
            rich.print(f"predictions written to {cfg.predictions_dir}")
    return results


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def main(cfg: DictConfig) -> float:
    """Evaluate, and return the value of the run's ``optimized_metric`` (``val/mIoU`` unless the experiment
    names another, e.g. ``val/case_mDice``) on the evaluated split, as a sweeper reads it; NaN where the
    split has no labels."""
    from segloss.models.best import metric_value

    with report_user_errors():
        results = evaluate(cfg)
        value = metric_value(results, cfg.get("optimized_metric") or "val/mIoU", list(cfg.data.class_names))
        return float("nan") if value is None else float(value)


if __name__ == "__main__":
    main()
