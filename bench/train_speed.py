"""Training steps per second with data included: the old path against the new one, side by side.

- ``old``: samples simulated by DataLoader workers on the CPU (``simulate_on="cpu"``), float32, the
  operator's NaN check (one host synchronisation per operator call) switched back on.
- ``new``: samples simulated on the device from index batches (``simulate_on="device"``), bf16
  autocast (the operator stays float32), cuDNN autotuning, no host synchronisation in the step;
  ``new+cl`` adds channels-last weights.
- ``model``: the new settings on one fixed batch already on the device (the model alone).

One step = next batch (simulated, moved), forward, MSE loss, backward, Adam update. The first
``--warmup`` steps are not timed; they must drain the batches the old path's workers prefetch
(2 per worker) or the old path is timed on prefetched data (the 2026-11-28 H200 run used 5 warm-up
and 20 timed steps with 12 workers: its "old" figures are inflated, see docs/benchmarks.md).
Prints a markdown table (steps/s and the new/old ratio, measured in this one run) and writes
JSON; with ``--profile`` adds the top CUDA kernels of one learned-PD step.

    python bench/train_speed.py --device cuda --steps 150 --warmup 40 --workers 14
    python bench/train_speed.py --device cpu --steps 3 --batch-size 4 --preset ellipses-small --workers 1
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from pathlib import Path

import torch

from lightning_recon.data import SimulatedCTDataModule
from lightning_recon.methods import FBPUNet, LearnedGD, LearnedPD

from common import add_device_argument, machine_info, synchronize

MODELS = {"FBPUNet": (FBPUNet, dict(channels=[32, 32, 64, 64, 128], norm="batch")),
          "LearnedGD": (LearnedGD, {}), "LearnedPD": (LearnedPD, {})}


def batches(data: SimulatedCTDataModule, device: torch.device):
    """Endless training batches on ``device``, through the data module's own transfer hook."""
    while True:
        for batch in data.train_dataloader():
            yield data.transfer_batch_to_device(batch, device, 0)


def time_steps(model, stream, steps: int, device: torch.device, bf16: bool, warmup: int, fused: bool = False) -> float:
    """Optimiser steps per second over ``steps`` steps after ``warmup``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused or None)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step():
        batch = next(stream)
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            pred = model.reconstruct(batch)
        loss = torch.nn.functional.mse_loss(pred.float(), batch["ground_truth"])
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return steps / (time.perf_counter() - start)


def build(name: str, data: SimulatedCTDataModule, device: torch.device, channels_last: bool, checked: bool):
    cls, kwargs = MODELS[name]
    model = cls(geometry=data.geometry_dict, channels_last=channels_last, **kwargs).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.operator.check_finite = checked
    return model.train()


def profile_step(data, device, steps: int = 3) -> list:
    """The top CUDA kernels of learned-PD steps on the new path (name, share of CUDA time, ms/step)."""
    from torch.profiler import ProfilerActivity, profile

    model = build("LearnedPD", data, device, channels_last=True, checked=False)
    stream = batches(data, device)
    time_steps(model, stream, 2, device, bf16=True, warmup=5)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        time_steps(model, stream, steps, device, bf16=True, warmup=0)
    events = [e for e in prof.key_averages() if e.device_time_total > 0 and e.key and not e.key.startswith("ProfilerStep")]
    kernels = [e for e in events if e.device_type.name == "CUDA"]
    total = sum(e.device_time_total for e in kernels) or 1.0
    kernels.sort(key=lambda e: e.device_time_total, reverse=True)
    return [{"kernel": e.key[:90], "share": e.device_time_total / total,
             "ms_per_step": e.device_time_total / 1e3 / steps, "calls_per_step": e.count / steps} for e in kernels[:12]]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_argument(parser)
    parser.add_argument("--preset", default="ellipses-30")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=40, help="untimed steps first (> 2 × workers)")
    parser.add_argument("--workers", type=int, default=14, help="DataLoader workers of the old path")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json", default="bench/results/train_speed.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = False
    torch.set_float32_matmul_precision("high")
    length = 32000
    old_data = SimulatedCTDataModule(args.preset, train_length=length, batch_size=args.batch_size,
                                     num_workers=args.workers, noise_stream="indexed")
    new_data = SimulatedCTDataModule(args.preset, train_length=length, batch_size=args.batch_size,
                                     simulate_on="device", num_workers=0)

    rows = []
    for name in args.models:
        row = {"model": name}
        torch.backends.cudnn.benchmark = False
        timing = dict(steps=args.steps, device=device, warmup=args.warmup)
        row["old"] = time_steps(build(name, old_data, device, False, True), batches(old_data, device), bf16=False,
                                **timing)
        torch.backends.cudnn.benchmark = device.type == "cuda"
        bf16 = device.type == "cuda"
        row["new"] = time_steps(build(name, new_data, device, False, False), batches(new_data, device), bf16=bf16,
                                **timing)
        row["new+cl"] = time_steps(build(name, new_data, device, True, False), batches(new_data, device), bf16=bf16,
                                   **timing)
        row["new+cl+fused"] = time_steps(build(name, new_data, device, True, False), batches(new_data, device),
                                         bf16=bf16, fused=device.type == "cuda", **timing)
        fixed = next(batches(new_data, device))
        row["model_only"] = time_steps(build(name, new_data, device, True, False), iter(lambda: fixed, None),
                                       bf16=bf16, **timing)
        row["speedup"] = max(row["new"], row["new+cl"], row["new+cl+fused"]) / row["old"]
        rows.append(row)
        print(f"{name}: {row}", flush=True)

    simulator = new_data.device_simulator()
    indices = torch.arange(args.batch_size)
    simulator(indices, device)
    synchronize(device)
    start = time.perf_counter()
    for k in range(10):
        simulator(indices + k * args.batch_size, device)
    synchronize(device)
    device_rate = 10 * args.batch_size / (time.perf_counter() - start)

    machine = dict(platform=platform.platform(), device=torch.cuda.get_device_name() if device.type == "cuda" else
                   platform.processor() or platform.machine(), cpu_threads=torch.get_num_threads(), torch=torch.__version__)
    print(f"\n{args.preset}, batch {args.batch_size}, data included, on {machine['device']} "
          f"(old: {args.workers} CPU workers, float32; new: device simulation, bf16)")
    print("| model | old steps/s | new steps/s | new + channels-last | + fused AdamW | model alone | best new / old |\n"
          "|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['old']:.1f} | {r['new']:.1f} | {r['new+cl']:.1f} | {r['new+cl+fused']:.1f} | "
              f"{r['model_only']:.1f} | {r['speedup']:.2f}× |")
    print(f"device simulation alone: {device_rate:.0f} samples/s")
    result = dict(machine=machine, machine_info=machine_info(), preset=args.preset, batch=args.batch_size,
                  steps=args.steps, warmup=args.warmup, workers=args.workers,
                  models=rows, device_simulation_samples_per_second=device_rate)
    if args.profile and device.type == "cuda":
        result["profile_learned_pd"] = profile_step(new_data, device)
        print("| kernel (learned PD, new path) | share of CUDA time | ms/step | calls/step |\n|---|---|---|---|")
        for k in result["profile_learned_pd"]:
            print(f"| {k['kernel']} | {k['share']:.1%} | {k['ms_per_step']:.2f} | {k['calls_per_step']:.0f} |")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
