"""Training steps per second of each supervised model, and the data pipeline's samples per second.

One optimiser step = forward, MSE loss, backward and Adam update on a fixed batch already on the
device (so the model alone is timed); the data line times one DataLoader worker simulating
ellipses-30 samples (phantom, projection, noise, FBP). Prints a table and writes JSON.

    python bench/train_speed.py                      # CUDA when present, else CPU
    python bench/train_speed.py --device cpu --steps 5
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from lightning_recon.data import SimulatedCTDataModule
from lightning_recon.methods import FBPUNet, LearnedGD, LearnedPD

MODELS = {"FBPUNet": FBPUNet, "LearnedGD": LearnedGD, "LearnedPD": LearnedPD}


def time_model(cls, geometry, batch, steps: int, device: str, precision: str) -> float:
    model = cls(geometry=geometry).to(device)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = torch.nn.functional.mse_loss(model.reconstruct(batch).float(), batch["ground_truth"])
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="ellipses-30")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--json", default="bench/results/train_speed.json")
    args = parser.parse_args(argv)

    data = SimulatedCTDataModule(args.preset, train_length=max(args.batch_size, 64), batch_size=args.batch_size)
    dataset = data.dataset("train")
    dataset[0]  # builds the worker's operators
    start = time.perf_counter()
    samples = [dataset[i] for i in range(args.batch_size)]
    data_rate = args.batch_size / (time.perf_counter() - start)
    batch = {k: torch.stack([s[k] for s in samples]).to(args.device) for k in ("ground_truth", "measurement", "fbp")}

    rows = []
    for name, cls in MODELS.items():
        rate = time_model(cls, data.geometry_dict, batch, args.steps, args.device, args.precision)
        rows.append(dict(model=name, steps_per_second=rate, images_per_second=rate * args.batch_size))
    machine = dict(platform=platform.platform(), device=torch.cuda.get_device_name() if args.device == "cuda" else
                   platform.processor() or platform.machine(), threads=torch.get_num_threads(), torch=torch.__version__)
    print(f"{args.preset}, batch {args.batch_size}, {args.precision}, on {machine['device']}")
    print("| model | steps/s | images/s |\n|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['steps_per_second']:.2f} | {r['images_per_second']:.1f} |")
    print(f"| data: one worker simulating samples | – | {data_rate:.1f} |")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(machine=machine, preset=args.preset, batch=args.batch_size, precision=args.precision,
                                   models=rows, data_samples_per_second_per_worker=data_rate), indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
