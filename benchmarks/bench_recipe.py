"""Training recipe against the raw training step: how close ``make train`` comes to the step it is built on.

    python benchmarks/bench_recipe.py [--device cuda|cpu] [--quick] [--steps 60] [--warmup 10] [--frames 16]
        [--data-dir DIR] [--out benchmarks/results/recipe.json] [--overrides key=value ...]

Both paths run in one process, on the same device, from one config composed like ``segloss.train`` does
(``configs/train.yaml`` with ``experiment=focal_cityscapes trainer=gpu`` by default; ``--overrides`` last):

* **real**: ``check_config`` → ``instantiate(cfg.data)`` (``SegmentationDataModule`` with the real
  ``CityscapesDataset`` loader, its workers and augmentation) → ``build_module`` → ``build_trainer`` →
  ``trainer.fit`` for ``--steps`` optimizer steps (``trainer.max_steps``). Everything of the recipe is
  kept (precision, channels-last, compile, train metrics, non-finite check, scheduler, logging calls)
  except what does not belong to a training step: validation, checkpointing, loggers, progress bar and
  model summary are off (and the callbacks that need them dropped). A callback stamps ``perf_counter``
  at ``on_train_batch_start`` and ``on_train_batch_end`` (CUDA synchronised): data wait = previous batch
  end → this batch start (loading, collation, host-to-device copy), compute = batch start → batch end,
  period = previous batch end → this batch end.
* **raw**: a second module built from the same config (same net, loss and optimizer factory; fresh
  weights; net in channels-last when ``model.channels_last``), one in-memory batch of random crops of
  ``data.train_transform.crop_size`` at the per-device batch size, and the bare step: zero_grad,
  autocast forward + loss in the trainer's precision (float16 with a GradScaler), backward, optimizer
  step (no scheduler). CUDA is synchronised around each step.

The data are Cityscapes frames made by the ``segloss-synthetic`` generator (``segloss.data.synthetic``) at
1024×2048: ``--frames`` distinct frames, hard-linked (copied where links fail) to as many training images as
the run reads, plus one validation image; ``data.root`` points there and ``data.generator=null``.

The first ``--warmup`` steps of each path are dropped; the figures are medians of the other steps:
img/s = per-device batch ÷ median period (real) or median step time (raw), and the ratio real ÷ raw
(target ≥ 0.9 on a GPU). Prints a table, writes JSON (machine, settings, every timed step).

Without a CUDA GPU the default ``--device cuda`` prints how to run it and exits 0 (no JSON). ``--quick``
is a CPU-sized smoke run (``--device cpu --quick``: 128×256 frames, 64×128 crops, batch 2, the seed
U-Net, ``trainer=cpu``, no loader workers, 8 steps of which 3 warm-up), written to ``recipe_quick.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import lightning.pytorch as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from segloss.build import build_module, build_trainer
from segloss.checks import check_config
from segloss.data import synthetic
from segloss.data.cityscapes import IMAGE_SUFFIX, MASK_SUFFIX
from segloss.utils.config import CONFIG_DIR, instantiate, set_environment

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 0.9  # real img/s ÷ raw img/s on a GPU
CITY = "recipebench"
BASE_OVERRIDES = {
    "cuda": ["experiment=focal_cityscapes", "trainer=gpu"],
    "cpu": ["experiment=focal_cityscapes", "trainer=cpu"],
}
QUICK_OVERRIDES = [
    "model=unet",
    "data.train_transform.base_size=[128,256]",
    "data.train_transform.crop_size=[64,128]",
    "data.batch_size=2",
    "data.num_workers=0",
]
# Callbacks that need a logger, a checkpoint or a progress bar (all off here) or only print at the start.
DROPPED_CALLBACKS = ("model_checkpoint", "rich_progress_bar", "rich_model_summary", "lr_monitor")
AUTOCAST = {"32-true": None, "32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


# ---------------------------------------------------------------------------------------------- config


def compose_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """``configs/train.yaml`` with ``overrides``, the ``hydra:`` interpolations resolvable (as in a run)."""
    set_environment()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
        cfg.paths.output_dir = str(output_dir)
    return cfg


def timed_run_config(cfg: DictConfig, data_root: Path, steps: int) -> None:
    """The recipe bounded to ``steps`` optimizer steps, reading ``data_root``, with nothing but training."""
    with open_dict(cfg):
        cfg.data.root, cfg.data.generator = str(data_root), None
        cfg.print_config, cfg.save_every_n_steps = False, None
        cfg.trainer.update(max_steps=steps, max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0)
        cfg.trainer.update(enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        for name in DROPPED_CALLBACKS if cfg.get("callbacks") else ():
            cfg.callbacks.pop(name, None)


# ------------------------------------------------------------------------------------------------ data


def generate_frames(folder: Path, count: int, height: int, width: int) -> list[tuple[Path, Path]]:
    """``count`` training frames (+ 1 validation frame) by the ``segloss-synthetic`` command; their
    (image, labelIds) paths, training frames first."""
    argv = ["--root", str(folder), "--num-train", str(count), "--num-val", "1"]
    synthetic.main([*argv, "--height", str(height), "--width", str(width)])
    pairs = []
    for split in ("train", "val"):
        for image in sorted((folder / "leftImg8bit" / split).glob(f"*/*{IMAGE_SUFFIX}")):
            stem = image.name[: -len(IMAGE_SUFFIX)]
            pairs.append((image, folder / "gtFine" / split / image.parent.name / f"{stem}{MASK_SUFFIX}"))
    return pairs


def link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # a filesystem without hard links
        shutil.copyfile(source, target)


def link_dataset(root: Path, frames: list[tuple[Path, Path]], train_images: int) -> None:
    """A Cityscapes tree under ``root``: ``train_images`` training images cycling over all frames but the
    last, which is the one validation image."""
    train, val = frames[:-1], frames[-1]
    for split, count in (("train", train_images), ("val", 1)):
        for folder in ("leftImg8bit", "gtFine"):
            (root / folder / split / CITY).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, mask = train[i % len(train)] if split == "train" else val
            stem = f"{CITY}_{i:06d}_000019"
            link(image, root / "leftImg8bit" / split / CITY / f"{stem}{IMAGE_SUFFIX}")
            link(mask, root / "gtFine" / split / CITY / f"{stem}{MASK_SUFFIX}")


# --------------------------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(L.Callback):
    """``perf_counter`` at the start and end of every training batch (the device synchronised first)."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.batch_shape: list[int] | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        sync(pl_module.device)
        self.starts.append(time.perf_counter())
        if self.batch_shape is None:
            self.batch_shape = list(batch["image"].shape)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sync(pl_module.device)
        self.ends.append(time.perf_counter())


def step_phases(starts: list[float], ends: list[float], warmup: int) -> dict[str, list[float]]:
    """Per step after the first ``warmup`` (≥ 1: the first step has no previous end), in seconds:
    ``data_wait`` (previous end → start), ``compute`` (start → end), ``period`` (previous end → end)."""
    if warmup < 1 or len(starts) != len(ends):
        raise ValueError("needs warmup ≥ 1 and one end per start")
    steps = range(warmup, len(ends))
    return {
        "data_wait": [starts[i] - ends[i - 1] for i in steps],
        "compute": [ends[i] - starts[i] for i in steps],
        "period": [ends[i] - ends[i - 1] for i in steps],
    }


def build_recipe(cfg: DictConfig, timer: L.Callback) -> tuple:
    """Datamodule, module and trainer built as ``segloss.train`` builds them (no run directory, no logger)."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data, "data")
    datamodule.verify()
    module = build_module(cfg, datamodule=datamodule)
    trainer = build_trainer(cfg, [], callbacks=[timer])
    datamodule.check_world_size(trainer.world_size)
    return datamodule, module, trainer


def real_figures(timer: StepTimer, batch: int, warmup: int) -> dict:
    """Medians of the timed steps of the fit (and every timed step, in ms)."""
    phases = step_phases(timer.starts, timer.ends, warmup)
    period = statistics.median(phases["period"])
    real = {
        "images_per_s": batch / period,
        "period_ms_median": period * 1e3,
        "data_wait_ms_median": statistics.median(phases["data_wait"]) * 1e3,
        "compute_ms_median": statistics.median(phases["compute"]) * 1e3,
        "steps_run": len(timer.ends),
        "steps_timed": len(phases["period"]),
        "batch_shape": timer.batch_shape,
    }
    return real | {f"{name}_ms": [t * 1e3 for t in values] for name, values in phases.items()}


def run_raw(module, precision: str, shape: tuple[int, int, int], steps: int, warmup: int, device) -> dict:
    """The bare step of ``module``'s net, loss and optimizer on one in-memory batch of ``shape``."""
    if precision not in AUTOCAST:
        raise SystemExit(f"bench_recipe: the raw step runs {list(AUTOCAST)}, not trainer.precision={precision}")
    dtype = AUTOCAST[precision]
    batch, h, w = shape
    net, loss_fn = module.net.to(device).train(), module.loss.to(device)
    fmt = torch.channels_last if module.channels_last else torch.contiguous_format
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(batch, 3, h, w, generator=generator).to(device).contiguous(memory_format=fmt)
    mask = torch.randint(0, module.num_classes, (batch, h, w), generator=generator)
    mask[torch.rand(batch, h, w, generator=generator) < 0.05] = module.ignore_index
    mask = mask.to(device)
    optimizer = module.optimizer_factory(params=net.parameters())
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            out = net(image)
            if isinstance(out, tuple):  # auxiliary heads (model.aux): their losses at their weights, as the recipe
                logits, aux = out
                loss = loss_fn(logits, mask) + sum(w * loss_fn(a, mask) for w, a in zip(net.weights, aux, strict=True))
            else:
                loss = loss_fn(out, mask)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    timed = times[warmup:]
    median = statistics.median(timed)
    return {
        "images_per_s": batch / median,
        "step_ms_median": median * 1e3,
        "steps_run": len(times),
        "steps_timed": len(timed),
        "step_ms": [t * 1e3 for t in timed],
    }


# -------------------------------------------------------------------------------------------- report


def cpu_model() -> str:
    path = Path("/proc/cpuinfo")
    text = path.read_text(errors="replace") if path.is_file() else ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    cuda = device.type == "cuda"
    return {
        "device": device.type,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "lightning": L.__version__,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def print_table(report: dict) -> None:
    real, raw, m = report["results"]["real"], report["results"]["raw"], report["machine"]
    s = report["settings"]
    rows = [
        ("", "real (Trainer)", "raw step"),
        ("img/s", f"{real['images_per_s']:.2f}", f"{raw['images_per_s']:.2f}"),
        ("step ms (median)", f"{real['period_ms_median']:.1f}", f"{raw['step_ms_median']:.1f}"),
        ("  data wait ms", f"{real['data_wait_ms_median']:.1f}", "—"),
        ("  compute ms", f"{real['compute_ms_median']:.1f}", f"{raw['step_ms_median']:.1f}"),
        ("steps timed", str(real["steps_timed"]), str(raw["steps_timed"])),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    print(f"{m['gpu'] or m['cpu']} ({m['device']}); torch {m['torch']}, lightning {m['lightning']}")
    print(f"{' '.join(s['overrides'])}; precision {s['precision']}, batch {s['batch']}, crop {s['crop']}")
    for row in rows:
        print(f"{row[0].ljust(widths[0])}  {row[1].rjust(widths[1])}  {row[2].rjust(widths[2])}")
    ratio = report["results"]["ratio_real_to_raw"]
    met = "met" if ratio >= TARGET else "NOT met"
    print(f"real / raw img/s = {ratio:.3f} (target ≥ {TARGET} on a GPU: {met})")


def settings(args, cfg: DictConfig, overrides: list[str], trainer, frames: int, images: int) -> dict:
    """What was run: the config's figures that matter to a step's time, and the data's volume."""
    crop = list(cfg.data.train_transform.crop_size)
    return {
        "quick": args.quick,
        "overrides": overrides,
        "steps": args.steps,
        "warmup": args.warmup,
        "batch": cfg.data.batch_size // trainer.world_size,
        "crop": crop,
        "frame": list(args.frame_size),
        "distinct_frames": frames,
        "train_images": images,
        "num_workers": cfg.data.num_workers,
        "precision": trainer.precision,
        "channels_last": cfg.model.get("channels_last", False),
        "compile": cfg.model.get("compile", False),
        "net": cfg.model.net._target_,
        "loss": cfg.loss._target_,
        "optimizer": cfg.optimizer._target_,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "target_ratio": TARGET,
    }


# ----------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="CPU-sized smoke run (128×256 frames, U-Net)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per path, warm-up included "
                        "(default 60; 8 with --quick)")  # fmt: skip
    parser.add_argument("--warmup", type=int, default=None, help="first steps not timed (default 10; 3 --quick)")
    parser.add_argument("--frames", type=int, default=16, help="distinct generated training frames")
    parser.add_argument("--data-dir", type=Path, default=None, help="keep the frames here (default: temporary)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/...)")
    parser.add_argument("--overrides", nargs="*", default=[], metavar="KEY=VALUE", help="Hydra overrides, last")
    args = parser.parse_args(argv)
    args.steps = args.steps if args.steps is not None else (8 if args.quick else 60)
    args.warmup = args.warmup if args.warmup is not None else (3 if args.quick else 10)
    if args.warmup < 1 or args.steps <= args.warmup or args.frames < 1:
        parser.error("needs --warmup ≥ 1, --steps > --warmup and --frames ≥ 1")
    args.frame_size = (128, 256) if args.quick else (1024, 2048)
    args.out = args.out or RESULTS / ("recipe_quick.json" if args.quick else "recipe.json")
    return args


def prepare_data(scratch: Path, args, images: int) -> tuple[Path, int]:
    """Generated frames (kept in ``scratch``) and a fresh tree of links to them; (its root, distinct frames)."""
    height, width = args.frame_size
    count = min(args.frames, images)
    frames = generate_frames(scratch / f"frames_{count}_{height}x{width}", count, height, width)
    root = scratch / "cityscapes"
    shutil.rmtree(root, ignore_errors=True)
    link_dataset(root, frames, images)
    return root, count


def benchmark(args, scratch: Path) -> dict:
    device = torch.device(args.device)
    overrides = [*BASE_OVERRIDES[args.device], *(QUICK_OVERRIDES if args.quick else []), *args.overrides]
    cfg = compose_config(overrides, scratch / "run")
    images = cfg.data.batch_size * args.steps  # one epoch: no epoch boundary among the timed steps
    root, frames = prepare_data(scratch, args, images)
    timed_run_config(cfg, root, args.steps)
    check_config(cfg)
    timer = StepTimer()
    datamodule, module, trainer = build_recipe(cfg, timer)
    raw_module = build_module(cfg, datamodule=datamodule)  # the same config, fresh weights
    trainer.fit(module, datamodule=datamodule)
    report_settings = settings(args, cfg, overrides, trainer, frames, images)
    real = real_figures(timer, report_settings["batch"], args.warmup)
    del datamodule, module, trainer  # the loader's workers end here
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    shape = (report_settings["batch"], *report_settings["crop"])
    raw = run_raw(raw_module, report_settings["precision"], shape, args.steps, args.warmup, device)
    results = {"real": real, "raw": raw, "ratio_real_to_raw": real["images_per_s"] / raw["images_per_s"]}
    results["target_met"] = results["ratio_real_to_raw"] >= TARGET
    return {"machine": machine_info(device), "settings": report_settings, "results": results}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "bench_recipe: needs a CUDA GPU (none found) — run `make bench-recipe` on a GPU machine, "
            "or `python benchmarks/bench_recipe.py --device cpu --quick` for a CPU smoke run."
        )
        return 0
    with tempfile.TemporaryDirectory(prefix="bench_recipe_") as tmp:
        scratch = args.data_dir or Path(tmp)
        report = benchmark(args, scratch)
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
