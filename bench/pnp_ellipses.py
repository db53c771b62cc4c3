"""Plug-and-play priors (PnP-HQS / ADMM / PGD / RED with a DRUNet-style and a lifting-scheme
denoiser) next to FBP and TV at 30 angles, 10 angles and 60° limited angle on ellipses-small, with
the SAME trained denoiser for every geometry; and the two denoisers' own PSNR at σ = 0.05.

1. Denoisers: trained with ``train.py fit --config configs/experiment/ellipses_small_denoiser_<net>_cpu.yaml``
   (``--train drunet lifting``; 15 minutes each on the CPU by default, ``--max-time`` / ``--max-steps``),
   or given as checkpoints (``--drunet CKPT``, ``--lifting CKPT``).
2. Every reconstruction row comes from one ``train.py test`` command on
   ``configs/experiment/ellipses_small_pnp_<geometry>.yaml`` (printed, and stored in the JSON with the
   parameters it tuned): FBP's filter, TV's α, PnP's λ (PGD: step) and final σ are tuned on validation
   samples, never on the test set.
3. Prints a markdown table (PSNR / SSIM per method and geometry, seconds per image) and writes JSON.

    OMP_NUM_THREADS=1 python bench/pnp_ellipses.py --train drunet lifting
    OMP_NUM_THREADS=1 python bench/pnp_ellipses.py --drunet outputs/denoiser_drunet_small/checkpoints/last.ckpt \\
        --lifting outputs/denoiser_lifting_small/checkpoints/last.ckpt --algorithms hqs admm red
    python bench/pnp_ellipses.py --train drunet --dry-run                 # print the commands only
    # smoke check (tiny sizes, seconds; its numbers mean nothing):
    OMP_NUM_THREADS=1 python bench/pnp_ellipses.py --train drunet --smoke
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from common import (GEOMETRY_NAMES, add_threads_argument, baseline_test_flags, geometry_table, machine_info,
                    read_results_row, set_threads)

ROOT = Path(__file__).resolve().parents[1]
GEOMETRIES = ("30angles", "10angles", "limited60")
NETWORKS = ("drunet", "lifting")
ALGORITHMS = ("hqs", "admm", "pgd", "red")
NETWORK_NAMES = {"drunet": "DRUNet", "lifting": "lifting"}
SMOKE = dict(image_size=16, max_steps=5, train_length=64, val_length=4, test_samples=2, iterations=3,
             tune_samples=2, tv_iterations=20, weights=[0.01, 0.1], sigma_ends=[0.02], tv_alphas=[1.0, 4.0],
             tv_tune_samples=2, fbp_tune_samples=2)


def row_name(method: str) -> str:
    if method in ("fbp", "tv"):
        return method.upper()
    algorithm, network = method.split("-")
    return f"PnP-{algorithm.upper()} ({NETWORK_NAMES[network]})"


def size_flags(args, geometry: str) -> List[str]:
    """Smaller images (the smoke check): the preset's size, and the limited-angle file's explicit geometry."""
    if not args.image_size:
        return []
    flags = [f"--data.init_args.image_size={args.image_size}"]
    if geometry == "limited60":
        flags.append(f"--data.init_args.geometry.image_shape=[{args.image_size},{args.image_size}]")
    return flags


def train_command(network: str, args) -> List[str]:
    """The ``train.py fit`` command of one denoiser, into ``<results-root>/denoiser_<network>``."""
    out = ["train.py", "fit", "--config", f"configs/experiment/ellipses_small_denoiser_{network}_cpu.yaml",
           f"--out={Path(args.results_root) / f'denoiser_{network}'}"]
    if args.max_steps:
        out += ["--trainer.max_time=null", f"--trainer.max_steps={args.max_steps}",
                "--model.init_args.scheduler=cosine",
                f"--trainer.val_check_interval={min(500, args.max_steps)}"]
    elif args.max_time:
        out.append(f"--trainer.max_time={args.max_time}")
    if args.image_size:
        out.append(f"--data.init_args.image_size={args.image_size}")
    if args.train_length:
        out += [f"--data.init_args.train_length={args.train_length}", "--data.init_args.num_workers=0"]
    if args.val_length:
        out.append(f"--data.init_args.val_length={args.val_length}")
    return out


def test_command(method: str, geometry: str, args, checkpoints: Dict[str, str]) -> List[str]:
    """The ``train.py test`` command of one (method, geometry)."""
    results = Path(args.results_root) / geometry
    out = ["train.py", "test", "--config", f"configs/experiment/ellipses_small_pnp_{geometry}.yaml"]
    if method in ("fbp", "tv"):
        out += baseline_test_flags(method, args)
    else:
        algorithm, network = method.split("-")
        out += [f"--model.init_args.denoiser={checkpoints[network]}", f"--model.init_args.algorithm={algorithm}",
                f"--model.init_args.tune_samples={args.tune_samples}",
                f"--model.init_args.method_name={row_name(method)}"]
        for flag, values in (("weights", args.weights), ("sigma_ends", args.sigma_ends),
                             ("iteration_counts", args.iteration_counts)):
            if values:
                out.append(f"--model.init_args.{flag}=[{','.join(str(v) for v in values)}]")
        if args.iterations:
            out.append(f"--model.init_args.iterations={args.iterations}")
        if args.cg_iterations:
            out.append(f"--model.init_args.cg_iterations={args.cg_iterations}")
    out += size_flags(args, geometry)
    if args.val_length:
        out.append(f"--data.init_args.val_length={args.val_length}")
    if args.test_samples:
        out.append(f"--data.init_args.test_length={args.test_samples}")
    return out + [f"--model.init_args.results_dir={results}"]


def run(cmd: List[str], env, dry_run: bool) -> Optional[Dict]:
    """Run one command from the repository root; its log lines that report a tuned choice and its time."""
    printed = "python " + " ".join(shlex.quote(c) for c in cmd)
    print(printed, flush=True)
    if dry_run:
        return None
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        print(log[-3000:], file=sys.stderr)
        raise SystemExit(f"failed ({proc.returncode}): {printed}")
    tuned = [line.strip() for line in log.splitlines() if re.search(r"tuned on \d+ validation", line)]
    return {"command": printed, "wall_seconds": seconds, "tuned": tuned}


def denoising_scores(checkpoint: str, args, sigma: float = 0.05, count: int = 32) -> Dict[str, float]:
    """PSNR of the denoiser on the first ``count`` test ground truths plus seeded noise of std ``sigma``,
    its input's PSNR, and its parameter count."""
    import torch

    from lightning_recon.data import SimulatedCTDataModule
    from lightning_recon.methods.denoiser import load_denoiser
    from lightning_recon.metrics import psnr

    net, info = load_denoiser(checkpoint)
    data = SimulatedCTDataModule(preset="ellipses-small", image_size=args.image_size or None,
                                 test_length=args.test_samples or None, num_workers=0)
    dataset = data.dataset("test")
    truth = torch.stack([dataset[i]["ground_truth"] for i in range(min(count, len(dataset)))])
    noisy = truth + sigma * torch.randn(truth.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        start = time.perf_counter()
        denoised = net(noisy, sigma)
        seconds = (time.perf_counter() - start) / len(truth)
    return {"network": info.network, "sigma": sigma, "images": len(truth),
            "parameters": sum(p.numel() for p in net.parameters()),
            "noisy_psnr": float(psnr(noisy, truth).mean()), "psnr": float(psnr(denoised, truth).mean()),
            "seconds_per_image": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", nargs="*", default=[], choices=NETWORKS, help="train these denoisers first")
    parser.add_argument("--drunet", help="a DenoiserModule checkpoint of the DRUNet (instead of --train drunet)")
    parser.add_argument("--lifting", help="a DenoiserModule checkpoint of the lifting network")
    parser.add_argument("--max-time", default=None, help="denoiser training budget (default: the experiment's 15 min)")
    parser.add_argument("--max-steps", type=int, default=None, help="denoiser training steps instead of a time budget")
    parser.add_argument("--geometries", nargs="+", default=list(GEOMETRIES), choices=GEOMETRIES)
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    parser.add_argument("--baselines", nargs="*", default=["fbp", "tv"], choices=["fbp", "tv"])
    parser.add_argument("--iterations", type=int, default=None, help="PnP iterations (default: the config's 20)")
    parser.add_argument("--iteration-counts", type=int, nargs="+", help="PnP iteration counts to tune over")
    parser.add_argument("--cg-iterations", type=int, default=None,
                        help="CG steps per least-squares step of HQS / ADMM (default: the config's 5)")
    parser.add_argument("--weights", type=float, nargs="+", help="λ grid (default: the config's)")
    parser.add_argument("--sigma-ends", type=float, nargs="+", help="final-σ grid (default: the config's)")
    parser.add_argument("--tune-samples", type=int, default=8)
    parser.add_argument("--tv-iterations", type=int, default=1000)
    parser.add_argument("--tv-alphas", type=float, nargs="+", default=[0.0625, 0.125, 0.25, 0.5, 1, 2, 4, 8, 16])
    parser.add_argument("--tv-tune-samples", type=int, default=20)
    parser.add_argument("--fbp-tune-samples", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=None, help="override the preset's 64² (smoke checks)")
    parser.add_argument("--train-length", type=int, default=None)
    parser.add_argument("--val-length", type=int, default=None)
    parser.add_argument("--test-samples", type=int, default=None, help="the first N test samples (default: all 32)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes and few steps everywhere, to check the pipeline (numbers mean nothing)")
    parser.add_argument("--results-root", default=None, help="default: bench/results/pnp_ellipses_small")
    parser.add_argument("--out", default=None, help="JSON (default: <results-root>/pnp_ellipses.json)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    add_threads_argument(parser)
    args = parser.parse_args()
    if args.smoke:  # every size and count of SMOKE, whatever else was asked
        for key, value in SMOKE.items():
            setattr(args, key, value)
    args.results_root = args.results_root or ("bench/results/pnp_smoke" if args.smoke else
                                              "bench/results/pnp_ellipses_small")
    set_threads(args.threads)
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(args.threads)))

    runs = []
    checkpoints = {net: getattr(args, net) for net in NETWORKS if getattr(args, net)}
    missing = [f"--{net} {path}" for net, path in checkpoints.items()
               if not args.dry_run and not (ROOT / path).is_file()]  # before any training, not after it
    if missing:
        parser.error(f"no such checkpoint: {', '.join(missing)}")
    for network in args.train:
        run_record = run(train_command(network, args), env, args.dry_run)
        checkpoints[network] = str(Path(args.results_root) / f"denoiser_{network}" / "checkpoints" / "last.ckpt")
        if run_record:
            runs.append(dict(run_record, stage=f"train {network}"))
    if not checkpoints:
        parser.error("no denoiser: --train drunet/lifting, or --drunet/--lifting CHECKPOINT")
    denoising = {}
    if not args.dry_run:
        for network, checkpoint in checkpoints.items():
            denoising[network] = denoising_scores(str(ROOT / checkpoint) if not Path(checkpoint).is_absolute()
                                                  else checkpoint, args)
            scores = denoising[network]
            print(f"  {network}: {scores['parameters']} weights, PSNR at σ = 0.05: {scores['psnr']:.2f} dB "
                  f"(input {scores['noisy_psnr']:.2f} dB)", flush=True)

    methods = list(args.baselines) + [f"{a}-{n}" for n in checkpoints for a in args.algorithms]
    results: Dict[str, Dict[str, dict]] = {}
    for geometry in args.geometries:
        for method in methods:
            record = run(test_command(method, geometry, args, checkpoints), env, args.dry_run)
            if record is None:
                continue
            row = read_results_row(ROOT / args.results_root / geometry, row_name(method))
            results.setdefault(geometry, {})[method] = row
            runs.append(dict(record, stage="test", geometry=geometry, method=method, row=row))
            print(f"  {row_name(method)}: {row['psnr']:.2f} dB, SSIM {row['ssim']:.3f}; {'; '.join(record['tuned'])} "
                  f"({record['wall_seconds']:.0f} s)", flush=True)
    if args.dry_run:
        return
    table = geometry_table(results, args.geometries, {m: row_name(m) for m in methods}, seconds=True)
    print("\nellipses-small, test split, PSNR/SSIM per image with the per-image data range:\n")
    print(table)
    out_path = Path(args.out or ROOT / args.results_root / "pnp_ellipses.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({
        "smoke": args.smoke, "geometries": {g: GEOMETRY_NAMES[g] for g in args.geometries},
        "checkpoints": checkpoints, "denoising": denoising, "settings": vars(args), "machine": machine_info(),
        "table": table, "runs": runs}, indent=2, default=str))
    print(f"\nwrote {out_path}")


if __name__ == "__main__":
    main()
