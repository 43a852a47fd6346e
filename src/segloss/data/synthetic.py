"""``synthetic_city``: the embedded default dataset, written to disk in the official Cityscapes layout.

``leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png``,
``gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png`` with real Cityscapes labelIds and,
beside it, ``*_gtFine_instanceIds.png`` (16-bit: ``labelId * 1000 + k`` on each pedestrian and car, the
labelId elsewhere), so the default run goes through the same loader as the real dataset and the official
evaluation (``python -m segloss.cityscapes_eval``, iIoU included) runs on it as on Cityscapes.
Generation is deterministic in ``seed`` (image i of a split uses its own generator seeded by
``(seed, split, i)``), is written to a temporary folder and renamed into place (a killed run leaves
nothing half-made), and records its parameters in ``synthetic_city.json`` so a folder made with other
parameters is never mistaken for it. The marker's ``format`` tells what was written: a folder of format 1
(made before the instance ids existed) gets the missing ``*_gtFine_instanceIds.png`` added on its next
use, the other files untouched (they are the same: the instance canvas draws nothing at random).

Command line: ``segloss-synthetic --root data/synthetic_city`` (the Makefile calls it).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from segloss.data.generated import generated_format
from segloss.data.synthetic_scene import render_scene_instances

MARKER = "synthetic_city.json"
CITIES = {"train": ("ashford", "brookvale", "cedarburg"), "val": ("dunmore", "elmstead")}
SPLIT_KEYS = {"train": 0, "val": 1}
FORMAT = 2  # 1: images and labelIds; 2: *_gtFine_instanceIds.png too


@dataclass(frozen=True)
class SyntheticCity:
    """Parameters of the generated dataset; ``ensure(root)`` makes it if it is not there yet."""

    num_train: int = 300
    num_val: int = 60
    height: int = 128
    width: int = 256
    seed: int = 0

    def ensure(self, root: str | Path) -> Path:
        """Return ``root``, generating the dataset there first if it is missing.

        Raises :class:`ConfigError` if ``root`` holds something else (another dataset or a
        synthetic_city made with other parameters): nothing is overwritten.
        """
        root = Path(root)
        made_as = generated_format(root, MARKER, asdict(self), "a synthetic_city",
                                   "Delete that folder (make clean-data) or point data.root elsewhere.",
                                   "Point data.root at an empty or missing folder.")  # fmt: skip
        if made_as is None:
            self.write(root)
        elif made_as < FORMAT:
            self.add_instance_ids(root)
        return root

    def _jobs(self, folder: Path, instances_only: bool = False) -> list[tuple]:
        counts = (("train", self.num_train), ("val", self.num_val))
        return [(self, folder, split, i, instances_only) for split, count in counts for i in range(count)]

    def _marker_text(self) -> str:
        return json.dumps({**asdict(self), "format": FORMAT}, indent=2)

    def add_instance_ids(self, root: Path) -> None:
        """Add the ``*_gtFine_instanceIds.png`` that a format-1 folder lacks (each renamed into place, so
        several processes may do it at once), then stamp the marker with the current format."""
        _write_all(self._jobs(root, instances_only=True))
        tmp = root / f".{MARKER}.{os.getpid()}"
        tmp.write_text(self._marker_text())
        tmp.replace(root / MARKER)

    def write(self, root: Path) -> None:
        # One scratch folder per process: several DDP ranks may generate at once; the first rename wins.
        tmp = root.with_name(f".{root.name}.{os.getpid()}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        for split, count in (("train", self.num_train), ("val", self.num_val)):
            for city in CITIES[split][:count]:
                (tmp / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
                (tmp / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
        _write_all(self._jobs(tmp))
        (tmp / MARKER).write_text(self._marker_text())
        root.parent.mkdir(parents=True, exist_ok=True)
        if (root / MARKER).is_file():  # another process finished first: same parameters, same files
            shutil.rmtree(tmp)
            return
        if root.exists():
            root.rmdir()  # empty by the check in ensure()
        try:
            tmp.rename(root)
        except OSError:
            if not (root / MARKER).is_file():
                raise
            shutil.rmtree(tmp)


def generation_workers(images: int) -> int:
    """Processes that render the images: one per available core (at most 8) where ``fork`` exists
    (Linux), for sets of more than 64 images; 1 elsewhere."""
    if images <= 64 or "fork" not in multiprocessing.get_all_start_methods() or sys.platform == "darwin":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, 8))


def _write_all(jobs: list[tuple]) -> None:
    workers = generation_workers(len(jobs))
    if workers > 1:  # each image has its own seed: the files are the same for any number of workers
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            list(pool.map(_write_image, jobs, chunksize=16))
    else:
        for job in jobs:
            _write_image(job)


def _write_image(job: tuple) -> None:
    """Render image ``i`` of ``split`` from its own seed ``(seed, split, i)`` and write its three PNGs (with
    ``instances_only``: the instance ids alone, written to a scratch name and renamed into place)."""
    params, folder, split, i, instances_only = job
    rng = np.random.default_rng([params.seed, SPLIT_KEYS[split], i])
    rgb, label, instance_ids = render_scene_instances(rng, params.height, params.width)
    cities = CITIES[split]
    city, stem = cities[i % len(cities)], f"{cities[i % len(cities)]}_{i // len(cities):06d}_000019"
    gt = folder / "gtFine" / split / city
    if instances_only:
        scratch = gt / f".{stem}.{os.getpid()}.png"
        Image.fromarray(instance_ids).save(scratch, compress_level=1)
        scratch.replace(gt / f"{stem}_gtFine_instanceIds.png")
        return
    Image.fromarray(rgb).save(folder / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", compress_level=1)
    Image.fromarray(label).save(gt / f"{stem}_gtFine_labelIds.png", compress_level=1)
    Image.fromarray(instance_ids).save(gt / f"{stem}_gtFine_instanceIds.png", compress_level=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate the synthetic_city dataset (Cityscapes layout).")
    parser.add_argument("--root", default="data/synthetic_city", help="output folder")
    defaults = SyntheticCity()
    for name in ("num_train", "num_val", "height", "width", "seed"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    args = parser.parse_args(argv)
    params = SyntheticCity(args.num_train, args.num_val, args.height, args.width, args.seed)
    start = time.perf_counter()
    root = params.ensure(args.root)
    print(f"synthetic_city ready at {root} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
