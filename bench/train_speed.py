"""Training steps per second, two comparisons.

**Variants** (default): one model's training step on one fixed batch (the model alone, no data
loading) in five variants side by side, at the ``make demo`` sizes (``ellipses-small``: 64², 30
angles, batch 8; learned GD as ``configs/experiment/demo_cpu.yaml``, learned PD and FBP + U-Net as
``configs/model/*.yaml``):

- ``fp32``: float32, eager (the default, every ratio is to it);
- ``channels_last``: weights in channels-last memory layout (the modules' ``channels_last`` setting);
- ``bf16``: bf16 autocast around the reconstruction (the operator stays float32, the loss float32);
- ``compile``: ``torch.compile(fullgraph=True)`` of forward and loss (the backward compiled with
  them; the operator is one custom op inside the graph, ``physics/operator.py``);
- ``fused``: AdamW's fused kernel (the modules' ``fused_optimizer``, on by default) instead of its
  loop over the parameter tensors (every other variant);
- ``all``: the four together.

One step = forward, MSE loss, backward, AdamW update. The variants run alternately in ``--rounds``
rounds of ``--steps`` timed steps each (the order rotating every round), so that a change in the
machine's load hits them all alike; the table shows the median steps/s over rounds and its ratio to
``fp32``. Compilation happens in the ``--warmup`` steps and is reported apart (``compile_s``).
Prints a markdown table and writes JSON (``--out``, default ``bench/results/train_speed_variants-<device>.json``).

    python bench/train_speed.py --threads 1                                   # CPU, demo sizes
    python bench/train_speed.py --threads 1 --steps 2 --rounds 1 --warmup 1   # a quick check that it runs
    python bench/train_speed.py --threads 1 --beside-busy-process             # beside one CPU-bound process

**Paths** (``--paths``): the old data path against the new one, data included (the GPU comparison
of ``bench/gpu_session.sh``):

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

    python bench/train_speed.py --paths --device cuda --steps 150 --warmup 40 --workers 14
    python bench/train_speed.py --paths --device cpu --steps 3 --batch-size 4 --preset ellipses-small --workers 1
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from lightning_recon.data import SimulatedCTDataModule
from lightning_recon.methods import FBPUNet, LearnedGD, LearnedPD
from lightning_recon.threads import choose_threads

from common import (RESULTS, add_device_argument, add_threads_argument, first_samples, machine_info, set_threads,
                    synchronize)

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
    model = cls(forward_model=data.forward_model_dict, channels_last=channels_last, **kwargs).to(device)
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


def run_paths(args) -> None:
    """The old data path against the new one (module docstring, ``--paths``)."""
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
    out = Path(args.out or RESULTS / "train_speed.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")



# -------------------------------------------------------------------------------------------------
# Variants: fp32 / channels_last / bf16 / compile / all, the model alone, at the demo's sizes
# -------------------------------------------------------------------------------------------------
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
VARIANTS = {  # name -> (channels_last, bf16, compile, fused AdamW)
    "fp32": (False, False, False, False),
    "channels_last": (True, False, False, False),
    "bf16": (False, True, False, False),
    "compile": (False, False, True, False),
    "fused": (False, False, False, True),
    "all": (True, True, True, True),
}
DEMO_MODELS = {  # model -> the config file whose model.init_args give its architecture
    "LearnedGD": CONFIGS / "experiment" / "demo_cpu.yaml",
    "LearnedPD": CONFIGS / "model" / "learned_pd.yaml",
    "FBPUNet": CONFIGS / "model" / "fbp_unet.yaml",
}


def architecture(name: str) -> dict:
    """The architecture arguments of ``name`` in its config (the class's own ``__init__`` arguments
    there, optimiser settings left out)."""
    cls = MODELS[name][0]
    own = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs", "betas"}
    init_args = yaml.safe_load(DEMO_MODELS[name].read_text())["model"]["init_args"]
    return {key: value for key, value in init_args.items() if key in own}


class VariantRun:
    """One model in one variant: its module, AdamW, and the (possibly compiled) forward + loss."""

    def __init__(self, name: str, variant: str, geometry: dict, batch: dict, device: torch.device,
                 compile_backend: str):
        channels_last, bf16, compiled, fused = VARIANTS[variant]
        torch.manual_seed(0)  # every variant starts from the same weights
        model = MODELS[name][0](forward_model=geometry, results_dir=None, **architecture(name)).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        with torch.no_grad():  # ‖A‖ of the unrolled methods, computed once outside the graph
            model.reconstruct(batch)
        self.model = model.train()
        self.batch = batch
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused or None)
        autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

        def forward_loss(batch):
            with autocast():
                pred = model.reconstruct(batch)
            return torch.nn.functional.mse_loss(pred.float(), batch["ground_truth"])

        self.forward_loss = torch.compile(forward_loss, fullgraph=True, backend=compile_backend) if compiled \
            else forward_loss
        self.device = device
        self.compiled = compiled
        self.first_step_seconds = None

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.forward_loss(self.batch).backward()
        self.optimizer.step()

    def warm_up(self, steps: int) -> None:
        """``steps`` untimed steps (at least 1), the first one timed: for a compiled variant, its time
        less a timed step's is the compile time (:meth:`compile_time`)."""
        start = time.perf_counter()
        self.step()
        synchronize(self.device)
        self.first_step_seconds = time.perf_counter() - start
        for _ in range(max(0, steps - 1)):
            self.step()

    def compile_time(self, steps_per_second: float):
        """Seconds the first step took beyond a timed step's: compilation (None when not compiled)."""
        return max(0.0, self.first_step_seconds - 1.0 / steps_per_second) if self.compiled else None

    def steps_per_second(self, steps: int) -> float:
        synchronize(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        synchronize(self.device)
        return steps / (time.perf_counter() - start)


def run_variants(args) -> None:
    """Every ``--models`` × ``--variants``, alternating in rounds (module docstring)."""
    device = torch.device(args.device)
    policy_threads = choose_threads()  # what lightning_recon.threads would choose here, at start-up
    unknown = set(args.models) - set(DEMO_MODELS)
    if unknown:
        raise SystemExit(f"--models: no demo configuration for {sorted(unknown)} (known: {sorted(DEMO_MODELS)})")
    if "fp32" not in args.variants:
        raise SystemExit("--variants must include fp32 (the reference of every ratio)")
    data = SimulatedCTDataModule(args.preset, batch_size=args.batch_size, train_length=args.batch_size)
    batch = {key: value.to(device) for key, value in
             first_samples(data, "train", args.batch_size, keys=["ground_truth", "measurement", "fbp"]).items()}
    print(f"{args.preset}: images {tuple(batch['ground_truth'].shape)}, "
          f"measurements {tuple(batch['measurement'].shape)}, {args.rounds} round(s) x {args.steps} step(s) per "
          f"variant, {args.warmup} warm-up step(s)", flush=True)

    rows = []
    for name in args.models:
        runs, row = {}, {"model": name, "architecture": architecture(name), "variants": {}}
        for variant in args.variants:
            try:
                run = VariantRun(name, variant, data.forward_model_dict, batch, device, args.compile_backend)
                run.warm_up(args.warmup)
                runs[variant] = run
                row["variants"][variant] = {"steps_per_second": []}
            except Exception as error:  # a variant this machine or torch cannot do: recorded, the others go on
                row["variants"][variant] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
                print(f"{name} {variant}: {row['variants'][variant]['error']}", flush=True)
        order = list(runs)
        for round_index in range(args.rounds):
            shift = round_index % max(1, len(order))
            for variant in order[shift:] + order[:shift]:
                row["variants"][variant]["steps_per_second"].append(runs[variant].steps_per_second(args.steps))
        for variant, result in row["variants"].items():
            if "error" not in result:
                result["median"] = statistics.median(result["steps_per_second"])
                result["compile_s"] = runs[variant].compile_time(result["median"])
        reference = row["variants"].get("fp32", {}).get("median")
        for result in row["variants"].values():
            if "median" in result and reference:
                result["ratio_to_fp32"] = result["median"] / reference
        rows.append(row)
        print(f"{name}: " + ", ".join(f"{v} {r.get('median', float('nan')):.2f}/s" for v, r in row["variants"].items()),
              flush=True)
        del runs

    threads = torch.get_num_threads()
    print(f"\nsteps/s (ratio to fp32), {args.preset} batch {args.batch_size}, {device.type}, {threads} thread(s), "
          f"median of {args.rounds} round(s) x {args.steps} steps; compile: {args.compile_backend}")
    print("| model | " + " | ".join(args.variants) + " | compile time |\n|---|" + "---|" * (len(args.variants) + 1))
    for row in rows:
        cells = []
        for variant in args.variants:
            result = row["variants"][variant]
            cells.append("error" if "error" in result else
                         f"{result['median']:.2f} ({result.get('ratio_to_fp32', float('nan')):.2f}×)")
        compile_times = [f"{variant}: {result['compile_s']:.0f} s" for variant, result in row["variants"].items()
                         if result.get("compile_s") is not None]
        print(f"| {row['model']} | " + " | ".join(cells) + f" | {', '.join(compile_times) or '-'} |")
    result = dict(machine_info=machine_info(), threads=threads, policy_threads=policy_threads, device=str(device),
                  preset=args.preset, batch=args.batch_size, steps=args.steps, rounds=args.rounds, warmup=args.warmup,
                  beside_busy_process=args.beside_busy_process,
                  compile_backend=args.compile_backend, variants={k: dict(zip(("channels_last", "bf16", "compile", "fused"), v))
                                                                  for k, v in VARIANTS.items() if k in args.variants},
                  models=rows)
    out = Path(args.out or RESULTS / f"train_speed_variants-{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_argument(parser)
    add_threads_argument(parser)
    parser.add_argument("--paths", action="store_true", help="the old data path against the new one, data included")
    parser.add_argument("--preset", default=None,
                        help="data preset (default: ellipses-small; with --paths ellipses-30)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 (the demo's); with --paths 32")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (per variant and round; default 5; "
                        "with --paths 150)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps first (default 3, compilation included; with --paths 40: > 2 x workers)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds over the variants (variants only)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the compiled variants")
    parser.add_argument("--workers", type=int, default=14, help="DataLoader workers of the old path (--paths)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--profile", action="store_true", help="--paths on CUDA: the top kernels of learned PD")
    parser.add_argument("--beside-busy-process", action="store_true",
                        help="time beside one competing CPU-bound process (a Python busy loop, started here and "
                             "stopped at the end): the machine as a user's desktop or a shared node")
    parser.add_argument("--out", "--json", dest="out", default=None, help="JSON output (default under bench/results/)")
    args = parser.parse_args(argv)
    defaults = dict(preset="ellipses-30", batch_size=32, steps=150, warmup=40) if args.paths else \
        dict(preset="ellipses-small", batch_size=8, steps=5, warmup=3)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if min(args.steps, args.rounds, args.batch_size) < 1 or args.warmup < 0:
        raise SystemExit("--steps, --rounds and --batch-size must be >= 1, --warmup >= 0")
    set_threads(args.threads)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.beside_busy_process else None
    try:
        if args.paths:
            run_paths(args)
        else:
            run_variants(args)
    finally:
        if busy is not None:
            busy.kill()


if __name__ == "__main__":
    main()
