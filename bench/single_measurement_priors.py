"""Priors fitted to one measurement, side by side: the U-Net Deep Image Prior, the deep decoder
(Heckel & Hand 2019), the analytic deep prior (Dittmer et al. 2019) and the plain proximal-gradient
reconstruction ADP starts from.

    python bench/single_measurement_priors.py --case tooth --iterations 2000
    python bench/single_measurement_priors.py --case ellipses --images 2 --iterations 2000
    python bench/single_measurement_priors.py --case ellipses-small --images 1 --iterations 10000 --tag _10000it

Cases:
- ``tooth``: ``../shared/data/tooth.h5`` slice 0, 30 of 181 angles, binning 4 (160²); reference: the
  181-angle FBP (Hann) — as bench/dip_sparse_view.py.
- ``ellipses``: the first ``--images`` test samples of ellipses-30 (dival's standard, 128², 30
  angles, 2.5 % noise); reference: the ground truth.
- ``ellipses-small``: the same for ellipses-small (dival's generator at 64², 30 angles, 2.5 %
  noise): cheap enough on a CPU for runs long enough to over-fit.

Every method runs from the same seed without TV (the property compared is how each behaves
without a regulariser or early stop): the PSNR of every iterate against the reference, its peak
and where it is, the PSNR of the last iterate (what a run without early stopping returns), the
weights, the wall time. ADP: ``L = --adp-iterations`` non-negative proximal-gradient steps with
``B = A (I + K_θ)`` (5 × 5 ``K_θ``) trained for ``--adp-steps`` Adam steps; "PG" is the same
``φ_A`` before training. Prints a table, writes ``bench/results/priors_<case>.json`` and the PSNR
curves ``priors_<case>.png``.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import lightning as L
import torch

from lightning_recon.data import SimulatedCTDataModule
from lightning_recon.methods import AnalyticDeepPrior
from lightning_recon.methods.dip import DeepImagePrior
from lightning_recon.metrics import psnr

from common import (RESULTS, add_threads_argument, first_samples, fit_dip, load_sparse_view_case, machine_info,
                    set_threads)

METHODS = ("dip", "deep-decoder", "adp")


def cases(name: str, images: int):
    """[(label, sinogram (1, 1, A, D), geometry dict, reference (H, W))]."""
    if name == "tooth":
        y, geometry, reference, _ = load_sparse_view_case("tooth")
        return [("tooth", y, geometry.to_dict(), reference)]
    data = SimulatedCTDataModule(preset="ellipses-30" if name == "ellipses" else name, num_workers=0)
    test = first_samples(data, "test", images, ("measurement", "ground_truth"))
    return [(f"{name} test {i}", test["measurement"][i:i + 1], data.forward_model_dict, test["ground_truth"][i, 0])
            for i in range(images)]


def fit(model, y: torch.Tensor, reference: torch.Tensor, steps: int) -> dict:
    """The PSNR of every iterate (ADP: every training step), its peak, the last, weights and time."""
    run = fit_dip(model, y, steps, "cpu", reference)
    values, seconds = run["psnr"], run["fit_seconds"]
    peak = max(range(len(values)), key=values.__getitem__)
    weights = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"curve": values, "peak_psnr": values[peak], "peak_iteration": peak + 1, "last_psnr": values[-1],
            "seconds": seconds, "seconds_to_peak": seconds * (peak + 1) / len(values), "weights": weights}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=["tooth", "ellipses", "ellipses-small"], default="tooth")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--channels", type=int, default=32, help="U-Net channels per scale (5 scales)")
    parser.add_argument("--decoder-channels", type=int, default=64, help="deep decoder channels (5 layers)")
    parser.add_argument("--decoder-lr", type=float, default=1e-2, help="deep decoder Adam step (U-Net DIP: 1e-3)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="which priors to run")
    parser.add_argument("--adp-iterations", type=int, default=50)
    parser.add_argument("--adp-steps", type=int, default=300)
    parser.add_argument("--tag", default="", help="suffix of the output names: priors_<case><tag>.json/.png")
    add_threads_argument(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    rows = []
    for label, y, geometry, reference in cases(args.case, args.images):
        data_range = float(reference.max() - reference.min())
        runs = {}
        if "dip" in args.methods:
            L.seed_everything(0, verbose=False)
            runs["DIP (U-Net)"] = fit(DeepImagePrior(geometry, channels=(args.channels,) * 5, skip_channels=(4,) * 5,
                                                     tv_weight=0.0),
                                      y, reference, args.iterations)
        if "deep-decoder" in args.methods:
            L.seed_everything(0, verbose=False)
            # its FBP only sets the image scale: Hann at 0.5, DIP's default when the figures were measured
            runs["deep decoder"] = fit(DeepImagePrior(geometry, network="deep-decoder",
                                                      channels=(args.decoder_channels,) * 5, tv_weight=0.0,
                                                      lr=args.decoder_lr, fbp_frequency_scaling=0.5),
                                       y, reference, args.iterations)
        if "adp" in args.methods:
            adp = AnalyticDeepPrior(geometry, iterations=args.adp_iterations)
            with torch.no_grad():
                plain = adp(y)
            pg = float(psnr(plain, reference[None, None], data_range))
            runs["PG (φ_A)"] = {"peak_psnr": pg, "peak_iteration": args.adp_iterations,  # one number: drawn as a line
                                "last_psnr": pg, "seconds": 0.0, "seconds_to_peak": 0.0, "weights": 0}
            runs["ADP"] = fit(adp, y, reference, args.adp_steps)
        for method, run in runs.items():
            rows.append({"image": label, "method": method, **run})
            print(f"{label:16s} {method:14s} peak {run['peak_psnr']:6.2f} dB at {run['peak_iteration']:5d} "
                  f"({run['seconds_to_peak']:6.1f} s), last {run['last_psnr']:6.2f} dB, {run['weights']:8d} weights, "
                  f"{run['seconds']:6.1f} s", flush=True)
    print("\n| image | method | peak PSNR (dB) | at iteration | last PSNR (dB) | weights | s to peak | s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['image']} | {r['method']} | {r['peak_psnr']:.2f} | {r['peak_iteration']} | {r['last_psnr']:.2f} | "
              f"{r['weights']} | {r['seconds_to_peak']:.1f} | {r['seconds']:.1f} |")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"priors_{args.case}{args.tag}.json"
    out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "machine_info": machine_info(),
                               "args": vars(args), "rows": rows}, indent=1))
    _plot(rows, out.with_suffix(".png"))
    print(f"wrote {out}")


def _plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = sorted({r["image"] for r in rows})
    fig, axes = plt.subplots(1, len(images), figsize=(5 * len(images), 3.5), squeeze=False)
    for ax, image in zip(axes[0], images):
        for r in rows:
            if r["image"] == image and "curve" in r:
                ax.plot(range(1, len(r["curve"]) + 1), r["curve"], label=r["method"])
            elif r["image"] == image and r["method"].startswith("PG"):
                ax.axhline(r["last_psnr"], color="gray", linestyle=":", label=r["method"])
        ax.set_xscale("log")
        ax.set_xlabel("iteration (ADP: training step)")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(image)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
