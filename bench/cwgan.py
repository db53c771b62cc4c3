"""Conditional WGAN posterior sampler vs the supervised FBP + U-Net, same data and wall-clock budget.

The training split is simulated once and kept in memory (not counted in the budgets). Trains
``ConditionalWGAN`` and ``FBPUNet`` one after the other, each for ``--minutes`` (or
``--max-steps``, whichever ends first; the cWGAN's steps count critic and generator updates), then
on the test split reports per-image PSNR/SSIM of the posterior mean (``--samples`` samples per
measurement), the U-Net and the FBP; the pooled coverage of the central 90 % interval (per-pixel
empirical 5 % and 95 % sample quantiles); Spearman's correlation of the pixel-wise std with
|mean − truth| over all test pixels; and the mean pairwise RMS distance between samples. Last,
the seconds to draw 1000 samples of one 128² image with an (untrained) generator of the
ellipses-30 size on ``--device``. Prints a table and writes JSON.

    python bench/cwgan.py --preset ellipses-small --minutes 6 --threads 2
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import lightning as L
import torch

from torch.utils.data import DataLoader

from lightning_recon.data import SimulatedCTDataModule
from lightning_recon.methods import ConditionalWGAN, FBPUNet
from lightning_recon.metrics import (interval_coverage, mean_pairwise_distance, psnr, spearman_std_error, ssim)
from lightning_recon.physics.geometry import ParallelBeam2D

from common import add_device_argument, add_threads_argument, machine_info, set_threads, synchronize


def in_memory_loader(data: SimulatedCTDataModule, batch_size: int) -> DataLoader:
    """The training split simulated once and kept in memory, so training time is network time only."""
    data.setup("fit")
    dataset = data.dataset("train")
    return DataLoader([dataset[i] for i in range(len(dataset))], batch_size=batch_size, shuffle=True)


def train(model, loader: DataLoader, minutes: float, max_steps: int, device: str) -> dict:
    """Fit on ``device`` for at most ``minutes`` / ``max_steps``; returns steps and seconds."""
    trainer = L.Trainer(accelerator=device, devices=1, max_steps=max_steps, max_time={"minutes": minutes},
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    start = time.perf_counter()
    trainer.fit(model, train_dataloaders=loader)
    return {"global_steps": trainer.global_step, "train_seconds": time.perf_counter() - start}


@torch.no_grad()
def evaluate(unet: FBPUNet, cwgan: ConditionalWGAN, data, samples: int, device: str) -> dict:
    """Per-image metrics on the test split, and the cWGAN's calibration numbers."""
    unet.to(device).eval()
    cwgan.to(device).eval()
    scores = {name: {"psnr": [], "ssim": [], "psnr_fixed": []} for name in ("cwgan_mean", "fbp_unet", "fbp")}
    covered, pixels, stds, errors, distances = 0.0, 0, [], [], []
    data.setup("test")
    for batch in data.test_dataloader():
        batch = {k: v.to(device) for k, v in batch.items()}
        truth = batch["ground_truth"]
        draws = cwgan.sample(batch, samples).float()
        mean, std = draws.mean(dim=0), draws.std(dim=0)
        for name, image in (("cwgan_mean", mean), ("fbp_unet", unet.reconstruct(batch)), ("fbp", batch["fbp"])):
            scores[name]["psnr"].append(psnr(image, truth))
            scores[name]["ssim"].append(ssim(image, truth))
            scores[name]["psnr_fixed"].append(psnr(image, truth, 1.0))
        covered += interval_coverage(draws, truth, 0.9) * truth.numel()
        pixels += truth.numel()
        stds.append(std.cpu())
        errors.append((mean - truth).abs().cpu())
        distances.append(mean_pairwise_distance(draws).cpu())
    result = {name: {k: float(torch.cat(v).mean()) for k, v in metrics.items()} for name, metrics in scores.items()}
    for name, metrics in scores.items():
        result[name]["psnr_std"] = float(torch.cat(metrics["psnr"]).std())
    std, error = torch.cat(stds), torch.cat(errors)
    result["calibration"] = {
        "coverage_90": covered / pixels,
        "spearman_std_abs_error": spearman_std_error(std, error),
        "mean_pairwise_rms_distance": float(torch.cat(distances).mean()),
        "mean_pixel_std": float(std.mean()),
        "mean_abs_error": float(error.mean()),
        "samples_per_image": samples,
        "test_images": len(std),
    }
    return result


@torch.no_grad()
def sampling_time(device: str, num_samples: int, chunk: int, repeats: int) -> dict:
    """Seconds to draw ``num_samples`` samples of one 128² image (ellipses-30 generator, untrained)."""
    geometry = ParallelBeam2D((128, 128), num_angles=30).to_dict()
    model = ConditionalWGAN(forward_model=geometry, sample_chunk=chunk, results_dir=None).to(device).eval()
    batch = {"fbp": torch.rand(1, 1, 128, 128, device=device)}
    model.sample(batch, chunk)  # warm-up
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        model.sample(batch, num_samples)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return {"samples": num_samples, "chunk": chunk, "seconds": min(times), "all_seconds": times,
            "generator_parameters": sum(p.numel() for p in model.generator.parameters())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="ellipses-small")
    parser.add_argument("--minutes", type=float, default=7.0, help="training budget per method")
    parser.add_argument("--max-steps", type=int, default=100000, help="cap per method (cWGAN: critic + generator)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 32, 64, 64], help="U-Net/generator scales")
    parser.add_argument("--critic-channels", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--n-critic", type=int, default=5)
    parser.add_argument("--unet-lr", type=float, default=1e-3)
    parser.add_argument("--samples", type=int, default=100, help="posterior samples per test image")
    parser.add_argument("--timing-samples", type=int, default=1000)
    parser.add_argument("--timing-chunk", type=int, default=50)
    parser.add_argument("--timing-repeats", type=int, default=2)
    add_threads_argument(parser)
    parser.add_argument("--num-workers", type=int, default=0)
    add_device_argument(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="bench/results/cwgan_cpu_ellipses_small.json")
    args = parser.parse_args(argv)
    set_threads(args.threads)

    data = SimulatedCTDataModule(preset=args.preset, batch_size=args.batch_size, num_workers=args.num_workers,
                                 fbp_frequency_scaling=1.0)
    common = dict(forward_model=data.forward_model_dict, fbp_frequency_scaling=1.0, results_dir=None)
    start = time.perf_counter()
    loader = in_memory_loader(data, args.batch_size)
    simulation_seconds = time.perf_counter() - start
    L.seed_everything(args.seed, verbose=False)
    cwgan = ConditionalWGAN(generator_channels=args.channels, critic_channels=args.critic_channels,
                            n_critic=args.n_critic, **common)
    cwgan_run = train(cwgan, loader, args.minutes, args.max_steps, args.device)
    L.seed_everything(args.seed, verbose=False)
    unet = FBPUNet(channels=args.channels, lr=args.unet_lr, scheduler="none", **common)
    unet_run = train(unet, loader, args.minutes, args.max_steps, args.device)
    L.seed_everything(args.seed, verbose=False)
    metrics = evaluate(unet, cwgan, data, args.samples, args.device)
    timing = sampling_time(args.device, args.timing_samples, args.timing_chunk, args.timing_repeats)

    n = args.n_critic
    cwgan_run["generator_updates"] = cwgan_run["global_steps"] // (n + 1)
    cwgan_run["critic_updates"] = cwgan_run["global_steps"] - cwgan_run["generator_updates"]
    report = {"args": vars(args), "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "machine_info": machine_info(),
              "training_set_simulation_seconds": simulation_seconds,
              "training": {"cwgan": cwgan_run, "fbp_unet": unet_run},
              "test": metrics, "sampling_128": timing}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))

    print(f"\n{args.preset}, {metrics['calibration']['test_images']} test images, {args.minutes} min training each")
    print("| method | training | PSNR (dB) | SSIM | PSNR, fixed range |")
    print("|---|---|---|---|---|")
    rows = (("cWGAN posterior mean", f"{cwgan_run['generator_updates']} G / {cwgan_run['critic_updates']} D updates",
             "cwgan_mean"), ("FBP + U-Net", f"{unet_run['global_steps']} steps", "fbp_unet"), ("FBP", "–", "fbp"))
    for label, steps, key in rows:
        m = metrics[key]
        print(f"| {label} | {steps} | {m['psnr']:.2f} ± {m['psnr_std']:.2f} | {m['ssim']:.3f} | {m['psnr_fixed']:.2f} |")
    c = metrics["calibration"]
    print(f"\ncoverage of the 90 % interval: {c['coverage_90']:.3f}; Spearman(std, |err|): "
          f"{c['spearman_std_abs_error']:.3f}; mean pairwise RMS distance: {c['mean_pairwise_rms_distance']:.4f}; "
          f"mean std {c['mean_pixel_std']:.4f}, mean |err| {c['mean_abs_error']:.4f} ({c['samples_per_image']} samples)")
    print(f"{timing['samples']} samples of a 128² image on {args.device}: {timing['seconds']:.1f} s "
          f"(chunks of {timing['chunk']}, generator {timing['generator_parameters']:,} parameters)")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
