"""How far bf16, channels-last and compilation can take a training step whose time is convolutions:
each ``bench/train_speed.py`` model's training step profiled (``torch.profiler``, CPU) in its
float32 eager variant and in its fastest (``all``: bf16 autocast, channels-last, compiled), the
convolutions' share of each (the self time of every profiled op whose name holds ``conv``: forward
and backward, oneDNN's or the fallback's).

The bound printed is Amdahl's: were everything but the convolutions free in the fast variant, the
step ratio to float32 could reach ``fp32 step / convolutions of the fast step``. The profiled
steps run a little slower than unprofiled ones; both variants alike. Prints a markdown table and
writes JSON.

    python bench/conv_layers.py --threads 1
    python bench/conv_layers.py --threads 1 --models LearnedPD --steps 2   # a quick look
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from common import RESULTS, add_threads_argument, first_samples, machine_info, set_threads
from lightning_recon.data import SimulatedCTDataModule
from train_speed import MODELS, VariantRun

VARIANTS = ("fp32", "all")


def profiled_step(run: VariantRun, steps: int) -> dict:
    """ms per step and ms of convolutions per step over ``steps`` profiled steps."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run.steps_per_second(steps)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e3 / steps
    conv = sum(e.self_cpu_time_total for e in events if "conv" in e.key.lower()) / 1e3 / steps
    return {"step_ms": total, "conv_ms": conv, "conv_share": conv / total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--preset", default="ellipses-small")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="profiled steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    parser.add_argument("--json", default=None, help="JSON output (default: bench/results/conv_layers.json)")
    add_threads_argument(parser)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    data = SimulatedCTDataModule(args.preset, batch_size=args.batch_size, train_length=args.batch_size)
    batch = first_samples(data, "train", args.batch_size, keys=["ground_truth", "measurement", "fbp"])

    rows = []
    for name in args.models:
        row = {"model": name}
        for variant in VARIANTS:
            run = VariantRun(name, variant, data.forward_model_dict, batch, torch.device("cpu"), "inductor")
            run.warm_up(args.warmup)
            row[variant] = profiled_step(run, args.steps)
        row["step_ratio"] = row["fp32"]["step_ms"] / row["all"]["step_ms"]
        row["bound"] = row["fp32"]["step_ms"] / row["all"]["conv_ms"]
        rows.append(row)
        print(f"{name}: {row}", flush=True)

    print(f"\n{args.preset}, batch {args.batch_size}, CPU, {threads} thread(s), {args.steps} profiled steps per variant")
    print("| model | fp32 step (ms) | its convolutions | fast step (ms) | its convolutions | step ratio | "
          "bound if only convolutions were left |\n|---|---|---|---|---|---|---|")
    for r in rows:
        f, a = r["fp32"], r["all"]
        print(f"| {r['model']} | {f['step_ms']:.0f} | {f['conv_ms']:.0f} ms ({f['conv_share']:.0%}) | {a['step_ms']:.0f} | "
              f"{a['conv_ms']:.0f} ms ({a['conv_share']:.0%}) | {r['step_ratio']:.2f}× | {r['bound']:.2f}× |")
    out = Path(args.json or RESULTS / "conv_layers.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(machine_info=machine_info(), threads=threads, preset=args.preset,
                                   batch=args.batch_size, steps=args.steps, models=rows), indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
