"""One low-dose scan, no references: Noise2Inverse trained on the scan's own slices against
``finetune.py --slices all`` (Deep Image Prior + TV, warm-started), PSNR and wall time side by side.

A synthetic multi-slice scan (``lightning_recon.data.synthetic_scan``: a seeded 3D ellipsoid
phantom, Poisson noise of ``--photons`` flat-field counts, flat and dark frames, Data Exchange layout)
is written once; its stored ground truth scores every row and is read by nothing else.

- FBP: Hann and Ram-Lak (uncut) on all angles.
- Noise2Inverse: ``ScanSlicesDataModule`` (every detector row one sample, no ground truth in
  training; values scaled by ``--intensity-scale``, default ``auto``) and FBP + U-Net with ``loss: noise2inverse`` (K = ``--splits`` interleaved angle
  subsets, X:1, Ram-Lak sub-reconstructions; ``--augment``: random flips and quarter turns of each
  training pair) for ``--steps`` steps, then every row reconstructed
  (the mean over the K sets). Training and inference times are reported apart.
- DIP: ``finetune.py <scan> --slices all`` with DIP + TV, warm-started (the first row
  ``--iterations``, then ``--warm-iterations`` each), the settings of ``bench/finetune_slices.py``.

PSNR per row against the ground-truth slice with its own range (as ``finetune.py`` reports it),
averaged over the rows. Prints a table, writes JSON.

    OMP_NUM_THREADS=1 python bench/scan_noise2inverse.py --threads 1          # 64 rows of 64², 360 angles
    OMP_NUM_THREADS=1 python bench/scan_noise2inverse.py --smoke               # tiny, a minute; numbers mean nothing
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, add_threads_argument, machine_info, set_threads

SMOKE = dict(slices=4, size=16, angles=24, steps=4, iterations=4, warm_iterations=2, channels_dip=4, scales=2,
             unet_channels=[4, 8], batch_size=2)


def fbp_rows(data, truth):
    import torch

    from lightning_recon.metrics import psnr
    from lightning_recon.physics.fbp import FBP

    rows = []
    for name, (kind, scaling) in {"FBP (Hann)": ("Hann", 1.0), "FBP (Ram-Lak)": ("Ram-Lak", 1.0)}.items():
        start = time.perf_counter()
        with torch.no_grad():
            images = FBP(data.geometry, kind, scaling)(data.measurements)
        seconds = time.perf_counter() - start
        rows.append(dict(method=name, psnr=float(psnr(images, truth).mean()), training_seconds=0.0,
                         reconstruction_seconds=seconds))
    return rows


def noise2inverse_row(data, truth, args):
    import lightning as L
    import torch

    from lightning_recon.methods import FBPUNet
    from lightning_recon.metrics import psnr

    torch.manual_seed(args.seed)
    model = FBPUNet(forward_model=data.forward_model_dict, loss="noise2inverse", n2i_splits=args.splits,
                    n2i_strategy="X:1", n2i_augment=args.augment, fbp_filter="Ram-Lak", fbp_frequency_scaling=1.0,
                    channels=args.unet_channels,
                    lr=args.lr, scheduler="cosine", method_name="Noise2Inverse")
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=args.steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, gradient_clip_val=1.0)
    start = time.perf_counter()
    trainer.fit(model, data)
    training = time.perf_counter() - start
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        images = torch.cat([model.reconstruct({"measurement": chunk}) for chunk in data.measurements.split(16)])
    reconstruction = time.perf_counter() - start
    return dict(method=f"Noise2Inverse (FBP + U-Net, K = {args.splits}, X:1, {args.steps} steps, "
                       f"values × {data.intensity_scale:.3g}{', flips and turns' if args.augment else ''})",
                psnr=float(psnr(images, truth).mean()), training_seconds=training,
                reconstruction_seconds=reconstruction)


def dip_row(scan: Path, truth_file: Path, work: Path, args):
    from lightning_recon.finetune import main as finetune_main

    command = [str(scan), "--slices", "all", "--reference", str(truth_file), "--iterations", str(args.iterations),
               "--warm-iterations", str(args.warm_iterations), "--channels", str(args.channels_dip),
               "--scales", str(args.scales), "--center-offset", "0", "--tv-weight", str(args.tv_weight),
               "--lr", "1e-3", "--logger", "none", "--accelerator", "cpu", "--seed", str(args.seed),
               "--out", str(work / "dip")]
    start = time.perf_counter()
    summary = finetune_main(command)
    seconds = time.perf_counter() - start
    return dict(method=f"DIP + TV, warm-started ({args.iterations} iterations, then {args.warm_iterations} per row)",
                psnr=summary["mean_recon_psnr"], training_seconds=0.0, reconstruction_seconds=seconds,
                command="python finetune.py " + " ".join(command))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=64, help="detector rows of the synthetic scan")
    parser.add_argument("--size", type=int, default=64, help="slice width and height (detector columns)")
    parser.add_argument("--angles", type=int, default=360, help="projections over [0°, 180°)")
    parser.add_argument("--photons", type=float, default=300.0, help="flat-field counts per detector pixel")
    parser.add_argument("--seed", type=int, default=0, help="phantom, noise and network seed")
    parser.add_argument("--splits", type=int, default=4, help="Noise2Inverse's K")
    parser.add_argument("--steps", type=int, default=2000, help="Noise2Inverse training steps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--unet-channels", type=int, nargs="+", default=[16, 16, 32, 32, 64])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--iterations", type=int, default=500, help="DIP iterations of the first row")
    parser.add_argument("--warm-iterations", type=int, default=100, help="DIP iterations of each later row")
    parser.add_argument("--channels-dip", type=int, default=16)
    parser.add_argument("--scales", type=int, default=4)
    parser.add_argument("--tv-weight", type=float, default=0.015)
    parser.add_argument("--intensity-scale", default="auto",
                        help="ScanSlicesDataModule's intensity_scale of the Noise2Inverse rows: auto or a number "
                             "(1: attenuation per pixel as measured)")
    parser.add_argument("--augment", action="store_true",
                        help="Noise2Inverse pairs randomly flipped and turned in training (n2i_augment)")
    parser.add_argument("--methods", nargs="+", default=["fbp", "noise2inverse", "dip"],
                        choices=["fbp", "noise2inverse", "dip"])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few steps: checks that it runs")
    parser.add_argument("--work", default=None, help="folder for the scan and the DIP run (default: temporary)")
    parser.add_argument("--json", default=None, help="JSON output (default: bench/results/scan_noise2inverse.json; "
                                                     "none with --smoke)")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    threads = set_threads(args.threads)

    import numpy as np

    from lightning_recon.data import ScanSlicesDataModule
    from lightning_recon.data.synthetic_scan import write_synthetic_scan

    with tempfile.TemporaryDirectory() as temporary:
        work = Path(args.work or temporary)
        if args.work and (work / "dip").exists():
            parser.error(f"{work} already holds a DIP run (it would be resumed, not timed): pick another --work")
        work.mkdir(parents=True, exist_ok=True)
        scan, truth_file = work / "scan.h5", work / "truth.npy"
        np.save(truth_file, write_synthetic_scan(scan, args.slices, args.size, args.angles, args.seed,
                                                 photons=args.photons))
        scale = args.intensity_scale if args.intensity_scale == "auto" else float(args.intensity_scale)
        data = ScanSlicesDataModule(str(scan), center_offset=0.0, fbp_filter="Ram-Lak", batch_size=args.batch_size,
                                    intensity_scale=scale)
        truth = data.ground_truth  # scaled with the data: PSNR with each row's own range does not change
        rows = []
        if "fbp" in args.methods:
            rows += fbp_rows(data, truth)
        if "noise2inverse" in args.methods:
            rows.append(noise2inverse_row(data, truth, args))
        if "dip" in args.methods:
            rows.append(dip_row(scan, truth_file, work, args))

    lines = [f"{args.slices} rows of {args.size}², {args.angles} angles, {args.photons:g} photons; PSNR per row "
             f"(its own range), mean over the rows; {threads} thread(s)", "",
             "| method | PSNR (dB) | training (s) | reconstruction, all rows (s) | total (s) |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['psnr']:.2f} | {r['training_seconds']:.0f} | "
                     f"{r['reconstruction_seconds']:.1f} | {r['training_seconds'] + r['reconstruction_seconds']:.0f} |")
    table = "\n".join(lines)
    print(table)
    path = args.json or (None if args.smoke else str(RESULTS / "scan_noise2inverse.json"))
    result = {"settings": {k: v for k, v in vars(args).items() if k not in ("json", "work")}, "threads": threads,
              "machine": machine_info(), "rows": rows, "table": table,
              "command": "python bench/scan_noise2inverse.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
