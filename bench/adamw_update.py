"""AdamW's update alone, per model, in its three implementations: the loop over the parameter
tensors (torch's CPU default), ``foreach`` (one multi-tensor op per step of the formula) and
``fused`` (one kernel; the modules' ``fused_optimizer``, on by default). The gradients are fixed
random tensors; the implementations alternate in ``--rounds`` rounds of ``--updates`` timed
updates. Prints a markdown table (ms per update, median over rounds, and the loop / fused ratio)
and writes JSON.

    OMP_NUM_THREADS=1 python bench/adamw_update.py --threads 1
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from common import RESULTS, add_threads_argument, machine_info, set_threads
from train_speed import MODELS, architecture

IMPLEMENTATIONS = {"loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--updates", type=int, default=30, help="timed updates per implementation and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default=None, help="JSON output (default: bench/results/adamw_update.json)")
    add_threads_argument(parser)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    from lightning_recon.data import SimulatedCTDataModule

    geometry = SimulatedCTDataModule("ellipses-small").forward_model_dict
    rows = []
    for name in args.models:
        model = MODELS[name][0](forward_model=geometry, results_dir=None, **architecture(name))
        parameters = list(model.parameters())
        for parameter in parameters:
            parameter.grad = torch.randn_like(parameter)
        optimizers = {key: torch.optim.AdamW(parameters, lr=1e-4, **kwargs) for key, kwargs in IMPLEMENTATIONS.items()}
        for optimizer in optimizers.values():  # state allocated outside the timing
            for _ in range(3):
                optimizer.step()
        times = {key: [] for key in optimizers}
        keys = list(optimizers)
        for round_index in range(args.rounds):
            shift = round_index % len(keys)
            order = keys[shift:] + keys[:shift]
            for key in order:
                start = time.perf_counter()
                for _ in range(args.updates):
                    optimizers[key].step()
                times[key].append((time.perf_counter() - start) / args.updates * 1e3)
        row = dict(model=name, tensors=len(parameters), parameters=sum(p.numel() for p in parameters),
                   ms={key: statistics.median(values) for key, values in times.items()}, all_ms=times)
        row["loop_over_fused"] = row["ms"]["loop"] / row["ms"]["fused"]
        rows.append(row)

    lines = [f"AdamW update alone, ms (median of {args.rounds} rounds × {args.updates}), {threads} thread(s)", "",
             "| model | tensors | parameters | loop | foreach | fused | loop / fused |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['tensors']} | {r['parameters']:,} | {r['ms']['loop']:.2f} | "
                     f"{r['ms']['foreach']:.2f} | {r['ms']['fused']:.2f} | {r['loop_over_fused']:.1f}× |")
    table = "\n".join(lines)
    print(table)
    out = Path(args.json or RESULTS / "adamw_update.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(machine_info=machine_info(), threads=threads, rows=rows, table=table), indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
