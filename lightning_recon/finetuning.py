"""Command line of ``finetune.py``: Deep Image Prior (+TV) on one real measurement.

    python finetune.py scan.h5 --slice 0 --num-angles 30 --iterations 2000 --out outputs/finetune

Inputs are checked before anything is read or written; Ctrl-C or SIGTERM ends the run early and
still saves the best iterate so far.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

from .cli import _exit, default_wandb_mode

__all__ = ["finetune_main"]


def finetune_main(args: Optional[List[str]] = None) -> dict:
    """Entry point of ``finetune.py``: Deep Image Prior (+TV) on one real measurement.

    ``python finetune.py scan.h5 --slice 0 --num-angles 30 --iterations 2000 --out outputs/finetune``
    """
    import argparse
    import json

    import lightning as L
    import numpy as np
    import torch

    from .data.real import load_data_exchange, load_sinogram
    from .methods.dip import DeepImagePrior, RepeatedMeasurement
    from .physics.fbp import FBP

    parser = argparse.ArgumentParser(prog="finetune.py", description=finetune_main.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="Data Exchange .h5 raw scan, or .npz (sinogram, angles) / .npy sinogram")
    parser.add_argument("--slice", type=int, default=0, help="detector row of an .h5 scan")
    parser.add_argument("--angle-step", type=int, default=1, help="keep every k-th projection (sparse view)")
    parser.add_argument("--num-angles", type=int, default=None,
                        help="keep this many projections evenly spread over a half turn (.h5 scans)")
    parser.add_argument("--binning", type=int, default=1, help="average k neighbouring detector pixels")
    parser.add_argument("--center-offset", default="auto", help="rotation-axis offset in pixels, or 'auto'")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lr-warmup", type=int, default=0,
                        help="ramp the learning rate over the first N iterations (keeps an EDIP start)")
    parser.add_argument("--tv-weight", type=float, default=0.015,
                        help="γ of the TV term (0: plain DIP); best by PSNR: 0.015 on CT_small, 0.04 on the tooth")
    parser.add_argument("--network-input", choices=["fbp", "noise"], default="fbp")
    parser.add_argument("--data-loss", choices=["mse", "poisson"], default="mse",
                        help="poisson: photon-count likelihood for pre-log statistics (--photons per ray)")
    parser.add_argument("--photons", type=float, default=1e4)
    parser.add_argument("--early-stop-window", type=int, default=0,
                        help="stop when the moving variance over this many iterates stalls and return the "
                        "iterate at its minimum (ES-WMV; 0: run all, return the lowest-loss iterate)")
    parser.add_argument("--early-stop-patience", type=int, default=300)
    parser.add_argument("--snapshot-every", type=int, default=0, help="log the image every N iterations")
    parser.add_argument("--init", default="random", help="'random' or a checkpoint with net.* weights (EDIP)")
    parser.add_argument("--channels", type=int, default=64, help="U-Net channels at every scale")
    parser.add_argument("--scales", type=int, default=5)
    parser.add_argument("--reference", default=None,
                        help="'full-fbp' (FBP from all angles of the .h5 scan) or a .npy image, for PSNR/SSIM")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--logger", choices=["wandb", "csv", "none"], default="csv")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--angle-unit", choices=["auto", "radians", "degrees"], default="auto",
                        help="unit of an .npz file's angles (auto: values beyond 2π are degrees)")
    parser.add_argument("--out", default="outputs/finetune")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an input error")
    opts = parser.parse_args(args)

    problems = _finetune_argument_problems(opts)
    if problems:
        _exit("finetune.py", "; ".join(problems))
    try:  # every input is read and checked before any folder is created or any work starts
        offset = opts.center_offset if opts.center_offset == "auto" else float(opts.center_offset)
        if opts.input.endswith((".h5", ".hdf5")):
            scan = load_data_exchange(opts.input, opts.slice, opts.angle_step, opts.binning, offset,
                                      num_angles=opts.num_angles)
        else:
            scan = load_sinogram(opts.input, 0.0 if offset == "auto" else offset, angle_unit=opts.angle_unit,
                                 angle_step=opts.angle_step)
        reference = None
        if opts.reference == "full-fbp":
            full = load_data_exchange(opts.input, opts.slice, 1, opts.binning, offset)
            reference = FBP(full.geometry, "Hann", 1.0)(torch.from_numpy(full.data)[None, None])[0, 0]
        elif opts.reference:
            reference = torch.from_numpy(np.load(opts.reference).astype(np.float32))
    except (ValueError, OSError) as error:
        if opts.debug:
            raise
        _exit("finetune.py", str(error))
    if reference is not None and tuple(reference.shape) != tuple(scan.geometry.image_shape):
        _exit("finetune.py", f"--reference has shape {tuple(reference.shape)}, "
                             f"the reconstruction {tuple(scan.geometry.image_shape)}")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    y = torch.from_numpy(scan.data)[None, None]

    L.seed_everything(opts.seed, verbose=False)
    model = DeepImagePrior(scan.geometry.to_dict(), channels=(opts.channels,) * opts.scales,
                           skip_channels=(4,) * opts.scales, network_input=opts.network_input, tv_weight=opts.tv_weight,
                           lr=opts.lr, lr_warmup=opts.lr_warmup, seed=opts.seed,
                           pretrained=None if opts.init == "random" else opts.init,
                           data_loss=opts.data_loss, photons=opts.photons, early_stop_window=opts.early_stop_window,
                           early_stop_patience=opts.early_stop_patience, snapshot_every=opts.snapshot_every,
                           fbp_frequency_scaling=1.0)  # the uncut FBP: DIP's input keeps the scan's detail
    model.reference = reference
    if opts.logger == "wandb":
        os.environ["WANDB_MODE"] = default_wandb_mode()
        from lightning.pytorch.loggers import WandbLogger

        logger = WandbLogger(project="lightning_recon", name=f"finetune-{Path(opts.input).stem}", save_dir=str(out))
    elif opts.logger == "csv":
        from lightning.pytorch.loggers import CSVLogger

        logger = CSVLogger(str(out), name="logs")
    else:
        logger = False
    trainer = L.Trainer(max_steps=opts.iterations, accelerator=opts.accelerator, devices=1, logger=logger,
                        enable_checkpointing=False, log_every_n_steps=10, default_root_dir=str(out))
    interrupted = _fit_saving_on_interrupt(trainer, model, RepeatedMeasurement(y[0], opts.iterations).loader())
    if model.reconstruction is None:
        _exit("finetune.py", "interrupted before the first iteration; nothing to save", 130)

    result = model.reconstruction[0, 0].cpu()
    fbp = model.fbp(y)[0, 0]
    summary = _save_finetune_outputs(out, result, fbp, reference, model.losses)
    summary.update(best_loss=model.best_loss, iterations=len(model.losses), stopped_early_at=model.stopped_at,
                   returned_iterate="moving-variance minimum" if model.reconstruction is model.early_stop_image
                   else "lowest loss",
                   moving_variance_minimum_at=model.early_stop_iteration,
                   input=opts.input,
                   sinogram_shape=list(scan.data.shape), interrupted=interrupted)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    if interrupted:
        _exit("finetune.py", f"interrupted after {len(model.losses)} iterations; the best iterate so far is saved "
              f"in {out}", 130)
    return summary


def _fit_saving_on_interrupt(trainer, model, loader) -> bool:
    """``trainer.fit``; Ctrl-C or SIGTERM stops it early instead of losing the run. True if interrupted."""
    import signal
    import threading

    def terminate(signum, frame):
        raise KeyboardInterrupt

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminate) if in_main_thread else None
    try:
        trainer.fit(model, loader)
        return bool(trainer.interrupted)
    except (KeyboardInterrupt, SystemExit):  # Lightning ends a Ctrl-C with SystemExit after its own clean-up
        return True
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _finetune_argument_problems(opts) -> List[str]:
    """What is wrong with ``finetune.py``'s arguments, before anything is read or written."""
    problems = []
    source = Path(opts.input)
    if not source.is_file():
        problems.append(f"no such input file: {opts.input}")
    elif source.suffix not in (".h5", ".hdf5", ".npz", ".npy"):
        problems.append(f"the input must be .h5/.hdf5, .npz or .npy, got {source.name}")
    at_least = {"--angle-step": (opts.angle_step, 1), "--binning": (opts.binning, 1), "--iterations": (opts.iterations, 1),
                "--channels": (opts.channels, 1), "--scales": (opts.scales, 1), "--slice": (opts.slice, 0),
                "--lr-warmup": (opts.lr_warmup, 0), "--early-stop-window": (opts.early_stop_window, 0),
                "--early-stop-patience": (opts.early_stop_patience, 1), "--snapshot-every": (opts.snapshot_every, 0)}
    if opts.num_angles is not None:
        at_least["--num-angles"] = (opts.num_angles, 1)
    problems += [f"{name} must be >= {low}, got {value}" for name, (value, low) in at_least.items() if value < low]
    for name, value in (("--lr", opts.lr), ("--photons", opts.photons)):
        if not value > 0:
            problems.append(f"{name} must be > 0, got {value}")
    if opts.tv_weight < 0:
        problems.append(f"--tv-weight must be >= 0, got {opts.tv_weight}")
    if opts.center_offset != "auto":
        try:
            float(opts.center_offset)
        except ValueError:
            problems.append(f"--center-offset must be a number of pixels or 'auto', got {opts.center_offset!r}")
    if opts.init != "random" and not Path(opts.init).is_file():
        problems.append(f"--init must be 'random' or a checkpoint file, got {opts.init!r}")
    if opts.reference == "full-fbp" and source.suffix not in (".h5", ".hdf5"):
        problems.append("--reference full-fbp needs an .h5 scan (all its angles)")
    elif opts.reference not in (None, "full-fbp") and not Path(opts.reference).is_file():
        problems.append(f"--reference must be 'full-fbp' or an .npy image file, got {opts.reference!r}")
    return problems


def _save_finetune_outputs(out, best, fbp, reference, losses) -> dict:
    """recon.npy / recon.tif, preview.png (FBP | DIP [| reference]) and loss.png; returns metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import tifffile

    from .metrics import psnr, ssim

    image = best.numpy().astype(np.float32)
    np.save(out / "recon.npy", image)
    tifffile.imwrite(out / "recon.tif", image)
    panels = [("FBP", fbp), ("DIP", best)] + ([("reference", reference)] if reference is not None else [])
    high = float(np.percentile((reference if reference is not None else best).numpy(), 99.5))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4))
    for ax, (name, panel) in zip(axes, panels):
        ax.imshow(panel.numpy().T, origin="lower", cmap="gray", vmin=0, vmax=high)
        ax.set_title(name)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "preview.png", dpi=80)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.semilogy(losses)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=80)
    plt.close(fig)
    summary = {}
    if reference is not None:
        ref = reference[None, None]
        data_range = float(ref.max() - ref.min())
        for name, panel in (("dip", best), ("fbp", fbp)):
            summary[f"{name}_psnr"] = float(psnr(panel[None, None], ref, data_range))
            summary[f"{name}_ssim"] = float(ssim(panel[None, None], ref, data_range))
    return summary
