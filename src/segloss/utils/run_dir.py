"""The run directory of a training, and resuming into it.

:meth:`RunDirectory.open` is called once by ``segloss.train``: it takes the folder's lock, resolves what the
run continues from and refuses to write over another run's checkpoints; it reads the config and leaves it as it
is. :func:`completed_config` then returns the run's config with what the run directory decided (``ckpt_path``,
the loss-family tag, the W&B run id of a resumed training), and :meth:`RunDirectory.write_config` prints it and
writes ``config.yaml``.

``resume=auto`` searches, newest file first within each place:

1. the run's own ``<output_dir>`` — a requeued SLURM job or a re-run of the same sweep job keeps its
   run directory, so it finds its ``checkpoints/last.ckpt`` or the ``hpc_ckpt_<n>.ckpt`` Lightning
   saved on the requeue signal;
2. the latest earlier run of the same ``run_name`` under ``<log_dir>/<task_name>/runs`` (a plain
   ``make train EXP=… resume=auto`` after a crash gets a fresh time-stamped directory).

No checkpoint anywhere: the training starts from scratch (so ``resume=auto`` is safe to put in a job
that may or may not have run before). The checkpoints that make resuming exact — ``last.ckpt`` every
``save_every_n_steps`` and on SIGTERM/SIGINT/SIGUSR1 — are added by :func:`segloss.build.build_trainer`.
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from omegaconf import DictConfig, open_dict

from segloss.errors import ConfigError
from segloss.utils.checkpoints import check_fits, read_checkpoint, remove_stale_temporaries
from segloss.utils.config import save_resolved_config
from segloss.utils.loss_family import loss_family
from segloss.utils.markers import COMPLETED
from segloss.utils.rich_output import config_tree
from segloss.utils.tracking import is_wandb_target, read_run_id

PATTERNS = ("checkpoints/last*.ckpt", "hpc_ckpt_*.ckpt")


def _newest(run_dir: Path) -> Path | None:
    found = [path for pattern in PATTERNS for path in run_dir.glob(pattern) if path.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def find_resume_checkpoint(output_dir: Path, runs_dir: Path, run_name: str) -> Path | None:
    """The checkpoint to resume from (see the module docstring), or None."""
    own = _newest(output_dir)
    if own is not None:
        return own
    if not runs_dir.is_dir():
        return None
    earlier = [d for d in runs_dir.glob(f"*_{run_name}") if d.is_dir() and d.resolve() != output_dir.resolve()]
    candidates = [ckpt for d in earlier if (ckpt := _newest(d)) is not None]
    return max(candidates, key=lambda p: p.stat().st_mtime_ns) if candidates else None


def resolve_resume(resume, ckpt_path, output_dir: Path, runs_dir: Path, run_name: str) -> str | None:
    """The ``ckpt_path`` to give ``Trainer.fit``: the explicit one, the one ``resume=auto`` finds, or None."""
    if resume in (None, False, "none", "false"):
        return str(ckpt_path) if ckpt_path else None
    if resume != "auto":
        raise ConfigError(f"resume={resume!r}: use resume=auto, or ckpt_path=…/last.ckpt for a given checkpoint")
    if ckpt_path:
        raise ConfigError("give either resume=auto or ckpt_path=…, not both")
    found = find_resume_checkpoint(output_dir, runs_dir, run_name)
    return str(found) if found is not None else None


def check_output_dir(output_dir: Path, resuming: bool) -> None:
    """A new run never writes over an earlier run's checkpoints."""
    ckpts = output_dir / "checkpoints"
    if not resuming and ckpts.is_dir() and any(ckpts.iterdir()):
        raise ConfigError(
            f"{ckpts} already holds checkpoints of an earlier run; choose a new paths.output_dir "
            "(the default makes a fresh, time-stamped one) or resume with ckpt_path=…/last.ckpt"
        )


@dataclass
class RunDirectory:
    """``path``: the run directory; ``ckpt_path``: the checkpoint the training continues from (None: a
    fresh run); ``resumed_step``: its global step; ``resumed_state``: its weights, until checked."""

    path: Path
    ckpt_path: str | None = None
    resumed_step: int | None = None
    resumed_state: dict | None = None
    lock: object | None = None  # the open lock file (rank 0), released by :meth:`release`
    hydra_files: dict | None = None  # this run's .hydra/*.yaml as its own Hydra wrote them
    trainable: bool = True  # the resumed checkpoint holds Lightning's training state, not only weights

    @classmethod
    def open(cls, cfg: DictConfig) -> RunDirectory:
        """Take the folder, resolve the resume and check the directory (see the module); ``cfg`` is only read."""
        output_dir = Path(cfg.paths.output_dir)
        runs_dir = Path(cfg.paths.log_dir) / cfg.task_name / "runs"
        lock = lock_run_dir(output_dir)  # one training per folder: a second one stops here, naming the first
        try:
            return cls._open_locked(cfg, output_dir, runs_dir, lock)
        except BaseException:
            _unlock(lock)
            raise

    @classmethod
    def _open_locked(cls, cfg: DictConfig, output_dir: Path, runs_dir: Path, lock) -> RunDirectory:
        if lock is not None:  # ours now: temporaries of a save that was killed are stale
            remove_stale_temporaries(output_dir / "checkpoints")
        ckpt_path = resolve_resume(cfg.get("resume"), cfg.get("ckpt_path"), output_dir, runs_dir, cfg.run_name)
        check_output_dir(output_dir, resuming=ckpt_path is not None)
        hydra_files = {p: p.read_bytes() for p in (output_dir / ".hydra").glob("*.yaml")} if lock else None
        run = cls(output_dir, ckpt_path, lock=lock, hydra_files=hydra_files)
        if ckpt_path is not None:  # read once: it must fit the model, and metrics.csv rewinds to its step
            checkpoint = read_checkpoint(ckpt_path)
            run.resumed_step = int(checkpoint.get("global_step", 0))
            run.resumed_state = checkpoint.get("state_dict", checkpoint)  # a plain state_dict is all weights
            run.trainable = "pytorch-lightning_version" in checkpoint and "state_dict" in checkpoint
        return run

    def write_config(self, cfg: DictConfig) -> None:
        """A training in this folder is under way (its ``COMPLETED`` goes until it says so); print ``cfg`` and
        write it as ``config.yaml`` (rank 0)."""
        clear_completed(self.path)
        show_and_save_config(cfg, self.path)

    def release(self) -> None:
        """Give the folder's lock back (the process's end does too, however it ends). Hydra writes ``.hydra/``
        before any code of ours runs, so a second command refused by the lock has overwritten this run's
        copies: they are put back."""
        for path, data in (self.hydra_files or {}).items():
            if not path.is_file() or path.read_bytes() != data:
                path.write_bytes(data)
        _unlock(self.lock)
        self.lock = None

    def check_fits(self, module) -> None:
        """A resumed checkpoint must fit the configured model (stops before any training)."""
        if self.resumed_state is not None:
            check_fits(module, self.resumed_state, self.ckpt_path)
            self.resumed_state = None  # Lightning reads the file itself
        if not self.trainable:  # Lightning would fail with KeyError 'pytorch-lightning_version'
            raise ConfigError(
                f"{self.ckpt_path} holds weights only (a state_dict), not a Lightning training checkpoint: resuming "
                "needs its optimizer, scheduler and loop state. Resume from a run's checkpoints/last.ckpt; to "
                "evaluate or predict with these weights, give them to make eval / make predict"
            )


def completed_config(cfg: DictConfig, run: RunDirectory) -> DictConfig:
    """A copy of ``cfg`` with ``ckpt_path`` set to what ``run`` continues from, the loss config's family
    (:mod:`segloss.utils.loss_family`) appended to ``tags`` (experiments may replace the tags) and, when resuming,
    the W&B logger pointed at the W&B run of the checkpoint's run directory (its ``wandb_run_id.txt``; an ``id``
    given in the logger config wins), so the training logs to the same run."""
    cfg, ckpt_path, output_dir = copy.deepcopy(cfg), run.ckpt_path, run.path
    with open_dict(cfg):
        cfg.ckpt_path = ckpt_path
        tags, family = list(cfg.get("tags") or []), loss_family(cfg.get("loss"))
        cfg.tags = tags if family in tags else [*tags, family]
    entries = [c for c in (cfg.get("logger") or {}).values() if isinstance(c, DictConfig)]
    entries = [c for c in entries if is_wandb_target(c.get("_target_"))]
    if not ckpt_path or not entries:
        return cfg
    ckpt = Path(ckpt_path)
    run_id = read_run_id([ckpt.parent.parent, ckpt.parent, output_dir] if ckpt.is_file() else [output_dir])
    if run_id is None:
        rank_zero_warn(f"resuming from {ckpt_path}: no wandb_run_id.txt found next to it, so W&B starts a new run")
        return cfg
    with open_dict(cfg):
        for entry in entries:
            entry.id = entry.get("id") or run_id
            entry.resume = "allow"
    return cfg


@rank_zero_only
def show_and_save_config(cfg: DictConfig, output_dir: Path) -> None:
    """Print the config tree (``print_config``), say where a resume starts, write ``config.yaml``."""
    if cfg.get("print_config", True):
        import rich

        rich.print(config_tree(cfg))
    if cfg.get("ckpt_path"):
        print(f"segloss: resuming from {cfg.ckpt_path}")
    save_resolved_config(cfg, output_dir)


LOCK = ".lock"


def lock_run_dir(output_dir: Path):
    """An exclusive, non-blocking ``flock`` on ``<output_dir>/.lock`` for this process (rank 0 only: the other
    ranks of a run share its folder), holding who took it. A second training into the same folder — the same
    ``hydra.run.dir``, a re-run of a sweep job that is still running — gets a :class:`ConfigError` naming the
    holder. The operating system drops the lock when the process ends, even by SIGKILL."""
    if rank_zero_only.rank != 0:
        return None
    output_dir.mkdir(parents=True, exist_ok=True)
    handle = open(output_dir / LOCK, "a+")  # noqa: SIM115 (held for the whole training)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(
            f"another training is writing into {output_dir} ({holder}); two runs in one folder would mix their "
            "config.yaml and checkpoints. Wait for it to end, or give this run another folder (hydra.run.dir=… "
            "or the default time-stamped one)"
        ) from None
    handle.seek(0)
    handle.truncate()
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n")
    handle.flush()
    return handle


def _unlock(handle) -> None:
    if handle is not None and not handle.closed:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


@rank_zero_only
def clear_completed(output_dir: Path) -> None:
    (Path(output_dir) / COMPLETED).unlink(missing_ok=True)


def write_completed(output_dir: Path, record: dict) -> Path:
    """``<output_dir>/COMPLETED``: ``record`` (epochs run and planned, steps, the best value) with the time, as
    JSON, written atomically (a temporary file renamed into place): the last file a finished training writes."""
    path = Path(output_dir) / COMPLETED
    partial = path.with_name(f".{COMPLETED}.{os.getpid()}.tmp")
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    partial.write_text(json.dumps({"finished": stamp, **record}, indent=1) + "\n")
    os.replace(partial, path)
    return path
