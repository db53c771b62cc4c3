"""Whole scans with ``finetune.py --slices``: warm-started slices against independent ones.

On a synthetic multi-slice scan with a known ground truth (``lightning_recon.data.synthetic_scan``)
``finetune_main`` reconstructs every slice twice with the same options: warm-started (each slice
from the previous slice's network) and ``--independent`` (each from ``--init``). Per slice it
records the PSNR of every iteration against the ground-truth slice, the PSNR of the returned
(lowest-loss) iterate, the iteration at which the warm-started run first reaches the independent
run's final PSNR (and, for comparison, the iteration at which the independent run itself first
reaches it; and the other way round, whether the independent run ever reaches the warm-started
run's final PSNR), the PSNR and loss of iteration 1 and the wall time. Prints a table, writes JSON (curves kept
at ≤ 200 points each) and a PNG of the curves.

    python bench/finetune_slices.py --slices 8 --size 48 --angles 60 --num-angles 20 --iterations 300 \\
        --channels 32 --threads 1 --accelerator cpu --json bench/results/finetune_slices_cpu.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from lightning_recon.data.synthetic_scan import write_synthetic_scan
from lightning_recon.finetune import main as finetune_main

from common import add_threads_argument, first_reaching, machine_info, set_threads


def reaches(curve_iteration: np.ndarray, curve_psnr: np.ndarray, target: float) -> Optional[int]:
    """The first iteration whose PSNR is >= ``target`` (within 1e-9 dB, so a run reaches its own final PSNR)."""
    return first_reaching(curve_psnr, target, curve_iteration, tolerance=1e-9)


def thin(iterations: np.ndarray, values: np.ndarray, points: int = 200) -> dict:
    keep = np.unique(np.linspace(0, len(values) - 1, min(points, len(values))).round().astype(int))
    return {"iteration": iterations[keep].tolist(), "psnr": np.round(values[keep].astype(float), 3).tolist()}


def run(mode: str, scan: Path, truth: Path, work: Path, args) -> dict:
    out = work / mode
    command = [str(scan), "--slices", "all", "--reference", str(truth), "--iterations", str(args.iterations),
               "--channels", str(args.channels), "--scales", str(args.scales), "--center-offset", "0",
               "--tv-weight", str(args.tv_weight), "--lr", str(args.lr), "--logger", "none",
               "--accelerator", args.accelerator, "--seed", str(args.seed), "--out", str(out)]
    if args.num_angles:
        command += ["--num-angles", str(args.num_angles)]
    if mode == "independent":
        command.append("--independent")
    elif args.warm_iterations:
        command += ["--warm-iterations", str(args.warm_iterations)]
    start = time.perf_counter()
    summary = finetune_main(command)
    seconds = time.perf_counter() - start
    slices = []
    for record in summary["slices"]:
        curves = np.load(out / "slices" / f"curves_{record['slice']:04d}.npz")
        slices.append(dict(record, curve_iteration=curves["psnr_iteration"], curve_psnr=curves["psnr"]))
    return {"seconds": seconds, "slices": slices, "command": "python finetune.py " + " ".join(command)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=8,
                        help="detector rows of the synthetic scan (all are reconstructed)")
    parser.add_argument("--size", type=int, default=48, help="slice width and height (detector columns)")
    parser.add_argument("--angles", type=int, default=60, help="projections of the scan over [0°, 180°)")
    parser.add_argument("--num-angles", type=int, default=None, help="projections DIP sees (sparse view; default all)")
    parser.add_argument("--photons", type=float, default=1e4)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--warm-iterations", type=int, default=None,
                        help="iterations of each warm-started slice after the first (default --iterations): the "
                        "wall-time saving of a warm start, measured")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--scales", type=int, default=5)
    parser.add_argument("--tv-weight", type=float, default=0.015)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0, help="phantom, noise and network seed")
    parser.add_argument("--accelerator", default="auto")
    add_threads_argument(parser)
    parser.add_argument("--work", default=None, help="folder for the scan and both runs (default: a temporary one)")
    parser.add_argument("--json", default="bench/results/finetune_slices.json")
    args = parser.parse_args(argv)
    set_threads(args.threads)

    with tempfile.TemporaryDirectory() as temporary:
        work = Path(args.work or temporary)
        if args.work and any((work / mode).exists() for mode in ("warm", "independent")):
            parser.error(f"{work} already holds runs (they would be resumed, not timed): pick another --work")
        work.mkdir(parents=True, exist_ok=True)
        scan, truth_file = work / "scan.h5", work / "truth.npy"
        truth = write_synthetic_scan(scan, args.slices, args.size, args.angles, args.seed, photons=args.photons)
        np.save(truth_file, truth)
        runs = {mode: run(mode, scan, truth_file, work, args) for mode in ("warm", "independent")}

    rows = []
    for warm, alone in zip(runs["warm"]["slices"], runs["independent"]["slices"]):
        target = alone["recon_psnr"]
        rows.append({
            "slice": warm["slice"],
            "fbp_psnr": warm["fbp_psnr"],
            "independent_psnr": alone["recon_psnr"], "warm_psnr": warm["recon_psnr"],
            "independent_peak_psnr": float(alone["curve_psnr"].max()),
            "warm_peak_psnr": float(warm["curve_psnr"].max()),
            "independent_reaches_its_final_at": reaches(alone["curve_iteration"], alone["curve_psnr"], target),
            "warm_reaches_independent_final_at": reaches(warm["curve_iteration"], warm["curve_psnr"], target),
            "independent_reaches_warm_final_at": reaches(alone["curve_iteration"], alone["curve_psnr"],
                                                         warm["recon_psnr"]),
            "warm_psnr_at_iteration_1": float(warm["curve_psnr"][0]),
            "independent_psnr_at_iteration_1": float(alone["curve_psnr"][0]),
            "independent_first_loss": alone["first_loss"], "warm_first_loss": warm["first_loss"],
            "independent_seconds": alone["seconds"], "warm_seconds": warm["seconds"],
            "independent_curve": thin(alone["curve_iteration"], alone["curve_psnr"]),
            "warm_curve": thin(warm["curve_iteration"], warm["curve_psnr"]),
        })

    print("PSNR [dB] against the ground-truth slice: FBP; the returned iterate of the independent and the "
          "warm-started run; the warm run's iteration 1.\n'a→b': first iteration at which run a reaches the final "
          "PSNR of run b (-: never). loss@1: loss of iteration 1. s: seconds per slice.")
    header = (f"{'slice':>5} {'FBP':>6} {'indep':>6} {'warm':>6} {'warm@1':>6} {'indep→indep':>11} "
              f"{'warm→indep':>10} {'indep→warm':>10} {'loss@1 indep':>12} {'loss@1 warm':>11} "
              f"{'s indep':>7} {'s warm':>6}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['slice']:>5} {r['fbp_psnr']:6.2f} {r['independent_psnr']:6.2f} {r['warm_psnr']:6.2f} "
              f"{r['warm_psnr_at_iteration_1']:6.2f} {r['independent_reaches_its_final_at'] or '-':>11} "
              f"{r['warm_reaches_independent_final_at'] or '-':>10} "
              f"{r['independent_reaches_warm_final_at'] or '-':>10} "
              f"{r['independent_first_loss']:12.4g} {r['warm_first_loss']:11.4g} "
              f"{r['independent_seconds']:7.1f} {r['warm_seconds']:6.1f}")
    later = rows[1:]  # slice 0 starts from --init in both runs
    reached = [r["warm_reaches_independent_final_at"] for r in later]
    result = {
        "config": {k: v for k, v in vars(args).items() if k not in ("json", "work")},
        "device": torch.cuda.get_device_name(0) if args.accelerator != "cpu" and torch.cuda.is_available()
        else f"cpu, {torch.get_num_threads()} threads",
        "machine_info": machine_info(),
        "command": "python bench/finetune_slices.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "wall_seconds": {mode: runs[mode]["seconds"] for mode in runs},
        "mean_psnr": {"fbp": float(np.mean([r["fbp_psnr"] for r in rows])),
                      "independent": float(np.mean([r["independent_psnr"] for r in rows])),
                      "warm": float(np.mean([r["warm_psnr"] for r in rows]))},
        "mean_psnr_after_slice_0": {
            "independent": float(np.mean([r["independent_psnr"] for r in later])) if later else None,
            "warm": float(np.mean([r["warm_psnr"] for r in later])) if later else None},
        "warm_reaches_independent_final": {
            "slices": f"{sum(x is not None for x in reached)} of {len(later)} (slices after the first)",
            "median_iteration": float(np.median([x for x in reached if x is not None])) if any(
                x is not None for x in reached) else None,
            "median_independent_iteration": float(np.median([r["independent_reaches_its_final_at"] for r in later
                                                             if r["independent_reaches_its_final_at"] is not None]))
            if later else None,
            "independent_reaching_warm_final":
                f"{sum(r['independent_reaches_warm_final_at'] is not None for r in later)} of {len(later)}"},
        "finetune_commands": {mode: runs[mode]["command"] for mode in runs},
        "slices": rows,
    }
    print(f"\nmean PSNR: FBP {result['mean_psnr']['fbp']:.2f}, independent {result['mean_psnr']['independent']:.2f}, "
          f"warm-started {result['mean_psnr']['warm']:.2f} dB; wall time independent "
          f"{result['wall_seconds']['independent']:.1f} s, warm-started {result['wall_seconds']['warm']:.1f} s")
    reach = result["warm_reaches_independent_final"]
    print(f"warm-started slices reaching the independent run's final PSNR: {reach['slices']}, median at iteration "
          f"{reach['median_iteration']} (the independent run itself: {reach['median_independent_iteration']}) "
          f"of {args.iterations}"
          + (f"; warm-started slices ran {args.warm_iterations} iterations" if args.warm_iterations else ""))
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    plot(rows, path.with_suffix(".png"))
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return result


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    offsets = {"independent": 0, "warm": 0}  # slices one after another, as each run goes
    for position, r in enumerate(rows):
        for name, style in (("independent", "--"), ("warm", "-")):
            curve = r[f"{name}_curve"]
            left.plot(np.asarray(curve["iteration"]) + offsets[name], curve["psnr"], style, lw=1,
                      color="tab:blue" if name == "warm" else "tab:orange",
                      label=("warm-started" if name == "warm" else "independent") if position == 0 else None)
            offsets[name] += curve["iteration"][-1]
    left.set_xlabel("iteration (slices one after another)")
    left.set_ylabel("PSNR vs ground truth [dB]")
    left.legend()
    slices = [r["slice"] for r in rows]
    for key, label in (("fbp_psnr", "FBP"), ("independent_psnr", "independent"), ("warm_psnr", "warm-started")):
        right.plot(slices, [r[key] for r in rows], "o-", label=label)
    right.set_xlabel("slice")
    right.set_ylabel("PSNR of the returned iterate [dB]")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
