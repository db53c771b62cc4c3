"""Training without ground truth on the low-dose preset: Noise2Inverse (FBP + U-Net, K subsets,
X:1 or 1:X) next to FBP, TV and the same FBP + U-Net trained supervised (and, with
``--methods ... equivariant``, equivariant imaging).

Data: ``ellipses-small-lowdose`` (64², 360 angles, Poisson noise at 100 photons per ray;
docs/data.md), or with ``--preset ellipses-small`` the sparse-view preset (30 angles, 2.5 % Gaussian
noise; ``--num-angles 10`` for 10), the FBP delivered with each sample Ram-Lak (uncut). Every learned row trains the
same U-Net for ``--steps`` steps (AdamW, cosine) on the same cached training samples and is tested
with its last weights: no checkpoint is chosen by a ground truth. The self-supervised rows train on
batches without ``ground_truth`` (``train_ground_truth: false``); the supervised row is the
reference a ground truth buys. FBP's filter and TV's α are tuned on validation pairs
(``FBPBaseline``, ``TVBaseline``), the only place a ground truth enters those rows. Test: the
preset's first ``--test-samples`` test images, PSNR / SSIM with each image's range and with the
fixed range 1 (``results.csv`` / ``results.md`` under ``--out``). Prints a markdown table and writes JSON.

    OMP_NUM_THREADS=1 python bench/self_supervised.py                       # CUDA when present, else CPU
    OMP_NUM_THREADS=1 python bench/self_supervised.py --splits 2 4 --strategies X:1 1:X --steps 3000
    # equivariant imaging in the sparse-view regime
    OMP_NUM_THREADS=1 python bench/self_supervised.py --preset ellipses-small --methods fbp tv equivariant supervised
    # which dose is noise-dominated: FBP, zero counts and noiseless FBPs on validation images (a minute)
    OMP_NUM_THREADS=1 python bench/self_supervised.py --scan-photons 1000 300 100 50 30
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

PRESETS = ("ellipses-small-lowdose", "ellipses-small")
METHODS = ("fbp", "tv", "noise2inverse", "supervised", "equivariant")
SMOKE = dict(image_size=16, num_angles=24, train_length=16, val_length=4, test_samples=4, steps=4, batch_size=4,
             channels=[4, 8], tv_iterations=20, tv_alphas=[1.0, 4.0], tune_samples=4, ei_rotations=1)


def data_module(args, train_ground_truth: bool):
    from lightning_recon.data import SimulatedCTDataModule

    sizes = {key: value for key, value in (("image_size", args.image_size), ("num_angles", args.num_angles),
                                           ("val_length", args.val_length), ("photons", args.photons))
             if value}
    return SimulatedCTDataModule(preset=args.preset, train_length=args.train_length,
                                 test_length=args.test_samples, batch_size=args.batch_size,
                                 num_workers=0, cache_samples=True, fbp_filter="Ram-Lak", fbp_frequency_scaling=1.0,
                                 train_ground_truth=train_ground_truth, **sizes)


def dose_scan(args) -> str:
    """``--scan-photons``: on the first ``--tune-samples`` validation images only, the FBP (Ram-Lak, and
    the filter × cut-off tuned on those images over ``FBPBaseline``'s grid) at each dose, the fraction
    of zero photon counts, and the noiseless Ram-Lak FBPs: of all angles and of one of K interleaved
    subsets (K = 2, 4), the quality a Noise2Inverse target has without its noise. Returns a table."""
    import inspect
    import math

    import torch
    from lightning_recon.data import SimulatedCTDataModule
    from lightning_recon.methods import FBPBaseline
    from lightning_recon.metrics import psnr
    from lightning_recon.physics.angle_splits import angle_splits, sub_geometry
    from lightning_recon.physics.fbp import FBP
    from lightning_recon.physics.noise import LODOPAB_MU_MAX

    grid = {k: v.default for k, v in inspect.signature(FBPBaseline.__init__).parameters.items()
            if k in ("filters", "frequency_scalings")}
    sizes = {key: value for key, value in (("image_size", args.image_size), ("num_angles", args.num_angles))
             if value}

    def validation(**kwargs):
        data = SimulatedCTDataModule(preset="ellipses-small-lowdose", val_length=args.tune_samples,
                                     fbp_filter="Ram-Lak", fbp_frequency_scaling=1.0, **sizes, **kwargs)
        samples = [data.dataset("val")[i] for i in range(args.tune_samples)]
        return data.geometry, torch.stack([s["measurement"] for s in samples]), \
            torch.stack([s["ground_truth"] for s in samples])

    geometry, clean, truth = validation(noise="none")
    ramlak = FBP(geometry, "Ram-Lak", 1.0)
    lines = [f"Validation images 0-{args.tune_samples - 1}, PSNR (dB, each image's range):", "",
             "| photons per ray | zero counts | FBP Ram-Lak | FBP tuned | noiseless Ram-Lak − tuned |",
             "|---|---|---|---|---|"]
    noiseless = float(psnr(ramlak(clean), truth).mean())
    for photons in args.scan_photons:
        _, noisy, truth_noisy = validation(photons=photons)
        assert torch.equal(truth, truth_noisy)
        zero_value = -math.log(0.1 / photons) / LODOPAB_MU_MAX  # the post-log value of a zero count
        zeros = float((noisy >= zero_value * (1 - 1e-4)).double().mean())
        scores = {(f, s): float(psnr(FBP(geometry, f, s, ray_transform=ramlak.ray_transform)(noisy), truth).mean())
                  for f in grid["filters"] for s in grid["frequency_scalings"]}
        (f, s), tuned = max(scores.items(), key=lambda item: item[1])
        lines.append(f"| {photons:g} | {zeros:.2g} | {scores[('Ram-Lak', 1.0)]:.2f} | {tuned:.2f} ({f} {s:g}) | "
                     f"{noiseless - tuned:.2f} |")
    lines += ["", f"Noiseless Ram-Lak FBP, all {geometry.num_angles} angles: {noiseless:.2f} dB"]
    for splits in (2, 4):
        indices = angle_splits(geometry.num_angles, splits)[0]
        sub = FBP(sub_geometry(geometry, indices), "Ram-Lak", 1.0)(clean[:, :, torch.as_tensor(indices)])
        lines.append(f"Noiseless Ram-Lak FBP of one of K = {splits} subsets ({len(indices)} angles): "
                     f"{float(psnr(sub, truth).mean()):.2f} dB")
    return "\n".join(lines)


def trainer(args, steps: int = 0):
    import lightning as L

    return L.Trainer(accelerator="gpu" if str(args.device).startswith("cuda") else "cpu", devices=1,
                     max_steps=steps or -1, precision="bf16-mixed" if args.fast and steps else "32-true",
                     logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                     gradient_clip_val=1.0)


def rows(args) -> List[Dict]:
    """One (name, model, trains) entry per row asked for."""
    from lightning_recon.methods import FBPBaseline, FBPUNet, TVBaseline

    data = data_module(args, train_ground_truth=True)
    common = dict(forward_model=data.forward_model_dict, fbp_filter="Ram-Lak", fbp_frequency_scaling=1.0,
                  results_dir=str(Path(args.out) / "results"))
    unet = dict(common, channels=args.channels, lr=args.lr, scheduler="cosine")
    if args.fast:
        unet.update(channels_last=True, compile_mode="default")
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
                    name = f"FBP + U-Net (Noise2Inverse, K = {splits}, {strategy}" + \
                        (", flips and turns)" if args.n2i_augment else ")")
                    out.append(dict(name=name, model=FBPUNet(loss="noise2inverse", n2i_splits=splits,
                                                             n2i_strategy=strategy, n2i_augment=args.n2i_augment,
                                                             method_name=name, **unet),
                                    train=False))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="ellipses-small-lowdose", choices=PRESETS,
                        help="the low-dose preset (Noise2Inverse's regime) or ellipses-small (30 angles, 2.5 %% "
                             "Gaussian noise: the sparse-view regime of equivariant imaging)")
    parser.add_argument("--methods", nargs="+", default=["fbp", "tv", "noise2inverse", "supervised"], choices=METHODS)
    parser.add_argument("--splits", type=int, nargs="+", default=[4], help="Noise2Inverse's K (one row each)")
    parser.add_argument("--strategies", nargs="+", default=["X:1"], choices=["X:1", "1:X"])
    parser.add_argument("--n2i-augment", action="store_true",
                        help="Noise2Inverse pairs randomly flipped and quarter-turned in training (n2i_augment)")
    parser.add_argument("--steps", type=int, default=3000, help="training steps of every learned row")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train-length", type=int, default=1024, help="training samples (cached)")
    parser.add_argument("--val-length", type=int, default=None, help="validation samples (default: the preset's 32)")
    parser.add_argument("--test-samples", type=int, default=32)
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 16, 32, 32, 64])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--fast", action="store_true",
                        help="train the learned rows with bf16 autocast, channels-last and torch.compile (about 2× "
                             "faster on the CPU, the same validation PSNR: docs/benchmarks.md); tested in float32")
    parser.add_argument("--photons", type=float, default=None,
                        help="photons per ray (default: the low-dose preset's 100; not with ellipses-small)")
    parser.add_argument("--image-size", type=int, default=None, help="override the preset's 64² (smoke checks)")
    parser.add_argument("--num-angles", type=int, default=None, help="override the preset's angles (360 or 30)")
    parser.add_argument("--ei-rotations", type=int, default=5)
    parser.add_argument("--ei-weight", type=float, default=100.0)
    parser.add_argument("--tv-iterations", type=int, default=500)
    parser.add_argument("--tv-alphas", type=float, nargs="+", default=[0.25, 0.5, 1, 2, 4, 8, 16])
    parser.add_argument("--tune-samples", type=int, default=16, help="validation pairs tuning FBP and TV")
    parser.add_argument("--out", default="outputs/bench_self_supervised", help="results table folder")
    parser.add_argument("--json", default=None, help="JSON output (default: bench/results/self_supervised.json; "
                                                     "none with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few steps: checks that it runs")
    parser.add_argument("--scan-photons", type=float, nargs="+", default=None,
                        help="only the validation dose scan at these photons per ray: FBP, zero counts, noiseless FBPs")
    add_device_argument(parser)
    add_threads_argument(parser)
    args = parser.parse_args()
    if args.photons and args.preset != "ellipses-small-lowdose":
        parser.error(f"--photons sets the Poisson dose of ellipses-small-lowdose; {args.preset} has Gaussian noise")
    if args.scan_photons and args.preset != "ellipses-small-lowdose":
        parser.error("--scan-photons scans the dose of ellipses-small-lowdose only")
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    threads = set_threads(args.threads)
    if args.scan_photons:
        table = dose_scan(args)
        print(table)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({"settings": vars(args), "threads": threads, "machine": machine_info(),
                                                   "table": table}, indent=2, default=str))
            print(f"wrote {args.json}")
        return

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
        trainer(args).test(model, datamodule=data_module(args, train_ground_truth=True), verbose=False)  # float32
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
