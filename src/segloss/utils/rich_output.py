"""Rich rendering of the config tree and of the per-class results table."""

from __future__ import annotations

import math
from collections.abc import Sequence

import rich
import rich.syntax
import rich.tree
from omegaconf import DictConfig, ListConfig, OmegaConf
from rich.table import Table

CONFIG_ORDER = ("data", "model", "loss", "optimizer", "scheduler", "trainer", "callbacks", "logger", "paths")


def config_tree(cfg: DictConfig, resolve: bool = True) -> rich.tree.Tree:
    """The composed config as a tree, one branch per group (the main groups first), with secrets redacted
    as in ``config.yaml`` (:mod:`segloss.utils.secrets`): a terminal, a SLURM ``.out`` file or a CI log is a
    written copy too."""
    from segloss.utils.secrets import redact

    tree = rich.tree.Tree("CONFIG", style="bold", guide_style="dim")
    keys = [k for k in CONFIG_ORDER if k in cfg] + [k for k in cfg if k not in CONFIG_ORDER]
    for key in keys:
        branch = tree.add(str(key), style="bold cyan")
        value = cfg[key]
        if isinstance(value, DictConfig | ListConfig):
            value = OmegaConf.to_container(value, resolve=resolve)
        value = redact(value, key=str(key))
        text = OmegaConf.to_yaml(value) if isinstance(value, dict | list) else str(value)
        branch.add(rich.syntax.Syntax(text, "yaml", theme="ansi_dark", background_color="default"))
    return tree


def _fmt(value: float) -> str:
    return "—" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def results_table(title: str, class_names: Sequence[str], iou: Sequence[float], miou: float, acc: float) -> Table:
    """Per-class IoU (in %) with mIoU and pixel accuracy; "—" marks classes absent from the split."""
    table = Table(title=title, show_lines=False)
    table.add_column("class", style="bold")
    table.add_column("IoU %", justify="right")
    for name, value in zip(class_names, iou):
        table.add_row(name, _fmt(float(value)))
    table.add_section()
    table.add_row("mIoU", _fmt(float(miou)), style="bold green")
    table.add_row("pixel acc", _fmt(float(acc)), style="bold")
    return table


def print_results(title: str, class_names: Sequence[str], results: dict) -> None:
    rich.print(results_table(title, class_names, results["IoU"].tolist(), results["mIoU"], results["acc"]))
