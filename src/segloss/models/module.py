"""``SegmentationModule``: the LightningModule that joins a net, a loss and the metrics."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import partial
from typing import ClassVar

import lightning.pytorch as L
import torch
from torch import Tensor, nn

from segloss.errors import ConfigError, DatasetFormatError, NonFiniteLossError
from segloss.losses import DeepSupervision, scheduled_weights, set_progress, wants_image
from segloss.metrics import ConfusionScores
from segloss.models.best import BestScore
from segloss.models.evaluation import EvaluationMetrics
from segloss.models.inference import Inference, to_classes
from segloss.models.nonfinite import NonFinitePolicy, non_finite_tensors
from segloss.utils import consumer_rules
from segloss.utils.label_space import check_class_names
from segloss.utils.lightning_adapter import attached_trainer, batches_started, logs_this_step
from segloss.utils.normalisation import IMAGENET_MEAN, IMAGENET_STD
from segloss.utils.regions import regions_from_config
from segloss.utils.rules import Rule, require_all
from segloss.utils.seeding import reseed_step


class SegmentationModule(L.LightningModule):
    """Train/evaluate ``net`` (images → logits N×C×H×W) with ``loss`` (logits, mask → scalar).

    Logs ``train/loss_step``/``train/loss_epoch`` (and ``train/loss/<term>_step|_epoch`` for every term the loss
    names and each auxiliary head: :mod:`segloss.losses.structure`), ``val/loss``, ``val/mIoU``, ``val/mDice``,
    ``val/acc``, ``val/mRecall``, ``val/IoU|Dice|recall/<class>``, the metrics switched on by ``metrics`` and
    ``<optimized_metric>_best`` (``test/…`` likewise; :mod:`segloss.models.evaluation`). mIoU is the nan-mean of the
    per-class IoU accumulated over the whole split, over the classes that occur in its ground truth or
    predictions (the official Cityscapes convention; see :mod:`segloss.metrics`). Each stage has its own
    metric objects. ``last_results[stage]`` holds the epoch's results; for val/test also ``"confmat"``, the
    split's confusion matrix (rows: ground truth, columns: prediction; summed over ranks) and ``"per_image"``,
    each image's per-class TP/FP/FN (:mod:`segloss.metrics.per_image`; what ``make compare`` resamples). ``best``
    (:class:`segloss.models.best.BestScore`) holds the best validation by ``optimized_metric`` and its
    results; it is kept in checkpoints, so a resumed training goes on with it.

    Batches whose items carry a ``"case"`` (2D slices of 3D volumes, e.g. the MSD loader) are also scored
    per case: ``val/case_mDice`` and ``val/case_Dice/<class>`` (:class:`segloss.metrics.CaseDice`), and with
    ``metrics["surface_distance"]`` by HD95/ASSD in mm (:mod:`segloss.metrics.surface`).

    Under DDP the val/test metrics are exact: each image is scored once (un-padded shards, see
    :class:`segloss.data.sampling.ShardSampler`), metric states are summed over ranks at compute, and
    ``val/loss`` is the batch-size-weighted mean over all ranks' batches. ``train/loss`` is rank 0's.
    Evaluation runs with rank 0's BatchNorm buffers (the checkpointed ones), broadcast once per validation.
    Evaluation predictions come from ``inference`` (whole image or sliding window,
    :mod:`segloss.models.inference`); ``validation_step``/``test_step`` return ``{"preds": N×H×W}`` for
    callbacks such as :class:`segloss.callbacks.PredictionWriter`.

    A run whose training masks hold no labelled pixel in the first epoch, or whose validation split holds
    none, stops with a :class:`segloss.errors.DatasetFormatError` instead of reporting an untrained net.

    Args:
        net: the segmentation network.
        loss: the loss module (see :mod:`segloss.losses`).
        optimizer: ``optimizer(params=…)`` factory (a Hydra ``_partial_``); None for evaluation only.
        scheduler: ``scheduler(optimizer=…, total_steps=…)`` factory stepped every optimizer step, or None.
        num_classes, ignore_index, class_names: the label space.
        channels_last: keep the net's weights and inputs in channels-last (NHWC) memory format; on
            CPU (oneDNN) and on GPUs with tensor cores this runs convolutions faster. 2D nets only: a net with
            5-D (volumetric) weights keeps the default layout whatever this says.
        inference: an :class:`Inference` or its keyword dict (``{"mode": "slide", "crop_size": …}``);
            None = whole images.
        input_mean, input_std: the normalisation of the data config, ``(x/255 − mean)/std``: applied on the
            device to uint8 image batches (``data.normalize_on_device``; float batches arrive normalised),
            and undone for pictures (:mod:`segloss.callbacks`).
        compile: ``torch.compile`` the net in place (``model.compile``; pays off on GPUs for long runs).
        train_metrics: also accumulate and log ``train/mIoU``, ``train/acc`` (an argmax and a count per
            step; ``model.train_metrics=false`` skips them).
        nonfinite: what a NaN/Inf training loss does: raise, skip or ignore (:mod:`segloss.models.nonfinite`).
        nonfinite_defer: read the ``raise`` check at logging steps and before checkpoints instead of every step
            (no per-step host sync); None = on accelerators only.
        nonfinite_max_skips: with ``skip``, stop after this many batches skipped in a row.
        optimized_metric: the validation score that picks the best epoch (:mod:`segloss.models.best`).
        binary_threshold: with one output channel (a sigmoid net for a 2-class label space: background and
            foreground), the probability above which a pixel is foreground (0.5; the logit's sign). Losses
            get the one-channel logits; metrics, predictions and pictures get the thresholded classes.
        metrics: the ``metrics`` config node: options of the val/test metrics besides IoU, Dice, accuracy and
            recall — Boundary IoU, ECE and NLL, small-object recall (:class:`segloss.metrics.quality.QualityMetrics`);
            logged as ``<stage>/mBIoU``, ``<stage>/BIoU/<class>``, ``<stage>/ECE``, ``<stage>/NLL``,
            ``<stage>/mSmallRecall``, ``<stage>/small_recall/<class>`` when on; ``surface_distance`` adds per-case
            HD95 and ASSD of volume data (``<stage>/case_mHD95``, ``<stage>/case_mASSD``, per class;
            :mod:`segloss.metrics.surface`).
        deep_supervision: the weights w_k of a net's auxiliary outputs, ``L(main) + Σ w_k·L(aux_k)``
            (:class:`segloss.losses.DeepSupervision`; ``model.aux.weights``); None: a net without them.
        regions: overlapping regions ``{name: [labels…]}`` in order (``data.regions``; BraTS's whole tumour,
            tumour core, enhancing tumour): the net has one sigmoid channel per region, the loss gets the multi-hot
            target N×R×S… (:meth:`segloss.utils.regions.Regions.to_multi_hot`), predictions are the label map
            written back in region order (a voxel takes the label of the last region firing at
            ``binary_threshold``), and validation also logs ``region_mDice``, ``region_Dice/<region>`` (and per
            case). None: one channel per class.

    Raises:
        ConfigError: an option breaks its rule in :attr:`RULES` (or :attr:`NonFinitePolicy.RULES`), or the
            class names do not fit ``num_classes``; the message names the config key.
    """

    # The rules of its own options (configs/model/_module.yaml): applied here, declared in utils.consumer_rules.
    RULES: ClassVar[dict[str, Rule]] = consumer_rules.MODULE

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
        input_mean: Sequence[float] = IMAGENET_MEAN,
        input_std: Sequence[float] = IMAGENET_STD,
        compile: bool = False,
        train_metrics: bool = True,
        nonfinite: str = "raise",
        nonfinite_defer: bool | None = None,
        nonfinite_max_skips: int = 20,
        optimized_metric: str = "val/mIoU",
        metrics: dict | None = None,
        binary_threshold: float = 0.5,
        deep_supervision: Sequence[float] | None = None,
        regions: dict | None = None,
    ) -> None:
        super().__init__()
        require_all(self.RULES, {"channels_last": channels_last, "compile": compile, "train_metrics": train_metrics,
                                 "binary_threshold": binary_threshold})  # fmt: skip
        class_names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
        check_class_names(class_names, num_classes)
        # Only plain values go into the checkpoint, so it loads with torch.load(weights_only=True).
        self.save_hyperparameters(
            {"num_classes": num_classes, "ignore_index": ignore_index, "class_names": class_names}
        )
        # NHWC is a 2D layout: a volumetric net (5-D weights, N×C×D×H×W inputs) keeps the default one.
        self.channels_last = channels_last and not any(p.dim() == 5 for p in net.parameters())
        self.net = net.to(memory_format=torch.channels_last) if self.channels_last else net
        if compile:
            self.net.compile()  # in place: the state_dict keys (and checkpoints) stay the same
        # uint8 batches (data.normalize_on_device) are normalised here: x·1/(255σ) − μ/σ per channel.
        self.input_mean, self.input_std = [float(v) for v in input_mean], [float(v) for v in input_std]
        mean, std = (
            torch.tensor(self.input_mean, dtype=torch.float64),
            torch.tensor(self.input_std, dtype=torch.float64),
        )
        self.register_buffer("input_scale", (1 / (255 * std)).float().view(1, -1, 1, 1), persistent=False)
        self.register_buffer("input_shift", (-mean / std).float().view(1, -1, 1, 1), persistent=False)
        self.loss = loss
        self.supervision = DeepSupervision(deep_supervision or ())
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.class_names, self.num_classes, self.ignore_index = class_names, num_classes, ignore_index
        self.track_train_metrics = train_metrics
        self.binary_threshold = binary_threshold
        self.nonfinite = NonFinitePolicy(nonfinite, nonfinite_defer, nonfinite_max_skips)
        self.train_metrics = ConfusionScores(num_classes, ignore_index)
        self.regions = regions_from_config(regions, num_classes) if regions else None
        self.val_eval = EvaluationMetrics(num_classes, ignore_index, class_names, metrics or {}, self.regions)
        self.test_eval = EvaluationMetrics(num_classes, ignore_index, class_names, metrics or {}, self.regions)
        self.inference = inference if isinstance(inference, Inference) else Inference(**(inference or {}))
        self.best = BestScore(optimized_metric, class_names)
        self._resumed_best: dict | None = None  # the best of the checkpoint a training resumes from
        self.last_results: dict[str, dict[str, Tensor]] = {}
        self._train_loss_sums: dict[str, Tensor] = {}  # this epoch's Σ loss·batch size (see _log_train_losses)
        self._train_loss_count = 0
        self._labelled_pixels: Tensor | None = None  # training pixels that count, first epoch only

    # ------------------------------------------------------------------ steps

    def forward(self, image: Tensor) -> Tensor:
        if image.dtype == torch.uint8:
            image = torch.addcmul(self.input_shift, image.float(), self.input_scale)
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        try:
            return self.net(image)
        except RuntimeError as err:  # a try block costs nothing until it catches
            found = re.search(r"to have (\d+) channels, but got (\d+) channels", str(err))
            if found is None:
                raise
            raise ConfigError(
                f"the net takes {found.group(1)} input channel(s) but the data gives {found.group(2)}: set "
                f"model.net.in_channels={found.group(2)} (or choose the data's modalities/channels to match)"
            ) from err

    def rgb(self, image: Tensor) -> Tensor:
        """The batch's images as float RGB in [0, 255] (N×C×S…): uint8 batches as they are, normalised float
        batches with the data's normalisation undone, ``x·σ + μ`` then ×255 (what pairwise CRF kernels compare)."""
        if image.dtype == torch.uint8:
            return image.float()
        shape = (1, -1) + (1,) * (image.dim() - 2)
        mean = torch.tensor(self.input_mean, device=image.device, dtype=torch.float32).view(shape)
        std = torch.tensor(self.input_std, device=image.device, dtype=torch.float32).view(shape)
        return (image.float() * std + mean) * 255

    def model_step(self, batch: dict, logits: Tensor | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Forward (unless ``logits`` are given) and loss: ``(loss, logits, terms)``; ``terms`` are whatever
        the loss names (:func:`segloss.losses.total_and_terms`) and, for a net with auxiliary heads in
        training, each auxiliary output's loss (``aux<k>``: :class:`segloss.losses.DeepSupervision`). A loss that
        needs the image (:func:`segloss.losses.wants_image`, a CRF term) also gets the batch's RGB in [0, 255]
        (:meth:`rgb`); the others are called without it and pay nothing."""
        out = self(batch["image"]) if logits is None else logits
        self._check_channels(out[0] if isinstance(out, tuple) else out)
        image = {"image": self.rgb(batch["image"])} if wants_image(self.loss) else {}
        if self.regions is None:
            return self.supervision(self.loss, out, batch["mask"], **image)
        try:
            return self.supervision(self.loss, out, self.loss_target(batch), **image)
        except ValueError as err:  # a loss of label maps (CE, Dice…) given the regions' multi-hot target
            if "target" not in str(err):
                raise
            raise ConfigError(
                f"data.regions trains one sigmoid per region, so the loss gets a multi-hot target N×R×…, which "
                f"{type(self.loss).__name__} refused ({err}). Use a multi-label loss: loss=dice_bce_regions or the "
                "losses of segloss.losses.multilabel"
            ) from err

    def loss_target(self, batch: dict) -> Tensor:
        """The target the loss compares with: the label map, or with ``regions`` its multi-hot N×R×S…."""
        if self.regions is None:
            return batch["mask"]
        return self.regions.to_multi_hot(batch["mask"], self.ignore_index)

    def _check_channels(self, logits: Tensor) -> Tensor:
        if self.regions is not None:
            if logits.shape[1] != len(self.regions):
                raise ConfigError(
                    f"the net outputs {logits.shape[1]} channels but data.regions names {len(self.regions)} regions "
                    f"({', '.join(self.regions.names)}); set model.net.num_classes={len(self.regions)} (one sigmoid "
                    "per region)"
                )
            return logits
        binary = logits.shape[1] == 1 and self.num_classes == 2  # one sigmoid channel: background/foreground
        if logits.shape[1] != self.num_classes and not binary:  # a shape, known without a sync
            raise ConfigError(
                f"the net outputs {logits.shape[1]} channels but data.num_classes={self.num_classes}; "
                "set model.net.num_classes=${data.num_classes} (or the dataset's class count; 1 for a binary "
                "task with 2 classes trained with a sigmoid)"
            )
        return logits

    def to_classes(self, logits: Tensor) -> Tensor:
        """Class indices N×H×W: argmax, the sigmoid thresholded at ``binary_threshold`` for one channel, or with
        ``regions`` the label map their sigmoids write (:meth:`segloss.utils.regions.Regions.to_label_map`)."""
        if self.regions is not None:
            return self.regions.to_label_map(logits, self.binary_threshold)
        return to_classes(logits, self.binary_threshold)

    def predict_step(self, batch: dict, batch_idx: int = 0) -> list[Tensor]:
        """Class indices (uint8 H×W, on the CPU) of each image of ``batch["image"]`` — a tensor N×C×H×W or a list
        of C×H×W images of any sizes (``make predict``: :mod:`segloss.data.image_folder`), those of one size run
        through the configured inference together. ``batch["rgb"]`` (uint8, same layout) feeds the CRF."""
        images, rgbs = list(batch["image"]), batch.get("rgb")
        by_size: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(tuple(image.shape), []).append(i)
        classes: list[Tensor] = [torch.empty(0)] * len(images)
        for members in by_size.values():
            stacked = torch.stack([images[i] for i in members])
            crf = {}
            if self.inference.crf is not None:  # the CRF compares colours
                crf["rgb"] = self.rgb(stacked) if rgbs is None else torch.stack([rgbs[i] for i in members]).float()
            for i, labels in zip(members, self.inference.classes(self, stacked, self.to_classes, **crf), strict=True):
                classes[i] = labels.to(torch.uint8).cpu()
        return classes

    def training_step(self, batch: dict, batch_idx: int) -> Tensor | None:
        self.nonfinite.before_step(self.net)
        loss, logits, terms = self.model_step(batch)
        if self.nonfinite.defers(loss):
            self._record_loss(loss, terms, batch, batch_idx)
        elif self.nonfinite.broke(loss, attached_trainer(self)):
            if self.nonfinite.mode == "raise":
                raise NonFiniteLossError.at_step(self, batch, batch_idx, loss, logits, terms)
            self.nonfinite.skip()
            self.log("train/skipped_batches", float(self.nonfinite.skipped))
            if self.nonfinite.in_a_row >= self.nonfinite.max_skips:
                raise NonFiniteLossError.skipped_in_a_row(self.nonfinite, attached_trainer(self))
            return None  # Lightning skips backward and the optimizer step
        self.nonfinite.in_a_row = 0
        self._log_train_losses({"train/loss": loss, **{f"train/loss/{k}": v for k, v in terms.items()}}, len(logits))
        if self._labelled_pixels is not None:
            mask = batch["mask"]
            self._labelled_pixels += ((mask >= 0) & (mask < self.num_classes)).sum()
        if self.track_train_metrics:
            self.train_metrics.update(self.to_classes(logits.detach()), batch["mask"])
        return loss

    def _record_loss(self, loss: Tensor, terms: dict[str, Tensor], batch: dict, batch_idx: int) -> None:
        """Deferred ``nonfinite=raise``: keep the values, read them on the steps the loggers write."""
        trainer = attached_trainer(self)
        where = f"step {trainer.global_step}, epoch {trainer.current_epoch}, batch {batch_idx}" if trainer else ""
        self.nonfinite.record(loss, terms, {"where": where or f"batch {batch_idx}", "names": batch.get("name", [])[:8]})
        if logs_this_step(trainer, default=False):
            self.check_finite("a logging step")

    def check_finite(self, now: str) -> None:
        """Raise :class:`NonFiniteLossError` if a recorded (deferred) training loss was not finite."""
        found = self.nonfinite.first_broken(attached_trainer(self))
        if found is not None:
            trainer = attached_trainer(self)
            step = f"step {trainer.global_step}" if trainer else "the end"
            raise NonFiniteLossError.found_later(found, f"{now}, {step}")

    def _eval_step(self, stage: str, batch: dict) -> dict[str, Tensor]:
        image = batch["image"]
        crf = {"rgb": self.rgb(image)} if self.inference.crf is not None else {}  # the CRF compares colours
        loss, logits, terms = self.model_step(batch, self.inference(self, image, **crf))
        opts = {"on_step": False, "on_epoch": True, "sync_dist": True, "batch_size": len(logits)}
        self.log(f"{stage}/loss", loss, prog_bar=True, **opts)  # means over the split and ranks
        for name, value in terms.items():
            self.log(f"{stage}/loss/{name}", value, **opts)
        preds = self.to_classes(logits)
        trainer = attached_trainer(self)
        getattr(self, f"{stage}_eval").update(preds, logits, batch, trainer.world_size if trainer else 1)
        return {"preds": preds}

    def validation_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        return self._eval_step("val", batch)

    def test_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        return self._eval_step("test", batch)

    def _log_train_losses(self, values: dict[str, Tensor], batch_size: int) -> None:
        """``train/loss_step`` (and terms) on the steps the loggers write (``log_every_n_steps``), and
        ``train/loss_epoch``, the batch-size-weighted epoch mean of this rank, at the epoch end. Summed
        on the device between times: ``self.log`` on every step costs ~1 ms of Python, 2–4 % of a
        small step (benchmarks/bench_overhead.py)."""
        for name, value in values.items():
            self._train_loss_sums[name] = self._train_loss_sums.get(name, 0) + value.detach().float() * batch_size
        self._train_loss_count += batch_size
        if logs_this_step(attached_trainer(self)):
            for name, value in values.items():
                self.log(f"{name}_step", value.detach(), on_step=True, on_epoch=False, prog_bar=name == "train/loss")
            for name, weight in scheduled_weights(self.loss).items():  # term weights that follow a schedule
                self.log(f"train/loss_weight/{name}", weight, on_step=True, on_epoch=False)

    # ------------------------------------------------------------------ epochs

    def _log_epoch(self, stage: str) -> dict[str, Tensor]:
        # The values are already the same on every rank (metric states summed at compute);
        # sync_dist averages identical numbers, which is exact, and keeps Lightning from warning.
        log = partial(self.log, sync_dist=True)
        if stage == "train":
            results = self.train_metrics.compute()
            self.train_metrics.reset()
            results.pop("confmat")
            for key in ("mIoU", "mDice", "acc"):
                log(f"train/{key}", results[key])
        else:
            results, logged = getattr(self, f"{stage}_eval").compute()
            for key, value in logged.items():
                log(f"{stage}/{key}", value, prog_bar=key in ("mIoU", "case_mDice"))
        self.last_results[stage] = results
        return results

    def on_train_start(self) -> None:
        # The sanity-check validation must not count towards the best score; a resumed training
        # starts from the best of its checkpoint.
        self.val_eval.split.reset()
        self.best.load(self._resumed_best)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.check_finite("a checkpoint save")  # never write the weights of a broken step
        broken = non_finite_tensors(self)  # nor weights a finite loss broke (BatchNorm statistics, overflow)
        if broken:
            raise NonFiniteLossError.in_weights(broken, attached_trainer(self))
        state = self.best.state()  # the same on every rank: the results are synced
        if state is not None:
            checkpoint["val_best"] = state

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._resumed_best = checkpoint.get("val_best")

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        # Seeded runs: step k's randomness (dropout, …) depends on (seed, k, rank) only (exact resume).
        reseed_step(batches_started(self.trainer), self.global_rank)
        set_progress(self.loss, self.trainer.global_step, self.current_epoch)  # scheduled term weights

    def on_train_epoch_start(self) -> None:
        self._train_loss_sums, self._train_loss_count = {}, 0
        first = self.current_epoch == 0 and not batches_started(self.trainer)
        self._labelled_pixels = torch.zeros((), dtype=torch.int64, device=self.device) if first else None

    def on_train_epoch_end(self) -> None:
        self.check_finite("the end of epoch")
        for name, total in self._train_loss_sums.items():
            self.log(f"{name}_epoch", total / max(self._train_loss_count, 1))
        self._train_loss_sums, self._train_loss_count = {}, 0
        if self._labelled_pixels is not None:
            labelled = int(self.trainer.strategy.reduce(self._labelled_pixels, reduce_op="sum"))
            self._labelled_pixels = None
            if labelled == 0 and self.trainer.num_training_batches > 0:
                raise DatasetFormatError(
                    f"every pixel of the training masks of the first epoch is ignore_index={self.ignore_index} "
                    "(or outside the classes): there is nothing to learn from. Check the label files, the "
                    "dataset's label mapping and data.ignore_index"
                )
        if self.track_train_metrics:
            self._log_epoch("train")

    def _share_rank_zero_buffers(self) -> None:
        """Evaluate every rank with rank 0's buffers (BatchNorm running statistics) — the ones saved in
        the checkpoint — so that a DDP validation equals a one-process evaluation of that checkpoint.
        One broadcast per buffer per validation, instead of DDP's broadcast at every forward."""
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            for buffer in self.buffers():
                torch.distributed.broadcast(buffer, src=0)

    def on_validation_epoch_start(self) -> None:
        self._share_rank_zero_buffers()
        self.val_eval.start()

    def on_test_epoch_start(self) -> None:
        self._share_rank_zero_buffers()
        self.test_eval.start()

    def on_validation_epoch_end(self) -> None:
        results = self._log_epoch("val")
        if self.trainer.sanity_checking:
            return
        if int(results["confmat"].sum()) == 0:
            raise DatasetFormatError(
                f"the validation split holds no labelled pixel (every mask pixel is ignore_index="
                f"{self.ignore_index} or outside the classes), so no score can be computed. Check the "
                "validation label files, the dataset's label mapping and data.ignore_index"
            )
        self.best.update(results)
        self.log(f"{self.best.metric}_best", self.best.tensor(self.device), prog_bar=True, sync_dist=True)

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
