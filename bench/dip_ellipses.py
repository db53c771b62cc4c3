"""DIP+TV on dival's ellipses standard (ellipses-30): a few images, γ chosen on validation images.

Deep Image Prior with TV (Baguer et al. 2020) needs no training data but one optimisation per image,
so (as in the paper) it is scored on a few test images. Run mode: each (image, γ) of ``--split``
runs ``--iterations`` DIP+TV iterations (input: FBP, U-Net 5 × 64 channels, Adam 1e-3) and records
the PSNR/SSIM (per-image data range) of the lowest-loss iterate, the peak PSNR over the run (what
an oracle stop would keep) and the time. Merge mode: γ = the best mean of the validation runs,
then the test images' mean at that γ (no test-set tuning). Prints tables, writes JSON.

    python bench/dip_ellipses.py --split val --images 0 1 --json val.json
    python bench/dip_ellipses.py --split test --images 0 --json test0.json   # one process per image
    python bench/dip_ellipses.py --merge val.json test0.json test1.json --json bench/results/dip_ellipses.json
    python bench/dip_ellipses.py --preset ellipses-small --num-angles 10 --channels 32 ...   # another geometry
    python bench/dip_ellipses.py --preset ellipses-small --limited-angle 60 ...              # 30 angles over [0°, 60°)
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Optional

import lightning as L
import torch

from lightning_recon.data import SimulatedCTDataModule
from lightning_recon.results import write_results_table
from lightning_recon.methods.dip import DeepImagePrior
from lightning_recon.metrics import psnr, ssim

from common import fit_dip, machine_info

PUBLISHED = {"method": "DIP+TV (Baguer et al. 2020)", "psnr": 28.94, "ssim": 0.886}


def run_one(data: SimulatedCTDataModule, split: str, index: int, tv_weight: float, iterations: int,
            accelerator: str, channels: int = 64) -> dict:
    sample = data.dataset(split)[index]
    truth = sample["ground_truth"][0]
    L.seed_everything(0, verbose=False)
    model = DeepImagePrior(data.forward_model_dict, channels=(channels,) * 5, skip_channels=(4,) * 5, network_input="fbp",
                           tv_weight=tv_weight, lr=1e-3)
    fit = fit_dip(model, sample["measurement"][None], iterations, accelerator, reference=truth)
    curve = fit["psnr"]
    image, ref = model.best_image.float().cpu(), truth[None, None]
    peak = max(range(len(curve)), key=curve.__getitem__)
    return {"split": split, "index": index, "tv_weight": tv_weight, "iterations": iterations,
            "seconds": fit["fit_seconds"],
            "psnr": float(psnr(image, ref)), "ssim": float(ssim(image, ref)),
            "peak_psnr": curve[peak], "peak_iteration": peak + 1, "psnr_every_100": curve[99::100]}


def geometry_arguments(preset: str, num_angles, limited_angle) -> dict:
    """The data module's geometry arguments for ``--num-angles`` / ``--limited-angle`` (``{}``: the preset's)."""
    if limited_angle is None:
        return {} if num_angles is None else {"num_angles": num_angles}
    if not 0 < limited_angle <= 180:
        raise SystemExit(f"--limited-angle must be in (0, 180] degrees, got {limited_angle}")
    geometry = SimulatedCTDataModule(preset).forward_model_dict
    if num_angles is not None:
        geometry["num_angles"] = num_angles
    geometry["angle_range"] = [0.0, math.radians(limited_angle)]
    return {"geometry": geometry}


def merge(paths, out: Path, results_dir: Optional[Path] = None) -> None:
    runs = [run for path in paths for run in json.loads(Path(path).read_text())["runs"]]
    by = lambda split, gamma: [r for r in runs if r["split"] == split and r["tv_weight"] == gamma]  # noqa: E731
    gammas = sorted({r["tv_weight"] for r in runs})
    val_scores = {g: statistics.mean(r["psnr"] for r in by("val", g)) for g in gammas if by("val", g)}
    if not val_scores:
        raise SystemExit("no validation runs to choose γ from")
    best = max(val_scores, key=val_scores.get)
    test = by("test", best)
    print("| γ | validation PSNR | test PSNR (lowest-loss iterate) | test peak PSNR |\n|---|---|---|---|")
    for g in gammas:
        t = by("test", g)
        print(f"| {g:g}{' (chosen)' if g == best else ''} | {val_scores.get(g, float('nan')):.2f} | "
              + (f"{statistics.mean(r['psnr'] for r in t):.2f} | {statistics.mean(r['peak_psnr'] for r in t):.2f} |"
                 if t else "– | – |"))
    result = {"tv_weight": best, "validation_psnr": val_scores, "runs": runs, "published": PUBLISHED}
    if test:
        result.update(test_images=len(test), psnr=statistics.mean(r["psnr"] for r in test),
                      ssim=statistics.mean(r["ssim"] for r in test),
                      seconds_per_image=statistics.mean(r["seconds"] for r in test))
        print(f"DIP+TV, γ = {best:g}, {len(test)} test images: {result['psnr']:.2f} dB / SSIM {result['ssim']:.3f} "
              f"(published for ellipses-30 at 30 angles: {PUBLISHED['psnr']} / {PUBLISHED['ssim']}), {result['seconds_per_image']:.0f} s per image")
        if results_dir is not None:
            psnrs, ssims = [r["psnr"] for r in test], [r["ssim"] for r in test]
            spread = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)  # noqa: E731  (torch's std, n − 1)
            row = {"method": f"DIP+TV (γ = {best:g}, {test[0]['iterations']} iterations)",
                   "psnr": result["psnr"], "psnr_std": spread(psnrs), "ssim": result["ssim"], "ssim_std": spread(ssims),
                   "seconds_per_image": result["seconds_per_image"], "images": len(test)}
            print(f"row added to {write_results_table(results_dir, row)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=["val", "test"], default="test")
    parser.add_argument("--images", type=int, nargs="+", default=[0])
    parser.add_argument("--tv-weights", type=float, nargs="+", default=[0.005, 0.015, 0.05])
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--preset", default="ellipses-30")
    parser.add_argument("--num-angles", type=int, help="measured angles over [0, π) (default: the preset's)")
    parser.add_argument("--limited-angle", type=float, metavar="DEGREES",
                        help="measure the preset's angles over [0, DEGREES) instead of [0, 180)")
    parser.add_argument("--channels", type=int, default=64, help="U-Net channels per scale (5 scales)")
    parser.add_argument("--accelerator", default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--merge", nargs="+", help="JSON files of earlier runs to merge")
    parser.add_argument("--json", type=Path, default=Path("bench/results/dip_ellipses.json"))
    parser.add_argument("--results-dir", type=Path,
                        help="with --merge: also add the test row to this results table (results.csv/.md)")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.json, args.results_dir)
    data = SimulatedCTDataModule(args.preset, val_length=max(args.images) + 1, test_length=max(args.images) + 1,
                                 **geometry_arguments(args.preset, args.num_angles, args.limited_angle))
    runs = []
    for index in args.images:
        for gamma in args.tv_weights:
            runs.append(run_one(data, args.split, index, gamma, args.iterations, args.accelerator, args.channels))
            print({k: v for k, v in runs[-1].items() if k != "psnr_every_100"}, flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"runs": runs, "machine_info": machine_info()}, indent=1))


if __name__ == "__main__":
    main()
