"""Training without ground truth on the low-dose preset: Noise2Inverse (FBP + U-Net, K subsets,
X:1 or 1:X) next to FBP, TV and the same FBP + U-Net trained supervised (and, with
``--methods ... equivariant``, equivariant imaging).

Data: ``ellipses-small-lowdose`` (64², 360 angles, Poisson noise at 1,000 photons per ray;
docs/data.md), the FBP delivered with each sample Ram-Lak (uncut). Every learned row trains the
same U-Net for ``--steps`` steps (AdamW, cosine) on the same cached training samples and is tested
with its last weights: no checkpoint is chosen by a ground truth. The self-supervised rows train on
batches without ``ground_truth`` (``train_ground_truth: false``); the supervised row is the
reference a ground truth buys. FBP's filter and TV's α are tuned on validation pairs
(``FBPBaseline``, ``TVBaseline``), the only place a ground truth enters those rows. Test: the
preset's first ``--test-samples`` test images, PSNR / SSIM with each image's range and with the
fixed range 1 (``results.csv`` / ``results.md`` under ``--out``). Prints a markdown table and writes JSON.

    OMP_NUM_THREADS=1 python bench/self_supervised.py                       # CUDA when present, else CPU
    OMP_NUM_THREADS=1 python bench/self_supervised.py --splits 2 4 --strategies X:1 1:X --steps 3000
    # smoke check (tiny sizes, a minute; its numbers mean nothing):
    OMP_NUM_THREADS=1 python bench/self_supervised.py --smoke
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List

from common import RESULTS, add_device_argument, add_threads_argument, machine_info, set_threads

METHODS = ("fbp", "tv", "noise2inverse", "supervised", "equivariant")
SMOKE = dict(image_size=16, num_angles=24, train_length=16, val_length=4, test_samples=4, steps=4, batch_size=4,
             channels=[4, 8], tv_iterations=20, tv_alphas=[1.0, 4.0], tune_samples=4, ei_rotations=1)


def data_module(args, train_ground_truth: bool):
    from lightning_recon.data import SimulatedCTDataModule

    sizes = {key: value for key, value in (("image_size", args.image_size), ("num_angles", args.num_angles),
                                           ("val_length", args.val_length)) if value}
    return SimulatedCTDataModule(preset="ellipses-small-lowdose", train_length=args.train_length,
                                 test_length=args.test_samples, photons=args.photons, batch_size=args.batch_size,
                                 num_workers=0, cache_samples=True, fbp_filter="Ram-Lak", fbp_frequency_scaling=1.0,
                                 train_ground_truth=train_ground_truth, **sizes)


def trainer(args, steps: int = 0):
    import lightning as L

    return L.Trainer(accelerator="gpu" if str(args.device).startswith("cuda") else "cpu", devices=1,
                     max_steps=steps or -1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                     gradient_clip_val=1.0)


def rows(args) -> List[Dict]:
    """One (name, model, trains) entry per row asked for."""
    from lightning_recon.methods import FBPBaseline, FBPUNet, TVBaseline

    data = data_module(args, train_ground_truth=True)
    common = dict(forward_model=data.forward_model_dict, fbp_filter="Ram-Lak", fbp_frequency_scaling=1.0,
                  results_dir=str(Path(args.out) / "results"))
    unet = dict(common, channels=args.channels, lr=args.lr, scheduler="cosine")
    out = []
    for method in args.methods:
        if method == "fbp":
            out.append(dict(name="FBP", model=FBPBaseline(tune_samples=args.tune_samples, **common), train=None))
        elif method == "tv":
            out.append(dict(name="TV", model=TVBaseline(iterations=args.tv_iterations, alphas=args.tv_alphas,
                                                        tune_samples=args.tune_samples, method_name="TV", **common),
                            train=None))
        elif method == "supervised":
            out.append(dict(name="FBP + U-Net (supervised)", model=FBPUNet(method_name="FBP + U-Net (supervised)",
                                                                         **unet), train=True))
        elif method == "equivariant":
            name = f"FBP + U-Net (equivariant, {args.ei_rotations} rotations, α = {args.ei_weight:g})"
            out.append(dict(name=name, model=FBPUNet(loss="equivariant", ei_rotations=args.ei_rotations,
                                                     ei_weight=args.ei_weight, method_name=name, **unet), train=False))
        else:
            for splits in args.splits:
                for strategy in args.strategies:
                    name = f"FBP + U-Net (Noise2Inverse, K = {splits}, {strategy})"
                    out.append(dict(name=name, model=FBPUNet(loss="noise2inverse", n2i_splits=splits,
                                                             n2i_strategy=strategy, method_name=name, **unet),
                                    train=False))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["fbp", "tv", "noise2inverse", "supervised"], choices=METHODS)
    parser.add_argument("--splits", type=int, nargs="+", default=[4], help="Noise2Inverse's K (one row each)")
    parser.add_argument("--strategies", nargs="+", default=["X:1"], choices=["X:1", "1:X"])
    parser.add_argument("--steps", type=int, default=3000, help="training steps of every learned row")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train-length", type=int, default=1024, help="training samples (cached)")
    parser.add_argument("--val-length", type=int, default=None, help="validation samples (default: the preset's 32)")
    parser.add_argument("--test-samples", type=int, default=32)
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 16, 32, 32, 64])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--photons", type=float, default=None, help="photons per ray (default: the preset's 1,000)")
    parser.add_argument("--image-size", type=int, default=None, help="override the preset's 64² (smoke checks)")
    parser.add_argument("--num-angles", type=int, default=None, help="override the preset's 360 angles")
    parser.add_argument("--ei-rotations", type=int, default=5)
    parser.add_argument("--ei-weight", type=float, default=100.0)
    parser.add_argument("--tv-iterations", type=int, default=500)
    parser.add_argument("--tv-alphas", type=float, nargs="+", default=[0.25, 0.5, 1, 2, 4, 8, 16])
    parser.add_argument("--tune-samples", type=int, default=16, help="validation pairs tuning FBP and TV")
    parser.add_argument("--out", default="outputs/bench_self_supervised", help="results table folder")
    parser.add_argument("--json", default=None, help="JSON output (default: bench/results/self_supervised.json; "
                                                     "none with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few steps: checks that it runs")
    add_device_argument(parser)
    add_threads_argument(parser)
    args = parser.parse_args()
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    threads = set_threads(args.threads)

    import torch

    torch.manual_seed(0)
    results = []
    for row in rows(args):
        model, trains = row["model"], row["train"]
        runner = trainer(args, args.steps if trains is not None else 0)
        start = time.perf_counter()
        if trains is not None:  # False: the self-supervised rows, whose training batches hold no ground truth
            runner.fit(model, data_module(args, train_ground_truth=trains))
        train_seconds = time.perf_counter() - start
        runner.test(model, datamodule=data_module(args, train_ground_truth=True), verbose=False)
        result = dict(model.test_results, training_seconds=train_seconds,
                      trained_on="-" if trains is None else ("ground truth" if trains else "measurements only"))
        results.append(result)
        print(f"{row['name']}: {result['psnr']:.2f} dB, SSIM {result['ssim']:.3f} ({result['trained_on']}, "
              f"{train_seconds:.0f} s training)", flush=True)

    lines = ["| method | trained on | PSNR (dB) | SSIM | PSNR, range 1 | s/image | training (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['method']} | {r['trained_on']} | {r['psnr']:.2f} ± {r['psnr_std']:.2f} | "
                     f"{r['ssim']:.3f} | {r['psnr_fixed']:.2f} | {r['seconds_per_image']:.3g} | "
                     f"{r['training_seconds']:.0f} |")
    table = "\n".join(lines)
    print(table)
    path = args.json or (None if args.smoke else str(RESULTS / "self_supervised.json"))
    if path:
        settings = {k: v for k, v in vars(args).items() if k not in ("json",)}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({"settings": settings, "threads": threads, "machine": machine_info(),
                                          "results": results, "table": table}, indent=2, default=str))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
