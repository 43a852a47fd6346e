"""Label statistics of a dataset: ``python -m segloss.stats data=NAME [split=train]`` (``make stats``).

One pass over the split's untransformed labels (cached under ``paths.cache_dir``, keyed by the
dataset, root and split) gives per class: pixel count and share, image frequency (the fraction of
images containing the class), and the class-weight vectors of every method of
:func:`segloss.losses.class_weights` (inverse, median_frequency, enet). Printed as a rich table and
written as ``stats.json`` in the run directory.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import hydra
import rich
import torch
from omegaconf import DictConfig
from rich.table import Table

from segloss.checks import check_config
from segloss.data.label_stats import cached_label_counts, require_labelled
from segloss.errors import ConfigError
from segloss.losses.class_weights import METHODS, class_weights
from segloss.utils.config import CONFIG_DIR, instantiate, report_user_errors, set_environment

set_environment()


def compute_stats(cfg: DictConfig) -> dict:
    """Statistics of ``cfg.split`` of ``cfg.data`` (see the module docstring)."""
    check_config(cfg)
    datamodule = instantiate(cfg.data, "data")
    datamodule.prepare_data()
    split = cfg.get("split", "train")
    if split not in datamodule.splits or datamodule.splits[split] is None:
        raise ConfigError(f"split={split!r}: the data config has splits {datamodule.splits}")
    on_disk = datamodule.splits[split]
    dataset = datamodule.dataset(root=datamodule.root, split=on_disk, transform=None)
    key = f"{type(dataset).__name__}|{datamodule.root}|{on_disk}"
    cache_dir = Path(cfg.paths.cache_dir)
    if cfg.get("refresh"):
        shutil.rmtree(cache_dir / "label_counts", ignore_errors=True)
    stats = cached_label_counts(dataset, datamodule.num_classes, datamodule.ignore_index, cache_dir, key)
    require_labelled(stats, f"the {split} labels of {datamodule.root}", datamodule.ignore_index)
    counts = torch.tensor(stats["counts"], dtype=torch.float64)
    weights = {
        method: class_weights(counts, method, torch.tensor(stats["image_pixels"])).tolist() for method in METHODS
    }
    total = float(counts.sum())
    return {
        "dataset": type(dataset).__name__,
        "root": str(datamodule.root),
        "split": on_disk,
        "class_names": list(datamodule.class_names),
        **stats,
        "share": [c / total if total else math.nan for c in stats["counts"]],
        "image_frequency": [n / max(stats["num_images"], 1) for n in stats["images"]],
        "weights": weights,
    }


def stats_table(stats: dict) -> Table:
    table = Table(
        title=f"{stats['dataset']} {stats['split']}: {stats['num_images']} images, "
        f"{100 * stats['ignored'] / max(stats['pixels'], 1):.2f} % of pixels ignored",
    )
    for column in ("class", "pixels", "share %", "images %", *METHODS):
        table.add_column(column, justify="left" if column == "class" else "right")
    for c, name in enumerate(stats["class_names"]):
        table.add_row(
            name,
            f"{int(stats['counts'][c]):,}",
            f"{100 * stats['share'][c]:.3f}",
            f"{100 * stats['image_frequency'][c]:.1f}",
            *(f"{stats['weights'][m][c]:.3f}" for m in METHODS),
        )
    return table


def run(cfg: DictConfig) -> dict:
    stats = compute_stats(cfg)
    rich.print(stats_table(stats))
    out = Path(cfg.paths.output_dir) / "stats.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(stats, indent=1))
    rich.print(f"written to {out}")
    return stats


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="stats")
def main(cfg: DictConfig) -> None:
    with report_user_errors():
        run(cfg)


if __name__ == "__main__":
    main()
