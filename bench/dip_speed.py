"""DIP iterations per second: one iteration per Lightning step (DIP's loop before
``iterations_per_step`` existed) against several per step (``DeepImagePrior(iterations_per_step=k)``),
side by side in one run.

The problem has the tooth's size in ``finetune.py --binning 4 --num-angles 30``: a 160² image, 30
parallel-beam angles, a 5-scale U-Net with 32 channels and TV (a seeded ellipse phantom stands in
for the scan, so the script needs no data). Prints a table and writes ``bench/results/dip_speed-<device>.json``.

    python bench/dip_speed.py --accelerator cpu --iterations 150
    python bench/dip_speed.py --accelerator gpu --iterations 3000 --per-step 1 25 100
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import lightning as L
import torch

from lightning_recon.data import EllipsesDataset
from lightning_recon.methods.dip import DeepImagePrior
from lightning_recon.physics import ParallelBeam2D

from common import RESULTS, fit_dip, machine_info


def run(y: torch.Tensor, geometry: ParallelBeam2D, per_step: int, iterations: int, accelerator: str) -> dict:
    L.seed_everything(0, verbose=False)
    model = DeepImagePrior(geometry.to_dict(), channels=(32,) * 5, skip_channels=(4,) * 5, tv_weight=0.04,
                           iterations_per_step=per_step)
    seconds = fit_dip(model, y, iterations, accelerator)["fit_seconds"]
    return {"iterations_per_step": per_step, "iterations": len(model.losses), "seconds": seconds,
            "iterations_per_second": len(model.losses) / seconds, "final_loss": model.losses[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--per-step", type=int, nargs="+", default=[1, 25], help="first entry is the baseline")
    parser.add_argument("--warmup", type=int, default=20, help="untimed iterations first (kernels, matrix build)")
    parser.add_argument("--json", default=None, help="where to write the JSON (default bench/results/dip_speed-<device>.json)")
    args = parser.parse_args()
    torch.set_float32_matmul_precision("high")
    geometry = ParallelBeam2D((160, 160), num_angles=30)
    sample = EllipsesDataset(geometry, length=1, seed=0, relative_std=0.02)[0]
    y = sample["measurement"][None]
    run(y, geometry, 1, args.warmup, args.accelerator)
    rows = [run(y, geometry, k, args.iterations, args.accelerator) for k in args.per_step]
    base = rows[0]["iterations_per_second"]
    device = torch.cuda.get_device_name() if args.accelerator == "gpu" else "cpu"
    print(f"DIP+TV, 160², 30 angles, U-Net 5 × 32 channels, {args.iterations} iterations, {device}")
    print("| iterations per step | it/s | × baseline | final loss |\n|---|---|---|---|")
    for row in rows:
        row["speedup"] = row["iterations_per_second"] / base
        print(f"| {row['iterations_per_step']} | {row['iterations_per_second']:.1f} | {row['speedup']:.2f} | "
              f"{row['final_loss']:.5f} |")
    RESULTS.mkdir(exist_ok=True)
    out = Path(args.json) if args.json else RESULTS / f"dip_speed-{'gpu' if args.accelerator == 'gpu' else 'cpu'}.json"
    out.write_text(json.dumps({"device": device, "machine_info": machine_info(), "args": vars(args), "rows": rows},
                              indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
