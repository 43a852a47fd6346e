"""``SegmentationModule``: the LightningModule that joins a net, a loss and the metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import lightning.pytorch as L
import torch
from torch import Tensor, nn
from torchmetrics import MaxMetric

from segloss.case_metrics import CaseDice
from segloss.errors import ConfigError
from segloss.fault_tolerance import NonFiniteLossError, nonfinite_message
from segloss.losses import CompoundLoss
from segloss.metrics import SegmentationMetrics
from segloss.models.inference import Inference
from segloss.models.step_hooks import StepHooks


class SegmentationModule(StepHooks, L.LightningModule):
    """Train/evaluate ``net`` (images → logits N×C×H×W) with ``loss`` (logits, mask → scalar).

    Logs ``train/loss_step``/``train/loss_epoch`` (and ``train/loss/<term>_step|_epoch`` for a
    :class:`CompoundLoss`), ``val/loss``,
    ``val/mIoU``, ``val/mDice``, ``val/acc``, ``val/IoU/<class>``, ``val/Dice/<class>`` and
    ``val/mIoU_best`` (``test/…`` likewise). mIoU is the nan-mean of the per-class IoU accumulated over
    the whole split, over the classes that occur in its ground truth or predictions (the official
    Cityscapes convention; see :mod:`segloss.metrics`). Each stage has its own metric objects.
    ``last_results[stage]`` holds the epoch's results; for val/test also ``"confmat"``, the split's
    confusion matrix (rows: ground truth, columns: prediction; summed over ranks). The best val mIoU and its results are
    kept in checkpoints, so a resumed training goes on with them.

    Batches whose items carry a ``"case"`` (2D slices of 3D volumes, e.g. the MSD loader) are also
    scored per case: the slices of a case are stacked back and ``val/case_mDice`` and
    ``val/case_Dice/<class>`` are the per-case volume Dice averaged over cases
    (:class:`segloss.case_metrics.CaseDice`).

    Under DDP the val/test metrics are exact: each image is scored once (un-padded shards, see
    :class:`segloss.data.sampling.ShardSampler`), metric states are summed over ranks at compute, and
    ``val/loss`` is the batch-size-weighted mean over all ranks' batches. ``train/loss`` is rank 0's.

    Validation and test predictions come from ``inference`` (whole image or sliding window, see
    :mod:`segloss.models.inference`); ``validation_step``/``test_step`` return ``{"preds": N×H×W}`` for
    callbacks such as :class:`segloss.callbacks.PredictionWriter`.

    Args:
        net: the segmentation network.
        loss: the loss module (see :mod:`segloss.losses`).
        optimizer: ``optimizer(params=…)`` factory (a Hydra ``_partial_``); None for evaluation only.
        scheduler: ``scheduler(optimizer=…, total_steps=…)`` factory stepped every optimizer step, or None.
        num_classes, ignore_index, class_names: the label space.
        channels_last: keep the net's weights and inputs in channels-last (NHWC) memory format; on
            CPU (oneDNN) and on GPUs with tensor cores this runs convolutions faster.
        inference: an :class:`Inference` or its keyword dict (``{"mode": "slide", "crop_size": …}``);
            None = whole images.
        input_mean, input_std: the normalisation applied on the device to uint8 image batches
            (``data.normalize_on_device``); float batches arrive normalised and pass unchanged.
        compile: ``torch.compile`` the net in place (``model.compile``; pays off on GPUs for long runs).
        train_metrics: also accumulate and log ``train/mIoU``, ``train/acc`` (an argmax and a count per
            step; ``model.train_metrics=false`` skips them).
        nonfinite: what a NaN/Inf training loss does: ``"raise"`` stops with a
            :class:`segloss.fault_tolerance.NonFiniteLossError` (step, images, terms); ``"skip"`` drops
            the batch (no update; BatchNorm statistics restored from a copy taken before each step)
            and counts it in ``train/skipped_batches``; ``"ignore"`` does not
            check. The check reads one number from the device per step (the only per-step host sync).
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer] | None,
        scheduler: Callable | None = None,
        num_classes: int = 19,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        channels_last: bool = False,
        inference: Inference | dict | None = None,
        input_mean: Sequence[float] = (0.485, 0.456, 0.406),
        input_std: Sequence[float] = (0.229, 0.224, 0.225),
        compile: bool = False,
        train_metrics: bool = True,
        nonfinite: str = "raise",
    ) -> None:
        super().__init__()
        class_names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class_names given for num_classes={num_classes}")
        # Only plain values go into the checkpoint, so it loads with torch.load(weights_only=True).
        self.save_hyperparameters(
            {"num_classes": num_classes, "ignore_index": ignore_index, "class_names": class_names}
        )
        self.channels_last = channels_last
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net
        if compile:
            self.net.compile()  # in place: the state_dict keys (and checkpoints) stay the same
        # uint8 batches (data.normalize_on_device) are normalised here: x·1/(255σ) − μ/σ per channel.
        mean, std = (
            torch.tensor(list(input_mean), dtype=torch.float64),
            torch.tensor(list(input_std), dtype=torch.float64),
        )
        self.register_buffer("input_scale", (1 / (255 * std)).float().view(1, -1, 1, 1), persistent=False)
        self.register_buffer("input_shift", (-mean / std).float().view(1, -1, 1, 1), persistent=False)
        self.loss = loss
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.class_names, self.num_classes = class_names, num_classes
        self.track_train_metrics = train_metrics
        if nonfinite not in ("raise", "skip", "ignore"):
            raise ValueError(f"nonfinite={nonfinite!r}: choose raise, skip or ignore")
        self.nonfinite, self.skipped_batches = nonfinite, 0
        self.train_metrics = SegmentationMetrics(num_classes, ignore_index)
        self.val_metrics = SegmentationMetrics(num_classes, ignore_index)
        self.test_metrics = SegmentationMetrics(num_classes, ignore_index)
        self.val_case = CaseDice(num_classes, ignore_index)
        self.test_case = CaseDice(num_classes, ignore_index)
        self.inference = inference if isinstance(inference, Inference) else Inference(**(inference or {}))
        self.val_miou_best = MaxMetric()
        self.best_results: dict[str, Tensor] | None = None  # per-class results of the best val epoch
        self._resumed_best: dict | None = None  # the best of the checkpoint a training resumes from
        self.last_results: dict[str, dict[str, Tensor]] = {}
        self._train_loss_sums: dict[str, Tensor] = {}  # this epoch's Σ loss·batch size (see _log_train_losses)
        self._train_loss_count = 0

    def stage_metrics(self, stage: str) -> SegmentationMetrics:
        return getattr(self, f"{stage}_metrics")

    def forward(self, image: Tensor) -> Tensor:
        if image.dtype == torch.uint8:
            image = torch.addcmul(self.input_shift, image.float(), self.input_scale)
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return self.net(image)

    def model_step(self, batch: dict) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Forward and loss: ``(loss, logits, terms)``; ``terms`` holds a compound loss's parts."""
        logits = self._check_channels(self(batch["image"]))
        if isinstance(self.loss, CompoundLoss):
            loss, terms = self.loss(logits, batch["mask"], return_terms=True)
            return loss, logits, terms
        return self.loss(logits, batch["mask"]), logits, {}

    def _check_channels(self, logits: Tensor) -> Tensor:
        if logits.shape[1] != self.num_classes:  # a shape, known without a sync
            raise ConfigError(
                f"the net outputs {logits.shape[1]} channels but data.num_classes={self.num_classes}; "
                "set model.net.num_classes=${data.num_classes} (or the dataset's class count)"
            )
        return logits

    def _log_losses(self, stage: str, loss: Tensor, terms: dict[str, Tensor], batch_size: int) -> None:
        """Evaluation losses: epoch means, batch-size weighted and averaged over ranks at epoch end."""
        opts = {"on_step": False, "on_epoch": True, "sync_dist": True, "batch_size": batch_size}
        self.log(f"{stage}/loss", loss, prog_bar=True, **opts)
        for name, value in terms.items():
            self.log(f"{stage}/loss/{name}", value, **opts)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor | None:
        buffers = self._keep_buffers() if self.nonfinite == "skip" else None
        loss, logits, terms = self.model_step(batch)
        if self.nonfinite != "ignore" and self._loss_broke(loss):
            if self.nonfinite == "raise":
                raise NonFiniteLossError(nonfinite_message(self, batch, batch_idx, loss, logits, terms))
            torch._foreach_copy_(buffers, self._kept_buffers)  # the forward put NaN into BatchNorm's statistics
            self.skipped_batches += 1
            self.log("train/skipped_batches", float(self.skipped_batches))
            return None  # Lightning skips backward and the optimizer step
        self._log_train_losses({"train/loss": loss, **{f"train/loss/{k}": v for k, v in terms.items()}}, len(logits))
        if self.track_train_metrics:
            self.train_metrics.update(logits.detach().argmax(1), batch["mask"])
        return loss

    def _eval_step(self, stage: str, batch: dict) -> dict[str, Tensor]:
        logits = self._check_channels(self.inference(self, batch["image"]))
        if isinstance(self.loss, CompoundLoss):
            loss, terms = self.loss(logits, batch["mask"], return_terms=True)
        else:
            loss, terms = self.loss(logits, batch["mask"]), {}
        self._log_losses(stage, loss, terms, len(logits))
        preds = logits.argmax(1)
        self.stage_metrics(stage).update(preds, batch["mask"])
        if "case" in batch:
            getattr(self, f"{stage}_case").update(preds, batch["mask"], batch["case"])
        return {"preds": preds}

    def validation_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        return self._eval_step("val", batch)

    def test_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        return self._eval_step("test", batch)

    def _log_epoch(self, stage: str) -> dict[str, Tensor]:
        metrics = self.stage_metrics(stage)
        results = metrics.compute()  # one all-reduce of the confusion matrix under DDP
        if stage == "train":
            results.pop("confmat")
        metrics.reset()
        # The values are already the same on every rank (metric states summed at compute);
        # sync_dist averages identical numbers, which is exact, and keeps Lightning from warning.
        log = partial(self.log, sync_dist=True)
        log(f"{stage}/mIoU", results["mIoU"], prog_bar=stage != "train")
        log(f"{stage}/mDice", results["mDice"])
        log(f"{stage}/acc", results["acc"])
        if stage != "train":
            for name, iou, dice in zip(self.class_names, results["IoU"], results["Dice"]):
                log(f"{stage}/IoU/{name}", iou)
                log(f"{stage}/Dice/{name}", dice)
            case_metric = getattr(self, f"{stage}_case")
            if case_metric.update_called:
                case = case_metric.compute()
                case_metric.reset()
                results = {**results, "case_Dice": case["Dice"], "case_mDice": case["mDice"]}
                log(f"{stage}/case_mDice", case["mDice"], prog_bar=True)
                for name, value in zip(self.class_names, case["Dice"]):
                    log(f"{stage}/case_Dice/{name}", value)
        self.last_results[stage] = results
        return results

    def on_train_start(self) -> None:
        # The sanity-check validation must not count towards the best score; a resumed training
        # starts from the best of its checkpoint.
        self.val_metrics.reset()
        self.val_miou_best.reset()
        self.best_results = None
        if self._resumed_best is not None:
            self.val_miou_best.update(torch.tensor(self._resumed_best["mIoU"]))
            self.best_results = self._resumed_best.get("results")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.val_miou_best.update_called:  # the same on every rank: the results are synced
            checkpoint["val_best"] = {"mIoU": float(self.val_miou_best.max_value), "results": self.best_results}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._resumed_best = checkpoint.get("val_best")

    def on_train_epoch_end(self) -> None:
        self._log_train_loss_epoch()
        if self.track_train_metrics:
            self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        results = self._log_epoch("val")
        if self.trainer.sanity_checking:
            return
        previous = self.val_miou_best.compute() if self.val_miou_best.update_called else None
        self.val_miou_best.update(results["mIoU"])
        if previous is None or results["mIoU"] > previous:
            self.best_results = {k: v.detach().cpu() for k, v in results.items()}
        self.log("val/mIoU_best", self.val_miou_best.compute(), prog_bar=True, sync_dist=True)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise ValueError("SegmentationModule was built without an optimizer; give optimizer=… to train")
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(
            optimizer=optimizer, total_steps=int(self.trainer.estimated_stepping_batches)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
