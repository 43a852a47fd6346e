"""Which runs are compared with which (``make compare``).

The runs' resolved configs are compared key by key: everything that differs besides the loss and the
seed — data, model, schedule, precision, … — splits the runs into groups, each compared on its own. Keys
that name places or speed rather than the experiment (:data:`IGNORED`) do not, nor those the user names
(``--ignore``). Runs of one loss preset whose loss settings differ (a sweep over ``loss.gamma``) become
separate rows, named by the differing settings (``focal[gamma=1.0]``). Within a group one run counts per
(loss, seed): the one that finished last.
"""

from __future__ import annotations

import json
from pathlib import Path

from segloss.comparison.runs import LeftOut, Run
from segloss.utils.markers import COMPLETED

# Config keys (and the subtrees under them) that do not make two runs different experiments: where files
# go, how fast or on what hardware it ran, what was logged. ``seed`` and ``loss`` are the compared factors.
IGNORED = (
    "seed", "loss", "run_name", "tags", "task_name", "paths", "hydra", "logger", "callbacks", "ckpt_path",
    "resume", "print_config", "save_every_n_steps", "cluster", "float32_matmul_precision", "metrics",
    "trainer.default_root_dir", "trainer.devices", "trainer.num_nodes", "trainer.accelerator", "trainer.strategy",
    "trainer.log_every_n_steps", "trainer.enable_progress_bar", "data.root", "data.num_workers",
    "data.pin_memory", "data.persistent_workers", "data.val_batch_size", "model.compile", "model.channels_last",
    "model.nonfinite_defer", "model.train_metrics",
)  # fmt: skip
KEPT = ("callbacks.early_stopping",)  # inside an ignored subtree, but changes what a run is


def _ignored(key: str, extra: tuple[str, ...] = ()) -> bool:
    inside = lambda names: any(key == name or key.startswith(f"{name}.") for name in names)  # noqa: E731
    return (inside(IGNORED) and not inside(KEPT)) or inside(extra) or key.endswith(".dirpath")


def group_runs(runs: list[Run], ignore: tuple[str, ...] = ()) -> tuple[list[tuple[dict, list[Run]]], list[LeftOut]]:
    """``([(the group's distinguishing settings, its runs)], left out)``: runs split by every config key that
    differs besides loss and seed (and ``ignore``); within a group one run per (loss, seed) — the newest
    finished one — and loss presets with differing settings renamed ``preset[key=value,…]``."""
    keys = sorted({key for run in runs for key in run.setting if not _ignored(key, ignore)})
    differing = [key for key in keys if len({_value(run.setting.get(key)) for run in runs}) > 1]
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(_value(run.setting.get(key)) for key in differing), []).append(run)
    out, left_out = [], []
    for values, members in groups.items():
        _name_loss_variants(members)
        kept: dict[tuple[str, int], Run] = {}
        for run in sorted(members, key=_finished_at):
            if (run.loss, run.seed) in kept:
                older = kept[(run.loss, run.seed)]
                left_out.append(
                    LeftOut(older.path, f"{run.loss} seed {run.seed} again in {run.path} (the newer one counts)")
                )
            kept[(run.loss, run.seed)] = run
        order = {id(run): i for i, run in enumerate(members)}
        setting = {key: json.loads(value) for key, value in zip(differing, values)}
        out.append((setting, sorted(kept.values(), key=lambda r: order[id(r)])))
    return out, left_out


def _finished_at(run: Run) -> float:
    """When the run finished: its ``COMPLETED`` (or metrics) file's time; 0 when the files are not at hand."""
    for name in (COMPLETED, "csv/metrics.csv"):
        path = Path(run.path) / name
        if path.is_file():
            return path.stat().st_mtime
    return 0.0


def kept_setting(setting: dict[str, object]) -> dict[str, object]:
    """The keys of a run's setting that define the experiment (:data:`IGNORED` ones dropped)."""
    return {key: value for key, value in setting.items() if not _ignored(key)}


def _value(value: object) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _name_loss_variants(runs: list[Run]) -> None:
    for preset in {run.loss for run in runs}:
        mine = [run for run in runs if run.loss == preset]
        keys = sorted({key for run in mine for key in run.loss_setting})
        differing = [key for key in keys if len({_value(run.loss_setting.get(key)) for run in mine}) > 1]
        for run in mine if differing else []:
            run.loss = f"{preset}[{','.join(f'{k}={run.loss_setting.get(k)}' for k in differing)}]"
