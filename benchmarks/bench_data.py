"""Data-loading benchmark at Cityscapes resolution: PNG decode + training augmentation, per core.

    python benchmarks/bench_data.py [--count N] [--rounds R] [--root DIR] [--out PATH] [--quick]

Writes N Cityscapes-layout frames (2048×1024 RGB + labelIds PNG) made by the synthetic scene
generator at full size, softened by a 2 px Gaussian blur (optics) and given σ = 0.8 grey-level
Gaussian sensor noise so that the PNG files weigh about what real leftImg8bit files do (2.0–2.5 MB).
Then, in one process with one thread (``torch.set_num_threads(1)``, ``cv2.setNumThreads(0)``):

* decoders: PIL, ``segloss.data.image_io`` (what the datasets use), ``torchvision.io.decode_png`` /
  ``decode_image`` and cv2 on the RGB and the label file;
* pipelines: ``CityscapesDataset`` item (decode + trainId mapping) alone, and followed by each
  augmentation back-end with the Cityscapes recipe (scale 0.5–2 of 1024×2048, crop 512×1024,
  flip, jitter of ``configs/data/cityscapes.yaml``, normalise);
* a DataLoader with one worker over the dataset with the fast transform, next to one loading in
  the main process (images/s after each epoch's first batch, i.e. without the worker's start-up).

Variants take turns on every image (round-robin, order rotated each round) so that they share
the machine's load; torch variants are seeded alike per turn and so draw the same scale, crop,
flip and jitter. Times are medians over rounds × images. Ratios: ``vs decode`` = time / decode-only
time; ``speed-up`` = torchvision reference time / time (total and augmentation only).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

# benchmarks/ is on sys.path as the script's folder
from data_variants import decoders, device_variant, pipelines, uint8_variant
from PIL import Image, ImageFilter
from torch.utils.data import DataLoader

from segloss.data import device_augment
from segloss.data.cityscapes import IMAGE_SUFFIX, MASK_SUFFIX, CityscapesDataset
from segloss.data.synthetic_scene import render_scene
from segloss.utils.environment import cpu_model

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network
try:
    import cv2
except ImportError:
    cv2 = None
CITY = "benchville"
BLUR_PX, NOISE_SIGMA = 2.0, 0.8


def make_frames(root: Path, count: int, height: int, width: int) -> dict[str, float]:
    """Write ``count`` frames in the Cityscapes layout (unless there); mean file sizes in MB."""
    image_dir, label_dir = root / "leftImg8bit" / "train" / CITY, root / "gtFine" / "train" / CITY
    for folder in (image_dir, label_dir):
        folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        stem = f"{CITY}_{i:06d}_000019"
        image_path, label_path = image_dir / f"{stem}{IMAGE_SUFFIX}", label_dir / f"{stem}{MASK_SUFFIX}"
        if image_path.is_file() and label_path.is_file():
            continue
        rng = np.random.default_rng([7, i])
        rgb, labels = render_scene(rng, height, width)
        soft = np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(BLUR_PX)), dtype=np.float32)
        noisy = soft + rng.normal(0, NOISE_SIGMA, soft.shape).astype(np.float32)
        Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8)).save(image_path)
        Image.fromarray(labels).save(label_path)
    return {"image_png_mb": _mean_mb(image_dir), "label_png_mb": _mean_mb(label_dir)}


def _mean_mb(folder: Path) -> float:
    return statistics.mean(p.stat().st_size for p in folder.glob("*.png")) / 1e6


def round_robin(variants: dict, count: int, rounds: int, run) -> dict[str, list[tuple[float, ...]]]:
    """``run(variant, index, seed)`` for every variant on every item, variants taking turns."""
    names, samples = list(variants), {name: [] for name in variants}
    for r in range(rounds):
        for i in range(count):
            shift = (r * count + i) % len(names)
            for name in names[shift:] + names[:shift]:
                samples[name].append(run(variants[name], i, r * count + i))
    return samples


def medians_ms(samples: dict[str, list[tuple[float, ...]]]) -> dict[str, list[float]]:
    """Per variant, the median of each timed quantity, in ms."""
    return {name: [statistics.median(column) * 1e3 for column in zip(*values)] for name, values in samples.items()}


def time_decoders(paths: list[tuple[Path, Path]], rounds: int) -> dict[str, dict[str, float]]:
    def run(fns, index, _seed):
        image_path, label_path = paths[index]
        start = time.perf_counter()
        fns[0](image_path)
        middle = time.perf_counter()
        fns[1](label_path)
        return time.perf_counter() - start, middle - start

    out = {}
    for name, (total, image) in medians_ms(round_robin(decoders(), len(paths), rounds, run)).items():
        out[name] = {"ms": total, "image_ms": image, "label_ms": total - image, "images_per_s": 1e3 / total}
    return out


def time_pipelines(dataset: CityscapesDataset, count: int, variants: dict, rounds: int) -> dict[str, dict[str, float]]:
    def run(transform, index, seed):
        torch.manual_seed(seed)
        start = time.perf_counter()
        sample = dataset[index]
        decoded = time.perf_counter()
        if transform is None:
            return decoded - start, 0.0
        transform(sample)
        end = time.perf_counter()
        return end - start, end - decoded

    out = {}
    for name, (total, aug) in medians_ms(round_robin(variants, count, rounds, run)).items():
        out[name] = {"ms": total, "augment_ms": aug, "images_per_s": 1e3 / total}
    for row in out.values():
        row["vs_decode"] = row["ms"] / out["decode"]["ms"]
        row["speedup_vs_torchvision"] = out["torchvision"]["ms"] / row["ms"]
        aug = row["augment_ms"]
        row["augment_speedup_vs_torchvision"] = out["torchvision"]["augment_ms"] / aug if aug > 0 else None
    return out


def loader_rates(
    root: Path, transform, uint8_transform, device_transform, epochs: int, batch_size: int = 2
) -> dict[str, dict]:
    """Images/s of DataLoaders over the same frames, epochs alternating between them: one worker, one
    worker per core (also with ``normalize_on_device``: uint8 crops, a quarter of the bytes to hand
    over; and with ``augment_on_device``: uint8 source regions packed per batch, the pixels left to the
    device — ``MB_per_image`` is what each hands over), and in the main process for reference. Each
    epoch's first batch starts the clock (worker start-up and prefetch latency excluded); ``per_core`` =
    images/s ÷ processes that decode."""
    cores = os.cpu_count() or 1
    dataset = CityscapesDataset(root, "train", transform)
    raw = CityscapesDataset(root, "train", uint8_transform)
    regions = CityscapesDataset(root, "train", device_transform)

    def loader(data, workers: int, collate=None) -> DataLoader:
        return DataLoader(
            data, batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0, collate_fn=collate
        )

    loaders = {
        "1 worker": (loader(dataset, 1), 1),
        f"{cores} workers": (loader(dataset, cores), cores),
        f"{cores} workers, uint8": (loader(raw, cores), cores),
        f"{cores} workers, augment_on_device": (loader(regions, cores, device_augment.collate), cores),
        "in-process": (loader(dataset, 0), 1),
    }
    totals = {name: [0, 0.0, 0] for name in loaders}  # images, seconds, bytes of images + masks
    for _ in range(epochs):
        for name, (loader, _) in loaders.items():
            batches = iter(loader)
            next(batches)
            start = time.perf_counter()
            for batch in batches:
                totals[name][0] += len(batch["name"])
                totals[name][2] += sum(batch[k].numel() * batch[k].element_size() for k in ("image", "mask"))
            totals[name][1] += time.perf_counter() - start
    return {
        name: {
            "images_per_s": n / seconds,
            "per_core": n / seconds / loaders[name][1],
            "images": n,
            "batch_size": batch_size,
            "MB_per_image": size / max(n, 1) / 1e6,
        }
        for name, (n, seconds, size) in totals.items()
    }


def print_tables(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    table = Table(title="Decoders (median ms per frame, 1 thread)")
    for col in ("decoder", "RGB ms", "label ms", "total ms", "frames/s"):
        table.add_column(col, justify="right" if col != "decoder" else "left")
    for name, row in result["decoders"].items():
        cells = (row["image_ms"], row["label_ms"], row["ms"], row["images_per_s"])
        table.add_row(name, *(f"{v:.1f}" for v in cells))
    console.print(table)
    table = Table(title="Decode + augment (median per image, 1 thread)")
    cols = ("variant", "total ms", "augment ms", "img/s/core", "vs decode", "speed-up", "aug speed-up")
    for col in cols:
        table.add_column(col, justify="right" if col != "variant" else "left")
    for name, row in result["pipelines"].items():
        table.add_row(
            name, f"{row['ms']:.1f}", f"{row['augment_ms']:.1f}", f"{row['images_per_s']:.1f}",
            f"{row['vs_decode']:.2f}×", f"{row['speedup_vs_torchvision']:.2f}×",
            f"{row['augment_speedup_vs_torchvision']:.1f}×" if row["augment_ms"] > 0 else "",
        )  # fmt: skip
    console.print(table)
    for name, row in result["dataloader"].items():
        rate, images, core, mb = row["images_per_s"], row["images"], row["per_core"], row["MB_per_image"]
        console.print(
            f"DataLoader ({name}): {rate:.1f} images/s, {core:.1f} per core, {mb:.2f} MB handed over per image "
            f"({images} timed)"
        )
    for note in result["skipped"]:
        console.print(f"skipped {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=16, help="frames to write")
    parser.add_argument("--rounds", type=int, default=4, help="passes over the frames per variant")
    parser.add_argument("--root", type=Path, default=None, help="where to write the frames (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/data.json"))
    parser.add_argument("--jitter", type=float, nargs=4, default=(0.125, 0.5, 0.5, 0.1), metavar=("B", "C", "S", "H"))
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 small frames (256×512), 1 round")
    args = parser.parse_args()
    size, args.base, args.crop = (1024, 2048), (1024, 2048), (512, 1024)
    if args.quick:
        args.count, args.rounds, size, args.base, args.crop = 3, 1, (256, 512), (256, 512), (128, 256)
    torch.set_num_threads(1)
    if cv2 is not None:
        cv2.setNumThreads(0)
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        root = args.root or Path(tmp)
        start = time.perf_counter()
        sizes = make_frames(root, args.count, *size)
        seconds, rgb_mb, label_kb = time.perf_counter() - start, sizes["image_png_mb"], sizes["label_png_mb"] * 1e3
        print(f"{args.count} frames {size[1]}×{size[0]} in {root} ({seconds:.0f} s): mean RGB PNG {rgb_mb:.2f} MB, "
              f"label PNG {label_kb:.0f} kB")  # fmt: skip
        dataset = CityscapesDataset(root, "train")
        paths = [(image, label) for _, image, label in dataset.samples[: args.count]]
        variants, skipped = pipelines(args)
        result = {
            "decoders": time_decoders(paths, args.rounds),
            "pipelines": time_pipelines(dataset, len(paths), variants, args.rounds),
            "dataloader": loader_rates(
                root, variants["fast"], uint8_variant(args), device_variant(args), epochs=1 if args.quick else 3
            ),
            "skipped": skipped,
        }
    result["meta"] = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": 1,
        "torch": torch.__version__, "torchvision": torchvision.__version__, "frames": args.count,
        "rounds": args.rounds, "frame_size": size, "crop_size": args.crop, "jitter": list(args.jitter), **sizes,
    }  # fmt: skip
    print_tables(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
