"""Training-step benchmark: images/s, peak memory and MFU of one segmentation training step per fast path.

    python benchmarks/bench_train_step.py [--device cuda|cpu] [--steps 20] [--warmup 5]
        [--nets deeplabv3plus,unet] [--variants fp32,bf16,bf16+channels_last,bf16+channels_last+compile]
        [--quick] [--out benchmarks/results/train_step.json]

Nets, built from their configs (configs/model/*.yaml, ``net`` node, 19 classes, random weights, nothing
downloaded): smp DeepLabV3+ with a ResNet-50 encoder at 512×1024 and the segloss U-Net at 512×512, batch 8.
Variants, timed in the same run on fresh nets: ``fp32`` (float32, NCHW; PyTorch's default TF32 settings,
recorded in the JSON), ``bf16`` (torch.autocast bf16), ``bf16+channels_last`` (net and input
channels_last), ``bf16+channels_last+compile`` (torch.compile of the net). A step is zero_grad, forward
(under autocast for bf16), ``F.cross_entropy(logits, target, ignore_index=255)``, backward, SGD step
(lr 0.01, momentum 0.9). images/s is batch / median step time after warm-up (CUDA synchronised around each
step); peak memory is torch.cuda.max_memory_allocated, reset per variant (null on CPU). The FLOPs of one
step (forward + backward) are counted with torch.utils.flop_counter.FlopCounterMode on the eager net; the
peak is measured in the same run as the median TFLOP/s of a bf16 matmul (8192² @ 8192²), and
MFU = step FLOPs × steps/s / peak. Targets (the issue): bf16+channels_last ≥ 2× the fp32 images/s, and
MFU ≥ 40 % of the measured bf16 matmul peak; the table says whether each is met.

Without a CUDA GPU the default ``--device cuda`` prints how to run it and exits 0 (no JSON). ``--quick``
(batch 2, 64×128, 2 steps, 1 warm-up, a 256² matmul) is a smoke run, e.g. ``--device cpu --quick``;
on CPU in quick mode the compile variant is skipped unless ``--variants`` names it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from segloss.utils.config import CONFIG_DIR

NUM_CLASSES = 19
VARIANTS = ("fp32", "bf16", "bf16+channels_last", "bf16+channels_last+compile")
SIZES = {"deeplabv3plus": (512, 1024), "unet": (512, 512)}  # (H, W) at full size; batch 8
MFU_TARGET, SPEEDUP_TARGET = 0.40, 2.0
RESULTS = Path(__file__).resolve().parent / "results"


def build_net(name: str) -> torch.nn.Module:
    """Instantiate the ``net`` node of configs/model/<name>.yaml (its ``defaults`` merged first), 19 classes."""
    node = OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml")
    cfg = OmegaConf.create()
    for base in node.get("defaults", []):
        if base != "_self_":
            cfg = OmegaConf.merge(cfg, OmegaConf.load(CONFIG_DIR / "model" / f"{base}.yaml").get("net", {}))
    cfg = OmegaConf.merge(cfg, node.get("net", {}))
    cfg.num_classes = NUM_CLASSES
    if "encoder_weights" in cfg:
        cfg.encoder_weights = None  # never download
    return instantiate(cfg)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, n: int, repeats: int, inner: int) -> float:
    """Median FLOP/s of a bf16 n×n @ n×n matmul (``inner`` back-to-back per timed repeat)."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for _ in range(inner):
            a @ b
        sync(device)
        times.append((time.perf_counter() - start) / inner)
    return 2 * n**3 / statistics.median(times)


def run_variant(net_name: str, variant: str, args, device: torch.device, shape) -> dict:
    batch, h, w = shape
    bf16, channels_last, compiled = "bf16" in variant, "channels_last" in variant, "compile" in variant
    torch.manual_seed(0)
    net = build_net(net_name).to(device).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    image = torch.randn(batch, 3, h, w, device=device).contiguous(memory_format=fmt)
    target = torch.randint(0, NUM_CLASSES, (batch, h, w), device=device)
    target[torch.rand(batch, h, w, device=device) < 0.05] = 255
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    model = torch.compile(net) if compiled else net

    def step(m: torch.nn.Module) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(m(image), target, ignore_index=255)
        loss.backward()
        optimizer.step()

    counter = FlopCounterMode(display=False)
    with counter:
        step(net)  # the eager net: the count is that of the computation, whatever runs it
    flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        step(model)
    times = []
    for _ in range(args.steps):
        sync(device)
        start = time.perf_counter()
        step(model)
        sync(device)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    peak_mem = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {
        "status": "ok",
        "images_per_s": batch / median,
        "step_ms_median": median * 1e3,
        "step_ms": [t * 1e3 for t in times],
        "flops_per_step": flops,
        "achieved_tflops": flops / median / 1e12,
        "peak_memory_bytes": peak_mem,
    }


def fmt_row(cells, widths) -> str:
    cells = [str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
    return "  ".join(cells).rstrip()


def print_table(results: dict, peak: float) -> None:
    head = ("net", "variant", "images/s", "× fp32", "peak mem GiB", "GFLOP/step", "TFLOP/s", "MFU", "MFU≥40%")
    rows = []
    for net_name, variants in results.items():
        for variant, r in variants.items():
            if r["status"] != "ok":
                rows.append((net_name, variant, "FAILED", "", "", "", "", "", ""))
                continue
            mem = "—" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**30:.2f}"
            speed = "—" if r["speedup_vs_fp32"] is None else f"{r['speedup_vs_fp32']:.2f}"
            rows.append(
                (net_name, variant, f"{r['images_per_s']:.2f}", speed, mem, f"{r['flops_per_step'] / 1e9:.1f}",
                 f"{r['achieved_tflops']:.3f}", f"{100 * r['mfu']:.1f}%", "yes" if r["mfu_target_met"] else "no")
            )  # fmt: skip
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    print(f"bf16 matmul peak (measured): {peak / 1e12:.3f} TFLOP/s")
    print(fmt_row(head, widths))
    print(fmt_row(["-" * w for w in widths], widths))
    for row in rows:
        print(fmt_row(row, widths))
    for net_name, variants in results.items():
        for variant, r in variants.items():
            if r["status"] != "ok":
                print(f"{net_name} {variant} failed: {r['error']}")
        r = variants.get("bf16+channels_last", {})
        if r.get("speedup_vs_fp32") is not None:
            met = "met" if r["speedup_vs_fp32"] >= SPEEDUP_TARGET else "NOT met"
            print(f"{net_name}: bf16+channels_last = {r['speedup_vs_fp32']:.2f}× fp32 (target ≥ 2×: {met})")


def model_flops_utilisation(flops_per_step: float, images_per_s: float, batch: int, peak_flops: float) -> float:
    """MFU = step FLOPs × steps/s ÷ peak FLOP/s, with steps/s = images/s ÷ batch."""
    return flops_per_step * images_per_s / batch / peak_flops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20; 2 with --quick)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 5; 1 with --quick)")
    parser.add_argument("--nets", default="deeplabv3plus,unet")
    parser.add_argument("--variants", default=None, help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run (batch 2, 64×128)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/...)")
    args = parser.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "bench_train_step: needs a CUDA GPU (none found) — run `make bench-train-step` on a GPU machine, "
            "or `python benchmarks/bench_train_step.py --device cpu --quick` for a CPU smoke run."
        )
        return 0
    nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    variants = [v.strip() for v in (args.variants or ",".join(VARIANTS)).split(",") if v.strip()]
    for name, known in (("net", SIZES), ("variant", VARIANTS)):
        unknown = [x for x in (nets if name == "net" else variants) if x not in known]
        if unknown:
            parser.error(f"unknown {name}(s) {unknown}; choose from {list(known)}")
    if args.quick and args.device == "cpu" and args.variants is None:
        variants = [v for v in variants if "compile" not in v]
    args.steps = args.steps if args.steps is not None else (2 if args.quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be ≥ 1 and --warmup ≥ 0")
    batch = 2 if args.quick else 8
    matmul_n, repeats, inner = (256, 3, 1) if args.quick else (8192, 10, 10)
    out = args.out or RESULTS / ("train_step_quick.json" if args.quick else "train_step.json")

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    peak = matmul_peak(device, matmul_n, repeats, inner)
    results: dict[str, dict[str, dict]] = {}
    for net_name in nets:
        h, w = (64, 128) if args.quick else SIZES[net_name]
        results[net_name] = {}
        for variant in variants:
            print(f"… {net_name} {variant} ({batch}×3×{h}×{w})", file=sys.stderr, flush=True)
            try:
                r = run_variant(net_name, variant, args, device, (batch, h, w))
            except Exception as err:  # a failed variant (compile, OOM) is reported, the others still run
                r = {"status": "failed", "error": (str(err).strip().splitlines() or [type(err).__name__])[0]}
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            if r["status"] == "ok":
                r["mfu"] = model_flops_utilisation(r["flops_per_step"], r["images_per_s"], batch, peak)
                r["mfu_target_met"] = r["mfu"] >= MFU_TARGET
            r.update(net=net_name, variant=variant, batch=batch, height=h, width=w)
            results[net_name][variant] = r
        base = results[net_name].get("fp32", {})
        for r in results[net_name].values():
            ok = r["status"] == "ok" and base.get("status") == "ok"
            r["speedup_vs_fp32"] = r["images_per_s"] / base["images_per_s"] if ok else None
        cl = results[net_name].get("bf16+channels_last", {})
        if cl.get("speedup_vs_fp32") is not None:
            cl["speedup_target_met"] = cl["speedup_vs_fp32"] >= SPEEDUP_TARGET

    print_table(results, peak)
    cuda = device.type == "cuda"
    machine = {"device": args.device, "gpu": torch.cuda.get_device_name(device) if cuda else None}
    machine |= {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    machine |= {"torch_threads": torch.get_num_threads(), "torch": torch.__version__, "cuda": torch.version.cuda}
    settings = {"quick": args.quick, "steps": args.steps, "warmup": args.warmup, "batch": batch}
    settings |= {"num_classes": NUM_CLASSES, "loss": "F.cross_entropy(ignore_index=255)"}
    settings |= {"optimizer": "SGD(lr=0.01, momentum=0.9)", "cudnn_benchmark": torch.backends.cudnn.benchmark}
    settings |= {"cudnn_allow_tf32": torch.backends.cudnn.allow_tf32}
    settings |= {"matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    settings["matmul"] = {"n": matmul_n, "dtype": "bfloat16", "repeats": repeats, "inner": inner}
    settings["targets"] = {"bf16_channels_last_speedup_vs_fp32": SPEEDUP_TARGET, "mfu": MFU_TARGET}
    report = {"machine": machine, "settings": settings, "peak_bf16_matmul_tflops": peak / 1e12, "results": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
