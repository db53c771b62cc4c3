"""TV-PDHG on ellipses-30: α tuned on validation data, PSNR/SSIM on the first test samples.

α is the grid value with the best mean validation PSNR (per-image data range); the test split
is the preset's fixed one (dival's standard: phantom seed 1, dival's noise stream of seed 3), so every run
sees the same images.
FBP (the data module's Hann, 0.5) on the same images is reported alongside. Prints a markdown
table and writes JSON.

    python bench/tv_ellipses.py                                 # CUDA when present, else CPU; 1 CPU thread
    python bench/tv_ellipses.py --device cpu --threads 1 --iterations 500
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from lightning_recon.data import SimulatedCTDataModule
from lightning_recon.solvers import tune_alpha, tv_pdhg
from lightning_recon.metrics import psnr, ssim
from lightning_recon.physics import RayTransform

from common import add_device_argument, add_threads_argument, first_samples, machine_info, set_threads, synchronize

PUBLISHED = {"method": "TV (Baguer et al. 2020)", "psnr": 27.96, "ssim": 0.862}


def reconstruct_timed(measurements: torch.Tensor, ray_transform: RayTransform, alpha: float, iterations: int,
                      batch_size: int) -> Tuple[torch.Tensor, float]:
    """TV reconstructions ``(N, 1, H, W)`` in batches, and the seconds per image."""
    synchronize(measurements.device)
    start = time.perf_counter()
    recon = torch.cat([tv_pdhg(chunk, ray_transform, alpha, iterations=iterations)
                       for chunk in measurements.split(batch_size)])
    synchronize(measurements.device)
    return recon, (time.perf_counter() - start) / len(measurements)


def summary(method: str, pred: torch.Tensor, truth: torch.Tensor, seconds_per_image: Optional[float]) -> dict:
    """Mean ± std of per-image PSNR (dB) and SSIM, per-image data range."""
    psnrs, ssims = psnr(pred, truth).tolist(), ssim(pred, truth).tolist()
    return {
        "method": method,
        "psnr": statistics.mean(psnrs), "psnr_std": statistics.stdev(psnrs),
        "ssim": statistics.mean(ssims), "ssim_std": statistics.stdev(ssims),
        "seconds_per_image": seconds_per_image, "images": len(psnrs),
        "psnr_per_image": psnrs, "ssim_per_image": ssims,
    }


def markdown_table(rows: List[dict], iterations: int) -> str:
    lines = ["| method | PSNR (dB) | SSIM | iterations | s/image | images |", "|---|---|---|---|---|---|"]
    for row in rows:
        its = iterations if row["method"].startswith("TV-PDHG") else "–"
        seconds = "–" if row["seconds_per_image"] is None else f"{row['seconds_per_image']:.4f}"
        lines.append(f"| {row['method']} | {row['psnr']:.2f} ± {row['psnr_std']:.2f} | "
                     f"{row['ssim']:.3f} ± {row['ssim_std']:.3f} | {its} | {seconds} | "
                     f"{row['images']} |")
    lines.append(f"| {PUBLISHED['method']} | {PUBLISHED['psnr']:.2f} | {PUBLISHED['ssim']:.3f} | – | – | 100 |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_argument(parser)
    add_threads_argument(parser)
    parser.add_argument("--val-samples", type=int, default=20)
    parser.add_argument("--test-samples", type=int, default=100)
    parser.add_argument("--alphas", type=float, nargs="+", default=np.logspace(0, 2, 8).tolist(),
                        help="α grid (default: 8 values log-spaced over [1, 100])")
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "tv_ellipses.json")
    args = parser.parse_args()
    set_threads(args.threads)
    device = torch.device(args.device)

    datamodule = SimulatedCTDataModule("ellipses-30", val_length=args.val_samples, test_length=args.test_samples)
    keys = ("measurement", "ground_truth", "fbp")  # (N, 1, A, D) and (N, 1, H, W)
    val = {k: v.to(device) for k, v in first_samples(datamodule, "val", args.val_samples, keys).items()}
    test = {k: v.to(device) for k, v in first_samples(datamodule, "test", args.test_samples, keys).items()}
    ray_transform = RayTransform(datamodule.geometry)
    ray_transform.operator_norm(device=device)

    start = time.perf_counter()
    alpha, tuning = tune_alpha(val["measurement"], val["ground_truth"], ray_transform, args.alphas, args.iterations)
    tuning_seconds = time.perf_counter() - start
    print(f"α tuned on {args.val_samples} validation samples in {tuning_seconds:.0f} s: {alpha:.4g}")
    for candidate, score in tuning.items():
        print(f"  α = {candidate:8.4g}: {score:.2f} dB")

    recon, seconds_per_image = reconstruct_timed(test["measurement"], ray_transform, alpha, args.iterations,
                                                 args.batch_size)
    rows = [
        summary(f"TV-PDHG, α = {alpha:.3g}", recon, test["ground_truth"], seconds_per_image),
        summary("FBP (Hann, 0.5), from the data module", test["fbp"], test["ground_truth"], None),
    ]
    print(markdown_table(rows, args.iterations))

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "benchmark": "ellipses-30, first test samples, PSNR/SSIM with per-image data range",
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "threads": torch.get_num_threads()},
        "environment": {"torch": torch.__version__, "python": platform.python_version(), "device_name": device_name},
        "machine_info": machine_info(),
        "alpha": alpha, "tuning_psnr": {str(k): v for k, v in tuning.items()}, "tuning_seconds": tuning_seconds,
        "results": rows, "published": PUBLISHED,
    }, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
