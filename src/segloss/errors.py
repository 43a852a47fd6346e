"""Every error that is the user's to fix: the command line prints its message alone (no traceback).

Each message names the problem, where it was found and the fix. ``SEGLOSS_TRACEBACK=1`` shows the
traceback behind one (:func:`segloss.utils.config.report_user_errors`).
"""

from __future__ import annotations

from pathlib import Path


class SeglossError(Exception):
    """Base of the errors that the entry points report as a plain message."""


class ConfigError(SeglossError, ValueError):
    """A config value is wrong or inconsistent."""

    @classmethod
    def value(cls, key: str, value, expected: str, example: str) -> ConfigError:
        """The one wording of a wrong value, whoever finds it (``segloss.checks`` before anything is built, or
        the constructor that consumes the value)."""
        return cls(f"{key}={value!r} must be {expected} (e.g. {example})")


class DatasetNotFoundError(SeglossError, FileNotFoundError):
    """The dataset root is missing or does not hold the expected layout."""

    def __init__(self, name: str, root: str | Path, problem: str, layout: str, source: str) -> None:
        root = Path(root).expanduser()
        super().__init__(
            f"{name} not found: {problem}. Looked in data.root={root} (set it with the override "
            f"data.root=/path/to/{name.lower().replace(' ', '_')}, or set DATA_ROOT to the folder that holds "
            f"{root.name}/). Expected layout under the root: {layout}. Where to get it: {source}"
        )
        self.root = root


class DatasetFormatError(SeglossError, ValueError):
    """A file of the dataset is unreadable, unpaired or holds values that are not labels."""


class LabelValueError(DatasetFormatError):
    """A loss got target values that are neither classes nor ``ignore_index`` (a wrong label mapping, or an
    ``ignore_index`` that is not the one the masks use)."""


class UnreadableImagesError(DatasetFormatError):
    """``make predict``: some input images could not be read; the others were labelled (``written``: their
    mask files; ``failed``: the unreadable images)."""

    def __init__(self, failures: dict[Path, str], written: list[Path], output_dir: Path) -> None:
        lines = "\n".join(f"  - {reason}" for reason in failures.values())
        super().__init__(
            f"{len(failures)} image(s) could not be read and were not labelled "
            f"({len(written)} prediction(s) written to {output_dir}):\n{lines}"
        )
        self.failed, self.written = list(failures), written


class NonFiniteLossError(SeglossError):
    """The training loss became NaN or infinite (``model.nonfinite=raise``). Nothing is written after it,
    so the last good checkpoint stays as it was."""

    @classmethod
    def at_step(cls, module, batch: dict, batch_idx: int, loss, logits, terms: dict) -> NonFiniteLossError:
        """The error for this step: where it happened, which terms broke, whether inputs and logits were
        finite, and what to do."""
        from segloss.utils.lightning_adapter import attached_trainer

        trainer = attached_trainer(module)
        where = (
            f"step {trainer.global_step}, epoch {trainer.current_epoch}, batch {batch_idx}"
            if trainer
            else f"batch {batch_idx}"
        )
        broken = [name for name, value in terms.items() if not bool(value.isfinite())] or ["the loss itself"]
        names = list(batch.get("name", []))[:8]
        image_ok, logits_ok = bool(batch["image"].float().isfinite().all()), bool(logits.isfinite().all())
        return cls(
            f"the training loss is {float(loss.detach())} at {where}; images {names}; non-finite term(s): "
            f"{broken}; inputs finite: {image_ok}, logits finite: {logits_ok}. {cls.FIXES}"
        )

    FIXES = (
        "Nothing was saved after it, so the last checkpoint is intact. Fixes: check those images, lower "
        "optimizer.lr, set trainer.gradient_clip_val, use trainer.precision=32-true, or skip such batches with "
        "model.nonfinite=skip"
    )

    @classmethod
    def found_later(cls, found: dict, now: str) -> NonFiniteLossError:
        """The error for a broken step found by a deferred read (:mod:`segloss.models.nonfinite`) at ``now``."""
        if found.get("elsewhere"):
            return cls(f"the training loss became non-finite on another rank (read at {now}). {cls.FIXES}")
        broken = found["broken"] or ["the loss itself"]
        return cls(
            f"the training loss is {found['loss']} at {found['where']} (read at {now}: on accelerators the check "
            f"is read at logging steps and before checkpoints; model.nonfinite_defer=false reads every step); "
            f"images {found['names']}; non-finite term(s): {broken}. {cls.FIXES}"
        )

    @classmethod
    def in_weights(cls, names: list[str], trainer=None) -> NonFiniteLossError:
        """A checkpoint save refused: parameters or buffers are no longer finite."""
        step = f" at step {trainer.global_step}" if trainer is not None else ""
        return cls(
            f"the weights are no longer finite{step} (non-finite: {names}), although the loss was: a step "
            "overflowed them (BatchNorm running statistics or parameters). The checkpoint was not written; the "
            "last one on disk is intact. Fixes: lower optimizer.lr, set trainer.gradient_clip_val, or resume "
            "from that checkpoint with a smaller learning rate"
        )

    @classmethod
    def skipped_in_a_row(cls, policy, trainer=None) -> NonFiniteLossError:
        """``nonfinite=skip`` gave up: ``max_skips`` batches in a row had a non-finite loss."""
        step = f" (step {trainer.global_step}, epoch {trainer.current_epoch})" if trainer is not None else ""
        return cls(
            f"{policy.in_a_row} training batches in a row had a non-finite loss and were skipped{step}, "
            f"{policy.skipped} in all: the weights themselves are broken, so every later batch would be skipped "
            f"too (model.nonfinite_max_skips={policy.max_skips}). The checkpoints on disk hold finite weights. "
            "Fixes: lower optimizer.lr, set trainer.gradient_clip_val, use trainer.precision=32-true"
        )


class CheckpointWriteError(SeglossError, OSError):
    """A checkpoint could not be written (a full disk, a read-only folder); the previous one is intact."""


class ExportParityError(SeglossError):
    """``make export``: the exported file does not give the module's logits (or does not run) on the parity
    images; nothing was written."""


class DownloadError(SeglossError, RuntimeError):
    """``make download``: fetching, verifying, unpacking or preparing a dataset or encoder weights failed.
    The message names the file or URL, what went wrong and the fix; nothing half-written is left in the
    dataset root, and re-running the same command continues (a partial download resumes)."""


class WeightsUnavailableError(SeglossError, RuntimeError):
    """Pretrained encoder weights were asked for but are neither in ``paths.weights_dir`` nor reachable."""
