"""A trained conditional WGAN on the first test samples: posterior mean PSNR/SSIM, calibration.

Loads a checkpoint (``weights_only``), draws ``--samples`` posterior samples per test measurement
of the preset (dival's ellipses standard by default: the first 100 test samples), and reports the
posterior mean's PSNR/SSIM (per-image data range), the pooled coverage of the pixel-wise central
90 % interval, and Spearman's correlation of the pixel-wise std with |mean − truth|. Prints a
table and writes JSON.

    python bench/cwgan_test.py outputs/h200_9min_cwgan/checkpoints/last.ckpt --samples 100
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from lightning_recon.data import SimulatedCTDataModule
from lightning_recon.methods import ConditionalWGAN
from lightning_recon.metrics import interval_coverage, psnr, spearman_std_error, ssim

from common import add_device_argument, first_samples, machine_info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--preset", default="ellipses-30")
    parser.add_argument("--test-samples", type=int, default=100)
    parser.add_argument("--samples", type=int, default=100, help="posterior samples per measurement")
    add_device_argument(parser)
    parser.add_argument("--json", type=Path, default=Path("bench/results/cwgan_test.json"))
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        parser.error(f"no checkpoint at {args.checkpoint}")

    model = ConditionalWGAN.load_from_checkpoint(args.checkpoint, map_location=args.device, weights_only=True).eval()
    data = SimulatedCTDataModule(args.preset, test_length=args.test_samples)
    test = first_samples(data, "test", args.test_samples, ("fbp", "ground_truth"))
    batch = {k: v.to(args.device) for k, v in test.items()}
    means, stds, coverages = [], [], []
    with torch.no_grad():
        for start in range(0, args.test_samples, 10):
            part = {k: v[start:start + 10] for k, v in batch.items()}
            samples = model.sample(part, args.samples).float()
            means.append(samples.mean(0))
            stds.append(samples.std(0))
            coverages.append(interval_coverage(samples, part["ground_truth"], level=0.9) * len(part["fbp"]))
    mean, std, truth = torch.cat(means), torch.cat(stds), batch["ground_truth"]
    psnrs, ssims = psnr(mean, truth).tolist(), ssim(mean, truth).tolist()
    row = {"method": "cWGAN posterior mean", "checkpoint": str(args.checkpoint), "preset": args.preset,
           "images": args.test_samples, "posterior_samples": args.samples,
           "psnr": statistics.mean(psnrs), "psnr_std": statistics.stdev(psnrs),
           "ssim": statistics.mean(ssims), "ssim_std": statistics.stdev(ssims),
           "coverage_90": sum(coverages) / args.test_samples,
           "spearman_std_abs_error": spearman_std_error(std.cpu(), (mean - truth).abs().cpu()),
           "machine_info": machine_info()}
    print("| method | PSNR (dB) | SSIM | coverage of 90 % interval | Spearman(std, |error|) |\n|---|---|---|---|---|")
    print(f"| {row['method']} ({args.samples} samples) | {row['psnr']:.2f} ± {row['psnr_std']:.2f} | "
          f"{row['ssim']:.3f} ± {row['ssim_std']:.3f} | {row['coverage_90']:.3f} | {row['spearman_std_abs_error']:.3f} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(row, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
