"""Sparse-view CT without training data: FBP, TV, DIP+TV from scratch and EDIP, side by side.

    python bench/dip_sparse_view.py --case tooth --edip outputs/edip_tooth/checkpoints/last.ckpt
    python bench/dip_sparse_view.py --case ct_small --edip outputs/edip_tooth/checkpoints/last.ckpt

Cases:
- ``tooth`` (tooth-sparse-30): the real scan ``../shared/data/tooth.h5``, slice 0, 30 of the 181
  angles (0°, 6°, …, 174°), detector binned by 4, automatic centre of rotation. Reference: FBP
  (Hann) from all 181 angles. No ground truth exists.
- ``ct_small``: pydicom's ``CT_small.dcm`` (128², a real CT slice) as the known ground truth
  (HU → [0, 1] over [−1000, max]), 30 parallel-beam angles over [0, π) (ellipses-30's geometry),
  2.5 % white noise.

FBP's filter scaling, TV's α and DIP+TV's γ (``--tv-weights``, more than one value) are chosen
by PSNR against the reference: an oracle choice, the best case for every method. EDIP then runs
with the chosen γ. DIP+TV and EDIP run the same iterations with the same seed, input (FBP) and
learning rate, one after the other in this process; the PSNR of every
iterate and the wall time are recorded. "Steady PSNR" is the mean PSNR of the last 20 % of the
from-scratch run and "steady loss" the mean loss there; the table gives the first iteration
(and second) at which each run reaches each, and each run's peak PSNR (what an oracle stop would
keep). Run the from-scratch DIP long enough to be steady: DIP's PSNR rises to a peak and then
falls while the loss still decreases (semi-convergence), so a short run's tail is the peak.

Prints a table, writes ``bench/results/dip_<case>.json`` and the curves ``dip_<case>.png``.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from lightning_recon.methods.dip import DeepImagePrior
from lightning_recon.solvers import tv_pdhg
from lightning_recon.metrics import psnr, ssim
from lightning_recon.physics import FBP, RayTransform
from lightning_recon.pretrained import resolve_checkpoint

from common import (RESULTS, add_threads_argument, first_reaching, fit_dip, load_sparse_view_case, machine_info,
                    set_threads)


def scores(image: torch.Tensor, reference: torch.Tensor) -> dict:
    data_range = float(reference.max() - reference.min())
    pair = (image[None, None].float(), reference[None, None].float())
    return {"psnr": float(psnr(*pair, data_range)), "ssim": float(ssim(*pair, data_range))}


def run_dip(geometry, y, reference, iterations, channels, tv_weight, lr, pretrained, seed, accelerator, lr_warmup=0):
    """DIP+TV iterations with the PSNR of every iterate and the time since the first step."""
    L.seed_everything(seed, verbose=False)
    model = DeepImagePrior(geometry.to_dict(), channels=(channels,) * 5, skip_channels=(4,) * 5, network_input="fbp",
                           tv_weight=tv_weight, lr=lr, lr_warmup=lr_warmup, pretrained=pretrained,
                           seed=seed)
    fit = fit_dip(model, y, iterations, accelerator, reference=reference)
    record = {key: fit[key] for key in ("psnr", "loss", "seconds")}
    record["best_loss_image"] = scores(model.best_image[0, 0].cpu(), reference)
    record["iterations_per_second"] = iterations / record["seconds"][-1]
    peak = int(np.argmax(record["psnr"]))
    record["peak"] = {"psnr": record["psnr"][peak], "iteration": peak + 1}
    return record


def reaching(curve, seconds, level):
    """(first iteration at which ``curve`` reaches ``level``, seconds to it), (None, None) if never."""
    k = first_reaching(curve, level)
    return (k, seconds[k - 1]) if k else (None, None)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=["tooth", "ct_small"], default="tooth")
    parser.add_argument("--edip", default=None, help="EDIP checkpoint (net.* weights) or the name of shipped "
                        "weights ('ellipses-edip'); omitted: DIP only")
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--tv-weights", type=float, nargs="+", default=[0.015],
                        help="γ of DIP+TV; with several, the best from-scratch run (by PSNR) is kept")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lr-warmup", type=int, default=0, help="linear learning-rate ramp (iterations), both runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--alphas", type=float, nargs="+", default=None, help="TV weights to try")
    parser.add_argument("--accelerator", default="auto")
    add_threads_argument(parser)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.edip:
        args.edip = resolve_checkpoint(args.edip)
    set_threads(args.threads)
    y, geometry, reference, description = load_sparse_view_case(args.case)
    results = {"case": description, "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
               f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}", "args": vars(args),
               "machine_info": machine_info()}

    fbps = {s: FBP(geometry, "Hann", s)(y)[0, 0] for s in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)}
    best_scaling = max(fbps, key=lambda s: scores(fbps[s], reference)["psnr"])
    results["fbp"] = dict(scores(fbps[best_scaling], reference), filter="Hann", frequency_scaling=best_scaling)

    operator = RayTransform(geometry)
    scale = float(reference.max())
    alphas = args.alphas or [scale * 2.0 ** k for k in range(-1, 9)]  # 0.5 … 256 × the image maximum
    start = time.perf_counter()
    tv = {a: tv_pdhg(y, operator, a, iterations=500)[0, 0] for a in alphas}
    best_alpha = max(tv, key=lambda a: scores(tv[a], reference)["psnr"])
    if best_alpha in (alphas[0], alphas[-1]):
        print(f"warning: the best TV weight {best_alpha:.3g} is at the edge of the grid; widen --alphas")
    results["tv"] = dict(scores(tv[best_alpha], reference), alpha=best_alpha, alphas=alphas,
                         seconds_per_alpha=(time.perf_counter() - start) / len(alphas))
    print(f"FBP {results['fbp']['psnr']:.2f} dB (scaling {best_scaling}); TV {results['tv']['psnr']:.2f} dB (α {best_alpha:.3g})")

    sweep = {}
    for gamma in args.tv_weights:
        sweep[gamma] = run_dip(geometry, y, reference, args.iterations, args.channels, gamma, args.lr, None,
                               args.seed, args.accelerator, args.lr_warmup)
        print(f"DIP+TV γ {gamma:g}: best-loss iterate {sweep[gamma]['best_loss_image']['psnr']:.2f} dB, "
              f"{sweep[gamma]['iterations_per_second']:.1f} it/s")
    best_gamma = max(sweep, key=lambda gamma: sweep[gamma]["best_loss_image"]["psnr"])
    if len(sweep) > 1 and best_gamma in (min(sweep), max(sweep)):
        print(f"warning: the best DIP+TV weight {best_gamma:g} is at the edge of the grid; widen --tv-weights")
    results["dip_tv_weights"] = {f"{gamma:g}": run["best_loss_image"] for gamma, run in sweep.items()}
    runs = ["DIP+TV (random init)"] + (["EDIP (pre-trained init)"] if args.edip else [])
    results["DIP+TV (random init)"] = dict(sweep[best_gamma], tv_weight=best_gamma)
    if args.edip:
        results["EDIP (pre-trained init)"] = dict(
            run_dip(geometry, y, reference, args.iterations, args.channels, best_gamma, args.lr, args.edip,
                    args.seed, args.accelerator, args.lr_warmup), tv_weight=best_gamma)
        print(f"EDIP γ {best_gamma:g}: best-loss iterate "
              f"{results['EDIP (pre-trained init)']['best_loss_image']['psnr']:.2f} dB")

    scratch = results["DIP+TV (random init)"]
    tail = slice(int(0.8 * args.iterations), None)
    steady = float(np.mean(scratch["psnr"][tail]))
    steady_loss = float(np.mean(scratch["loss"][tail]))
    results["steady_psnr"], results["steady_loss"] = steady, steady_loss
    print(f"\n{description}\nsteady state of DIP+TV from scratch (mean of the last 20 %): "
          f"PSNR {steady:.2f} dB, loss {steady_loss:.3g}\n")
    print("| method | PSNR (dB) | SSIM | peak PSNR (iteration) | iteration reaching steady PSNR | seconds to it "
          "| iteration reaching steady loss | seconds to it | it/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| FBP (Hann, scaling {best_scaling}) | {results['fbp']['psnr']:.2f} | {results['fbp']['ssim']:.3f} | | | | | | |")
    print(f"| TV (α {best_alpha:.3g}, 500 PDHG it.) | {results['tv']['psnr']:.2f} | {results['tv']['ssim']:.3f} | | | | | | |")
    for name in runs:
        run = results[name]
        run["reaches_steady"] = reaching(run["psnr"], run["seconds"], steady)
        run["reaches_steady_loss"] = reaching([-v for v in run["loss"]], run["seconds"], -steady_loss)
        cells = [f"{k if k else 'never'} | {f'{t:.1f}' if t else '–'}"
                 for k, t in (run["reaches_steady"], run["reaches_steady_loss"])]
        print(f"| {name} (γ {run['tv_weight']:g}), best-loss iterate | {run['best_loss_image']['psnr']:.2f} "
              f"| {run['best_loss_image']['ssim']:.3f} | {run['peak']['psnr']:.2f} ({run['peak']['iteration']}) "
              f"| {cells[0]} | {cells[1]} | {run['iterations_per_second']:.1f} |")
    if args.edip:
        edip = results["EDIP (pre-trained init)"]
        for key, what in (("reaches_steady", "PSNR"), ("reaches_steady_loss", "loss")):
            if scratch[key][0] and edip[key][0]:
                ratio = {"iterations": edip[key][0] / scratch[key][0], "seconds": edip[key][1] / scratch[key][1]}
                results[f"edip_over_scratch_{what.lower()}"] = ratio
                print(f"EDIP / scratch to the steady {what}: {ratio['iterations']:.2f} of the iterations, "
                      f"{ratio['seconds']:.2f} of the time")

    out = Path(args.out or RESULTS / f"dip_{args.case}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for name in runs:
        ax.plot(np.arange(1, args.iterations + 1), results[name]["psnr"], label=name)
        ax_loss.plot(np.arange(1, args.iterations + 1), results[name]["loss"], label=name)
    for name, value in (("FBP", results["fbp"]["psnr"]), ("TV", results["tv"]["psnr"])):
        ax.axhline(value, linestyle="--", color="gray")
        ax.text(args.iterations, value, f" {name}", va="center")
    ax.axhline(steady, linestyle=":", color="black")
    ax_loss.axhline(steady_loss, linestyle=":", color="black")
    for axis in (ax, ax_loss):
        axis.set_xscale("log")
        axis.set_xlabel("iteration")
    ax.set_ylabel("PSNR vs reference (dB)")
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("loss (relative data misfit + γ TV)")
    fig.suptitle(description, fontsize=8)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
