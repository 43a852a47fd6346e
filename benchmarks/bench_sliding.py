"""3D sliding-window inference and 3D training-step benchmark (CPU by default).

    OMP_NUM_THREADS=1 python benchmarks/bench_sliding.py [--device cpu|cuda] [--repeats 3]
        [--volume 64 96 96] [--patch 32 64 64] [--train-patches 32x64x64,64x128x128] [--nets demo,nnunet]
        [--batch 1] [--out benchmarks/results/sliding.json]

**Sliding window**: :func:`segloss.models.sliding.gaussian_sliding_window` against MONAI's
``sliding_window_inference(overlap=0.5, mode="gaussian", sigma_scale=0.125)``, the same demo
:class:`~segloss.models.nets.unet3d.UNet3D` (configs/model/unet3d.yaml: base 8, depth 3, 1 channel, 3 classes,
random weights, eval, ``torch.inference_mode``) on the same volume (1×1×64×96×96, patch 32×64×64: 3 × 2 × 2 = 12
windows, one window per call in both); one warm-up then ``--repeats`` timed runs each, interleaved; median wall
and CPU (process) seconds and their ratios (MONAI / ours; on a shared machine the CPU time is the steadier).
The window starts coincide for these sizes; the largest |difference| of the logits is printed against MONAI
given our Gaussian map (``roi_weight_map``) and with its own map (which floors the weights at 1e-3, see
segloss.models.sliding).

**Training step** per patch size and net width (``demo``: base 8, depth 3; ``nnunet``: nnU-Net's 3d_fullres
widths, base 32, max 320, depth 5, 31 M parameters): zero_grad, forward, cross-entropy over 3 classes, backward,
SGD step (nnU-Net's: momentum 0.99, Nesterov), batch ``--batch`` (1: the figures are per patch). Each
configuration runs in a forked process (a warm-up step, then ``--repeats`` timed steps, or none when the warm-up
took over 10 s: that step's time is reported): median seconds per step and per patch, and the peak resident
memory of the steps over that before them (``VmHWM − VmRSS`` from /proc after ``clear_refs``: activations,
gradients, optimizer state, workspace) on CPU, ``torch.cuda.max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from segloss.utils.environment import cpu_model

NUM_CLASSES = 3
NETS = {"demo": {"base_channels": 8, "max_channels": 320, "depth": 3},
        "nnunet": {"base_channels": 32, "max_channels": 320, "depth": 5}}  # fmt: skip


def _status(key: str) -> int:
    """A /proc/self/status field in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def train_step_figures(net_name: str, patch: tuple[int, ...], batch: int, repeats: int, device: str) -> dict:
    """Median step time and peak memory of a training step (module docstring), in this process."""
    from segloss.models.nets.unet3d import UNet3D

    torch.manual_seed(0)
    net = UNet3D(NUM_CLASSES, in_channels=1, **NETS[net_name]).to(device).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)  # nnU-Net's optimizer
    image = torch.randn(batch, 1, *patch, device=device)
    target = torch.randint(0, NUM_CLASSES, (batch, *patch), device=device)

    def step() -> tuple[float, float]:
        _sync(device)
        start, cpu = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(image), target).backward()
        optimizer.step()
        _sync(device)
        return time.perf_counter() - start, time.process_time() - cpu

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident size
        before = _status("VmRSS")
    warmup = step()
    times = [step() for _ in range(repeats)] if warmup[0] <= 10 else [warmup]  # a slow step: the warm-up alone
    peak = (torch.cuda.max_memory_allocated() if device == "cuda" else _status("VmHWM")) - before
    seconds, cpu = statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)
    return {"net": net_name, "patch": list(patch), "batch": batch, "warmup_s": round(warmup[0], 3),
            "step_s": round(seconds, 3), "step_cpu_s": round(cpu, 3), "s_per_patch": round(seconds / batch, 3),
            "steps_timed": len(times) if warmup[0] <= 10 else 0,
            "peak_mib": round(peak / 2**20, 1),
            "parameters_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 2)}  # fmt: skip


def _child(queue, *args) -> None:
    queue.put(train_step_figures(*args))


def in_fresh_process(*args) -> dict:
    """:func:`train_step_figures` in a forked process, so that its peak memory is its own."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, *args))
    process.start()
    result = queue.get()
    process.join()
    return result


def sliding_figures(volume: tuple[int, ...], patch: tuple[int, ...], repeats: int, device: str) -> dict:
    from monai.inferers import sliding_window_inference

    from segloss.models.nets.unet3d import UNet3D
    from segloss.models.sliding import gaussian_importance_map, gaussian_sliding_window, window_starts

    torch.manual_seed(0)
    net = UNet3D(NUM_CLASSES, in_channels=1, **NETS["demo"]).to(device).eval()
    image = torch.randn(1, 1, *volume, device=device)
    runs = {
        "segloss": lambda: gaussian_sliding_window(net, image, patch, step=0.5, window_batch=1),
        "monai": lambda: sliding_window_inference(
            image, patch, 1, net, overlap=0.5, mode="gaussian", sigma_scale=0.125
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    outputs = {}
    with torch.inference_mode():
        for name, run in runs.items():  # warm-up
            outputs[name] = run()
        for _ in range(repeats):
            for name, run in runs.items():
                _sync(device)
                start, cpu_start = time.perf_counter(), time.process_time()
                run()
                _sync(device)
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - cpu_start)
        same_map = sliding_window_inference(
            image, patch, 1, net, overlap=0.5, roi_weight_map=gaussian_importance_map(patch, device=device)
        )
    medians = {name: statistics.median(t) for name, t in times.items()}
    cpu_medians = {name: statistics.median(t) for name, t in cpu.items()}
    windows, coincide = 1, True
    for size, p in zip(volume, patch, strict=True):
        starts = window_starts(size, p)
        windows *= len(starts)
        interval = max(p // 2, 1)  # MONAI's starts at overlap 0.5: every ⌊P/2⌋, the last moved to the border
        coincide &= starts == sorted({min(i * interval, size - p) for i in range(size // interval + 2)})
    return {"volume": list(volume), "patch": list(patch), "windows": windows, "starts_as_monai": coincide,
            "repeats": repeats,
            "segloss_s": round(medians["segloss"], 3), "monai_s": round(medians["monai"], 3),
            "ratio_monai_over_segloss": round(medians["monai"] / medians["segloss"], 3),
            "segloss_cpu_s": round(cpu_medians["segloss"], 3), "monai_cpu_s": round(cpu_medians["monai"], 3),
            "ratio_cpu": round(cpu_medians["monai"] / cpu_medians["segloss"], 3),
            "times": {k: [round(x, 3) for x in v] for k, v in times.items()},
            "cpu_times": {k: [round(x, 3) for x in v] for k, v in cpu.items()},
            "max_abs_diff_same_map": float((outputs["segloss"] - same_map).abs().max()),
            "max_abs_diff_monai_map": float((outputs["segloss"] - outputs["monai"]).abs().max())}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--volume", type=int, nargs=3, default=[64, 96, 96])
    parser.add_argument("--patch", type=int, nargs=3, default=[32, 64, 64])
    parser.add_argument("--train-patches", default="32x64x64,64x128x128")
    parser.add_argument("--nets", default="demo,nnunet")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    header = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": args.device,
              "cpu": cpu_model(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}  # fmt: skip
    print(json.dumps(header))
    train = []  # forked before this process computes anything (no thread pools to inherit)
    for patch in [tuple(int(s) for s in p.split("x")) for p in args.train_patches.split(",") if p]:
        for name in [n for n in args.nets.split(",") if n]:
            row = in_fresh_process(name, patch, args.batch, args.repeats, args.device)
            train.append(row)
            timed = f"median of {row['steps_timed']}" if row["steps_timed"] else "the warm-up step alone"
            print(
                f"train step  {name:6s} patch {'×'.join(map(str, patch)):11s} batch {row['batch']}: "
                f"{row['step_s']:.3f} s/step ({row['step_cpu_s']:.3f} s CPU), {row['s_per_patch']:.3f} s/patch "
                f"({timed}), peak +{row['peak_mib']:.0f} MiB, {row['parameters_m']} M params",
                flush=True,
            )
    sliding = sliding_figures(tuple(args.volume), tuple(args.patch), args.repeats, args.device)
    same = "the same as" if sliding["starts_as_monai"] else "other than"
    print(
        f"sliding window {'×'.join(map(str, args.volume))}, patch {'×'.join(map(str, args.patch))}, "
        f"{sliding['windows']} windows (starts {same} MONAI's), medians of {args.repeats}: "
        f"segloss {sliding['segloss_s']:.3f} s wall / {sliding['segloss_cpu_s']:.3f} s CPU, "
        f"MONAI {sliding['monai_s']:.3f} s wall / {sliding['monai_cpu_s']:.3f} s CPU; MONAI/segloss "
        f"{sliding['ratio_monai_over_segloss']:.2f} (wall), {sliding['ratio_cpu']:.2f} (CPU); max |Δ| vs MONAI "
        f"with our map {sliding['max_abs_diff_same_map']:.2e}, "
        f"with MONAI's own map {sliding['max_abs_diff_monai_map']:.2e}"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**header, "sliding": sliding, "train_step": train}, indent=2) + "\n")


if __name__ == "__main__":
    main()
