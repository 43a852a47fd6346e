"""Train a segmentation model: ``python -m segloss.train [experiment=NAME] [overrides…]``.

Composes ``configs/train.yaml``; writes the run directory (resolved config, checkpoints, CSV metrics,
offline W&B run, prediction grids) and prints the per-class table of the best epoch by
``optimized_metric``, whose value ``main`` returns (what a sweeper optimises).
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from segloss.checks import check_config
from segloss.utils.config import CONFIG_DIR, report_user_errors, set_environment
from segloss.utils.markers import FAILED

if TYPE_CHECKING:
    import lightning.pytorch as L

    from segloss.utils.run_dir import RunDirectory

set_environment()


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def train(cfg: DictConfig) -> dict:
    """Run one training described by ``cfg``; returns the best validation results, the best value of the
    optimised metric and the best checkpoint's path.

    Every process of a multi-process run executes this; only rank 0 prints and writes the run
    directory (config, checkpoints, W&B run, tables), which all ranks share.
    """
    check_config(cfg)  # types, values and metric names, before Lightning is imported: a mistake costs ~2 s
    from lightning.pytorch.utilities import rank_zero_only

    from segloss.utils.cluster import launch_rank
    from segloss.utils.run_dir import RunDirectory, completed_config

    rank_zero_only.rank = launch_rank()  # known from the launcher's variables before the Trainer exists
    run = RunDirectory.open(cfg)  # one training per folder, resume, no overwriting
    try:
        cfg = completed_config(cfg, run)  # ckpt_path, the loss family's tag, the W&B run a resume continues
        run.write_config(cfg)  # printed, and config.yaml
        return _train_in(cfg, run)
    finally:
        run.release()


def _train_in(cfg: DictConfig, run: RunDirectory) -> dict:
    import lightning.pytorch as L
    from lightning.pytorch.trainer.states import TrainerStatus

    from segloss.build import build_module, build_trainer
    from segloss.callbacks import StoppedBySignal
    from segloss.metrics.per_image import save_per_image
    from segloss.utils.config import instantiate
    from segloss.utils.environment import record_environment
    from segloss.utils.rich_output import print_results
    from segloss.utils.run_dir import write_completed
    from segloss.utils.tracking import finish_wandb, start_tracking

    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data, "data")
    datamodule.verify()  # a missing or malformed dataset stops here, before any model is built
    module = build_module(cfg, datamodule=datamodule)
    run.check_fits(module)
    loggers = start_tracking(cfg, run.path, run.resumed_step)
    trainer = build_trainer(cfg, loggers, run_dir=run.path, multirun=is_multirun())
    datamodule.check_world_size(trainer.world_size)
    if trainer.is_global_zero:
        record_environment(run.path, trainer)  # versions, machine, command: what make report shows

    try:  # weights_only: a resumed checkpoint is data, never code (segloss.utils.checkpoints)
        trainer.fit(module, datamodule=datamodule, ckpt_path=run.ckpt_path, weights_only=True)
    except StoppedBySignal as stop:  # last.ckpt is saved: exit as the signal asked
        raise SystemExit(stop.exit_code) from None
    finally:
        finish_wandb()

    best = module.best.results or module.last_results.get("val")
    if best is not None and "per_image" in best and trainer.is_global_zero:  # what make compare resamples
        save_per_image(run.path / "per_image_val.npz", best["per_image"], module.class_names, module.best.metric,
                       module.best.value)  # fmt: skip
    checkpoint = trainer.checkpoint_callback
    best_path = checkpoint.best_model_path if checkpoint is not None else ""
    if best is not None and trainer.is_global_zero:
        title = f"val — best epoch by {module.best.metric} ({Path(best_path).name or 'no checkpoint'})"
        print_results(title, module.class_names, best)
    if module.nonfinite.skipped and trainer.is_global_zero:  # a skipped batch is never silent
        print(f"segloss: {module.nonfinite.skipped} training batch(es) had a non-finite loss and were skipped "
              "(model.nonfinite=skip; logged as train/skipped_batches)", file=sys.stderr)  # fmt: skip
    finished = trainer.state.status == TrainerStatus.FINISHED
    if trainer.is_global_zero and finished:  # the training is finished (a failing test after it does not undo that)
        write_completed(run.path, completion_record(cfg, trainer, module))
    tested = (
        test_best(trainer, module, datamodule, best_path, run.path)
        if cfg.get("test_after_training") and finished
        else None
    )
    return {
        "test_results": tested,
        "results": best,
        "best_value": module.best.value,
        "best_ckpt": best_path,
        "output_dir": str(run.path),
        "trainer": trainer,
    }


def test_best(trainer: L.Trainer, module, datamodule, best_path: str, run_dir: Path) -> dict | None:
    """``test_after_training=true`` (lightning-hydra-template's ``test: True``): the best checkpoint scored on the
    test split into the run directory (``results_test.json``, ``per_image_test.npz``) and printed; its results.
    A training that saved no best checkpoint (it never validated) is said and not tested."""
    from lightning.pytorch.utilities import rank_zero_only

    from segloss.metrics.per_image import save_per_image
    from segloss.metrics.results import save_results
    from segloss.utils.rich_output import print_results

    if not best_path:
        rank_zero_only(print)("segloss: test_after_training: no best checkpoint was saved, nothing to test")
        return None
    trainer.test(module, datamodule=datamodule, ckpt_path=best_path, weights_only=True, verbose=False)
    results = dict(module.last_results["test"])
    if trainer.is_global_zero:
        print_results(f"test — best checkpoint ({Path(best_path).name})", module.class_names, results)
        per_image = results.pop("per_image", None)
        save_results(results, module.class_names, run_dir / "results_test.json")
        if per_image is not None:
            save_per_image(run_dir / "per_image_test.npz", per_image, module.class_names, "test/mIoU", None)
    return results


def completion_record(cfg: DictConfig, trainer: L.Trainer, module) -> dict:
    """What ``COMPLETED`` says of a finished training: epochs run and planned (``max_epochs``; -1 or None when
    the run is bounded by steps), optimizer steps, whether it stopped before its planned end (early
    stopping), the batches ``model.nonfinite=skip`` dropped, and the best value of the optimised metric (None
    when it never validated)."""
    planned = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else None
    value = module.best.value
    return {
        "epochs": int(trainer.current_epoch),
        "planned_epochs": planned,
        "global_step": int(trainer.global_step),
        "stopped_early": planned is not None and trainer.current_epoch < planned,
        "skipped_batches": int(module.nonfinite.skipped),
        "metric": str(cfg.get("optimized_metric", "val/mIoU")),
        "best_value": None if value is None else float(value),
    }


def train_sweep_job(cfg: DictConfig) -> dict | None:
    """One job of a multirun (``make sweep``): a failure is recorded in ``<job dir>/FAILED`` (the
    traceback) and reported, and the sweep goes on with the next job."""
    try:
        return train(cfg)
    except Exception:  # a sweep must survive any one job
        output_dir = Path(cfg.paths.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / FAILED).write_text(traceback.format_exc())
        print(f"segloss: job {output_dir.name} failed; traceback in {output_dir / FAILED}", file=sys.stderr)
        from segloss.utils.tracking import finish_wandb

        finish_wandb()
        return None


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """The best value of ``optimized_metric`` (None when the run failed or never validated)."""
    if is_multirun():
        out = train_sweep_job(cfg)
    else:
        with report_user_errors():
            out = train(cfg)
    return out["best_value"] if out else None


if __name__ == "__main__":
    main()
