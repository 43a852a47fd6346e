"""Cost of the CRF post-processing (``inference.crf``) against the net's forward pass, on the same input.

    python benchmarks/bench_crf.py [--device cpu|cuda] [--size N C H W] [--iterations 5 10] [--repeats R]
                                   [--variant NAME=key:value,…] [--json PATH]

Times :func:`segloss.models.crf.mean_field` on N×C×H×W logits and an N×3×H×W image (1×19×512×1024 by default,
random logits and colours: the cost does not depend on the values) with 0 (the kernels and the unary only) and
each of ``--iterations`` mean-field steps, against the forward pass of the default U-Net
(``UNet(num_classes=C, base_channels=16, depth=3)``, eval mode, no autograd) on N×3×H×W, and prints the ratios.
Variants: ``default`` (the ``inference.crf=true`` window, radius 8 cells of 4 px) and ``full-res`` (radius 3
at full resolution, ``downsample=1``); ``--variant name=radius:5,downsample:2`` adds one. Median of R
interleaved repeats after one warm-up of each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch

from segloss.models.crf import DenseCRF, mean_field
from segloss.models.nets.unet import UNet

VARIANTS = {"default": {}, "full-res": {"radius": 3, "downsample": 1}}


def parse_variant(text: str) -> tuple[str, dict]:
    """``name=key:value,key:value`` → (name, {key: int or float or str})."""
    name, _, spec = text.partition("=")
    options = {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition(":")
        for kind in (int, float, str):
            try:
                options[key] = kind(value)
                break
            except ValueError:
                continue
    return name, options


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", type=int, nargs=4, default=(1, 19, 512, 1024), metavar=("N", "C", "H", "W"))
    parser.add_argument("--iterations", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variant", action="append", default=[], help="name=key:value,… (DenseCRF fields)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_crf: --device cuda needs a CUDA GPU; run with --device cpu here")
        return {}
    n, c, h, w = args.size
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(n, c, h, w, generator=g).to(args.device)
    rgb = (torch.rand(n, 3, h, w, generator=g) * 255).to(args.device)
    image = torch.randn(n, 3, h, w, generator=g).to(args.device)
    net = UNet(num_classes=c, base_channels=16, depth=3).to(args.device).eval()
    variants = {**VARIANTS, **dict(parse_variant(v) for v in args.variant)}
    jobs = {"net forward": lambda: net(image)}
    for name, options in variants.items():
        for iterations in [0, *args.iterations]:
            crf = DenseCRF(**{**options, "iterations": max(iterations, 1)})
            settings = {**asdict(crf), "iterations": iterations}  # 0: the kernels and the unary alone
            jobs[f"{name}, {iterations} it"] = lambda settings=settings: mean_field(logits, rgb, **settings)
    times: dict[str, list[float]] = {name: [] for name in jobs}
    names = list(jobs)
    with torch.inference_mode():
        for name in names:  # warm-up
            jobs[name]()
        for r in range(args.repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                sync(args.device)
                start = time.perf_counter()
                jobs[name]()
                sync(args.device)
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(v) for name, v in times.items()}
    forward = median["net forward"]
    print(f"CRF vs UNet(C={c}, base 16, depth 3) forward, N={n} {h}×{w}, {args.device}, "
          f"{torch.get_num_threads()} thread(s), median of {args.repeats}")  # fmt: skip
    for name, options in variants.items():
        crf = DenseCRF(**options)
        print(f"  {name}: radius={crf.radius}, downsample={crf.downsample} (reach ±{crf.radius * crf.downsample} px)")
    print(f"{'job':24s} {'s':>8s} {'× forward':>10s}")
    for name in names:
        print(f"{name:24s} {median[name]:8.3f} {median[name] / forward:10.2f}")
    result = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        },
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "variants": {name: asdict(DenseCRF(**options)) for name, options in variants.items()},
        "median_s": median,
        "ratio_to_forward": {name: median[name] / forward for name in names},
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
