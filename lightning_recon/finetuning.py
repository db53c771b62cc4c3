"""Command line of ``finetune.py``: Deep Image Prior (+TV) on one real measurement, or on every
slice of a scan.

    python finetune.py scan.h5 --slice 0 --num-angles 30 --iterations 2000 --out outputs/finetune
    python finetune.py scan.h5 --slices all --num-angles 30 --iterations 500 --out outputs/scan

Inputs are checked before anything is read or written; Ctrl-C or SIGTERM ends the run early and
still saves the best iterate so far (one slice) or the finished slices (``--slices``).

With ``--slices`` every chosen detector row is reconstructed in turn, the first from ``--init``
and each next one warm-started from the previous slice's network weights (``--independent``:
every slice from ``--init``). Each finished slice is committed to ``OUT/slices/`` (its image, its
loss/PSNR curves, the network weights and ``state.json``), so rerunning the same command with
the same ``--out`` skips the finished slices and warm-starts from the saved network.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

from lightning.pytorch.callbacks import Callback

from .cli import default_wandb_mode
from .messages import exit_with_error

__all__ = ["finetune_main", "parse_slices", "slice_indices"]


def finetune_main(args: Optional[List[str]] = None) -> dict:
    """Entry point of ``finetune.py``: Deep Image Prior (+TV) on one real measurement, or on several
    slices of a scan in turn (``--slices``: each warm-started from the previous slice's network,
    resumable in the same ``--out``). Returns the summary.

    ``python finetune.py scan.h5 --slice 0 --num-angles 30 --iterations 2000 --out outputs/finetune``
    ``python finetune.py scan.h5 --slices all --num-angles 30 --iterations 500 --out outputs/scan``
    """
    import argparse
    import json

    import lightning as L
    import numpy as np
    import torch

    from .data.real import load_data_exchange, load_sinogram
    from .methods.dip import RepeatedMeasurement
    from .physics.fbp import FBP

    parser = argparse.ArgumentParser(prog="finetune.py", description=finetune_main.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="Data Exchange .h5 raw scan, or .npz (sinogram, angles) / .npy sinogram")
    parser.add_argument("--slice", type=int, default=None, help="detector row of an .h5 scan (default 0)")
    parser.add_argument("--slices", default=None,
                        help="several detector rows of an .h5 scan: 'all', a row '3' or a range 'start:stop[:step]' "
                        "('0:16', '0:64:4'); reconstructed in turn, each warm-started from the previous one; "
                        "writes a (slices, H, W) stack and resumes in the same --out")
    parser.add_argument("--warm-iterations", type=int, default=None,
                        help="with --slices: iterations of each warm-started slice (default --iterations; "
                        "neighbouring slices look alike, so a warm start needs far fewer)")
    parser.add_argument("--independent", action="store_true",
                        help="with --slices: start every slice from --init instead of the previous slice's network")
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
    parser.add_argument("--network", choices=["unet", "deep-decoder", "analytic"], default="unet",
                        help="the DIP network: the U-Net, or the deep decoder (Heckel & Hand 2019: --channels per "
                        "layer, --scales layers, its own noise input); or 'analytic', the analytic deep prior "
                        "(Dittmer et al. 2019: --adp-iterations non-negative proximal-gradient steps with "
                        "B = A (I + K), K a learned --adp-kernel² convolution, trained --iterations Adam steps)")
    parser.add_argument("--adp-iterations", type=int, default=50,
                        help="--network analytic: proximal-gradient iterations L inside φ_B")
    parser.add_argument("--adp-kernel", type=int, default=5,
                        help="--network analytic: side of the learned convolution K (odd)")
    parser.add_argument("--iterations-per-step", type=int, default=25,
                        help="DIP iterations per Lightning step (bookkeeping on the device, one host read per step; "
                        "the result does not depend on it)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1 is often fastest for small images on few cores)")
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
        exit_with_error("finetune.py", "; ".join(problems))
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    if opts.slices is not None:
        return _finetune_slices(opts)
    opts.slice = 0 if opts.slice is None else opts.slice
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
        exit_with_error("finetune.py", str(error))
    if reference is not None and tuple(reference.shape) != tuple(scan.geometry.image_shape):
        exit_with_error("finetune.py", f"--reference has shape {tuple(reference.shape)}, "
                             f"the reconstruction {tuple(scan.geometry.image_shape)}")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    y = torch.from_numpy(scan.data)[None, None]

    L.seed_everything(opts.seed, verbose=False)
    model = _dip_model(opts, scan.geometry, None if opts.init == "random" else opts.init)
    model.reference = reference
    logger = _logger(opts, out)
    trainer = L.Trainer(max_steps=opts.iterations, accelerator=opts.accelerator, devices=1, logger=logger,
                        enable_checkpointing=False, log_every_n_steps=10, default_root_dir=str(out))
    interrupted = _fit_saving_on_interrupt(trainer, model, RepeatedMeasurement(y[0], opts.iterations).loader())
    if model.reconstruction is None:
        exit_with_error("finetune.py", "interrupted before the first iteration; nothing to save", 130)

    result = model.reconstruction[0, 0].cpu()
    fbp = model.fbp(y)[0, 0]
    summary = _save_finetune_outputs(out, result, fbp, reference, model.losses, NETWORK_LABELS[opts.network])
    if opts.network == "analytic":
        summary.update(best_loss=min(model.losses), returned_iterate="φ_B(y) with the trained B")
    else:
        summary.update(best_loss=model.best_loss, stopped_early_at=model.stopped_at,
                       returned_iterate="moving-variance minimum" if model.reconstruction is model.early_stop_image
                       else "lowest loss",
                       moving_variance_minimum_at=model.early_stop_iteration)
    summary.update(iterations=len(model.losses), input=opts.input, sinogram_shape=list(scan.data.shape),
                   interrupted=interrupted)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    if interrupted:
        exit_with_error("finetune.py", f"interrupted after {len(model.losses)} iterations; the best iterate so far is saved "
              f"in {out}", 130)
    return summary


NETWORK_LABELS = {"unet": "DIP", "deep-decoder": "deep decoder", "analytic": "analytic deep prior"}


def _dip_model(opts, geometry, pretrained: Optional[str]):
    """The DIP model of ``finetune.py``'s options for one slice's geometry (``--network analytic``:
    the analytic deep prior, fitted the same way)."""
    from .methods.dip import DeepImagePrior

    if opts.network == "analytic":
        from .methods.analytic_deep_prior import AnalyticDeepPrior

        return AnalyticDeepPrior(geometry.to_dict(), iterations=opts.adp_iterations, kernel_size=opts.adp_kernel,
                                 lr=opts.lr)
    return DeepImagePrior(geometry.to_dict(), channels=(opts.channels,) * opts.scales,
                          skip_channels=(4,) * opts.scales, network_input=opts.network_input, tv_weight=opts.tv_weight,
                          lr=opts.lr, lr_warmup=opts.lr_warmup, seed=opts.seed, pretrained=pretrained,
                          data_loss=opts.data_loss, photons=opts.photons, early_stop_window=opts.early_stop_window,
                          early_stop_patience=opts.early_stop_patience, snapshot_every=opts.snapshot_every,
                          network=opts.network, iterations_per_step=opts.iterations_per_step,
                          fbp_frequency_scaling=1.0)  # the uncut FBP: DIP's input keeps the scan's detail


def _logger(opts, out: Path, slice_index: Optional[int] = None):
    """The ``--logger`` of one run; with ``slice_index`` one run (W&B) or version folder (CSV) per slice."""
    suffix = "" if slice_index is None else f"-slice{slice_index:04d}"
    if opts.logger == "wandb":
        os.environ["WANDB_MODE"] = default_wandb_mode()
        from lightning.pytorch.loggers import WandbLogger

        group = {} if slice_index is None else {"group": f"finetune-{Path(opts.input).stem}"}
        return WandbLogger(project="lightning_recon", name=f"finetune-{Path(opts.input).stem}{suffix}",
                           save_dir=str(out), **group)
    if opts.logger == "csv":
        from lightning.pytorch.loggers import CSVLogger

        version = {} if slice_index is None else {"version": f"slice_{slice_index:04d}"}
        return CSVLogger(str(out), name="logs", **version)
    return False


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
    if opts.slices is not None:
        if opts.slice is not None:
            problems.append("give --slice (one row) or --slices (several), not both")
        if source.suffix not in (".h5", ".hdf5"):
            problems.append("--slices needs an .h5 scan (detector rows)")
        try:
            parse_slices(opts.slices)
        except ValueError as error:
            problems.append(str(error))
    elif opts.independent:
        problems.append("--independent needs --slices (it starts every slice from --init)")
    if opts.warm_iterations is not None:
        if opts.slices is None or opts.independent:
            problems.append("--warm-iterations needs --slices without --independent (warm-started slices)")
        elif opts.warm_iterations < 1:
            problems.append(f"--warm-iterations must be >= 1, got {opts.warm_iterations}")
    at_least = {"--angle-step": (opts.angle_step, 1), "--binning": (opts.binning, 1), "--iterations": (opts.iterations, 1),
                "--channels": (opts.channels, 1), "--scales": (opts.scales, 1), "--slice": (opts.slice or 0, 0),
                "--lr-warmup": (opts.lr_warmup, 0), "--early-stop-window": (opts.early_stop_window, 0),
                "--early-stop-patience": (opts.early_stop_patience, 1), "--snapshot-every": (opts.snapshot_every, 0),
                "--iterations-per-step": (opts.iterations_per_step, 1)}
    if opts.num_angles is not None:
        at_least["--num-angles"] = (opts.num_angles, 1)
    if opts.threads is not None:
        at_least["--threads"] = (opts.threads, 1)
    if opts.network == "deep-decoder" and opts.init != "random":
        problems.append("--init loads U-Net weights (EDIP); the deep decoder starts from random weights")
    if opts.network == "analytic":
        if opts.init != "random":
            problems.append("--init loads U-Net weights (EDIP); the analytic deep prior starts from B = A")
        if opts.slices is not None:
            problems.append("--network analytic reconstructs one slice (--slice), not --slices")
        if opts.adp_kernel < 1 or opts.adp_kernel % 2 == 0:
            problems.append(f"--adp-kernel must be an odd number >= 1, got {opts.adp_kernel}")
        at_least["--adp-iterations"] = (opts.adp_iterations, 1)
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


def _save_finetune_outputs(out, best, fbp, reference, losses, label: str = "DIP") -> dict:
    """recon.npy / recon.tif, preview.png (FBP | ``label`` [| reference]) and loss.png; returns metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import tifffile

    image = best.numpy().astype(np.float32)
    np.save(out / "recon.npy", image)
    tifffile.imwrite(out / "recon.tif", image)
    panels = [("FBP", fbp), (label, best)] + ([("reference", reference)] if reference is not None else [])
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
    return _reference_metrics(best, fbp, reference)


def _reference_metrics(best, fbp, reference) -> dict:
    """``dip_psnr``, ``dip_ssim``, ``fbp_psnr``, ``fbp_ssim`` against ``reference`` (its own data
    range); {} without one."""
    from .metrics import psnr, ssim

    summary = {}
    if reference is not None:
        ref = reference[None, None]
        data_range = float(ref.max() - ref.min())
        for name, panel in (("dip", best), ("fbp", fbp)):
            summary[f"{name}_psnr"] = float(psnr(panel[None, None], ref, data_range))
            summary[f"{name}_ssim"] = float(ssim(panel[None, None], ref, data_range))
    return summary


# ---------------------------------------------------------------------------------------------
# Whole scans: --slices
# ---------------------------------------------------------------------------------------------
SLICES_FORMS = "'all', a row ('3') or a range 'start:stop[:step]' of non-negative integers ('0:16', '0:64:4')"
STATE_FILE = "state.json"
LIGHTNING_FIT_NOTICES = (r".*`validation_step` but have no `val_dataloader`", r".*is smaller than the logging interval",
                         r".*LeafSpec.*is deprecated")


def parse_slices(text: str) -> slice:
    """``--slices`` as a ``slice`` of detector rows: ``all``, ``3``, or ``start:stop[:step]`` as in
    Python (stop exclusive; ``4:`` runs to the last row). Raises ValueError with a one-line message."""
    spec = text.strip()
    if spec == "all":
        return slice(0, None, 1)
    bad = ValueError(f"--slices must be {SLICES_FORMS}, got {text!r}")
    parts = spec.split(":")
    if not 1 <= len(parts) <= 3 or (len(parts) == 1 and not spec):
        raise bad
    try:
        values = [int(part) if part.strip() else None for part in parts]
    except ValueError:
        raise bad from None
    if len(values) == 1:
        values = [values[0], values[0] + 1, 1]
    start, stop, step = (values + [None])[:3]
    start, step = (0 if start is None else start), (1 if step is None else step)
    if start < 0 or (stop is not None and stop < 0) or step < 1:
        raise ValueError(f"--slices must be {SLICES_FORMS} (step >= 1), got {text!r}")
    if stop is not None and stop <= start:
        raise ValueError(f"--slices {text!r} selects no row (stop <= start)")
    return slice(start, stop, step)


def slice_indices(text: str, rows: int) -> List[int]:
    """The detector rows ``--slices text`` selects of a scan with ``rows`` rows; a range reaching
    beyond the scan is refused (not cut)."""
    chosen = parse_slices(text)
    if chosen.start >= rows or (chosen.stop is not None and chosen.stop > rows):
        raise ValueError(f"--slices {text} reaches beyond the scan's {rows} detector rows (0 to {rows - 1})")
    return list(range(rows))[chosen]


def _scan_rows(path: str) -> int:
    """Detector rows of a Data Exchange scan (what is wrong with the file, named by ``load_data_exchange``)."""
    import h5py

    from .data.real import load_data_exchange

    try:
        with h5py.File(path, "r") as f:
            data = f.get("exchange/data")
            rows = data.shape[1] if isinstance(data, h5py.Dataset) and data.ndim == 3 else None
    except OSError:
        rows = None
    if rows is None:
        load_data_exchange(path, 0)  # raises, naming the problem
        raise ValueError(f"{path} is not a Data Exchange scan")
    return int(rows)


def _slice_inputs(opts, index: int, offset, reference_volume):
    """The sinogram of detector row ``index`` and its reference image (or None)."""
    import numpy as np
    import torch

    from .data.real import load_data_exchange
    from .physics.fbp import FBP

    scan = load_data_exchange(opts.input, index, opts.angle_step, opts.binning, offset, num_angles=opts.num_angles)
    reference = None
    if opts.reference == "full-fbp":
        full = load_data_exchange(opts.input, index, 1, opts.binning, offset)
        reference = FBP(full.geometry, "Hann", 1.0)(torch.from_numpy(full.data)[None, None])[0, 0]
    elif reference_volume is not None:
        reference = torch.from_numpy(np.array(reference_volume[index], dtype=np.float32))
    return scan, reference


def _slices_settings(opts) -> dict:
    """What a finished slice depends on: a rerun into the same --out must agree on all of it."""
    def file(name):
        return str(Path(name).resolve())

    return {"input": file(opts.input), "input_bytes": Path(opts.input).stat().st_size,
            "angle_step": opts.angle_step, "num_angles": opts.num_angles, "binning": opts.binning,
            "center_offset": opts.center_offset, "iterations": opts.iterations,
            "warm_iterations": opts.warm_iterations, "lr": opts.lr,
            "lr_warmup": opts.lr_warmup, "tv_weight": opts.tv_weight, "network_input": opts.network_input,
            "data_loss": opts.data_loss, "photons": opts.photons, "early_stop_window": opts.early_stop_window,
            "early_stop_patience": opts.early_stop_patience,
            "init": opts.init if opts.init == "random" else file(opts.init), "channels": opts.channels,
            "scales": opts.scales, "network": opts.network, "seed": opts.seed, "independent": opts.independent,
            "reference": opts.reference if opts.reference in (None, "full-fbp") else file(opts.reference)}


def _load_state(path: Path, settings: dict) -> dict:
    """The saved progress of an earlier run into the same --out, or a fresh one; ValueError when
    the saved slices were made with other settings."""
    import json

    if not path.is_file():
        return {"settings": settings, "finished": {}, "order": [], "network": None}
    try:
        state = json.loads(path.read_text())
        saved, finished = state["settings"], state["finished"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path} is unreadable; remove {path.parent} to start over") from None
    changed = [key for key in sorted(set(saved) | set(settings)) if saved.get(key) != settings.get(key)]
    if changed:
        names = {"input": "input file", "input_bytes": "input file size"}
        described = ", ".join(f"{names.get(key, '--' + key.replace('_', '-'))} {saved.get(key)!r} -> "
                              f"{settings.get(key)!r}" for key in changed[:4])
        raise ValueError(f"{path.parent.parent} holds {len(finished)} slice(s) made with other settings ({described}"
                         f"{', …' if len(changed) > 4 else ''}); rerun with those, use another --out, or remove "
                         f"{path.parent}")
    return state


def _write_atomically(path: Path, write) -> None:
    """``write(file)`` into a temporary file, then renamed over ``path``: an interrupt never leaves half a file."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        write(handle)
    os.replace(temporary, path)


class _SliceProgress(Callback):
    """Shows iteration and loss on the bar over slices (at most twice a second); records the
    ``train/psnr`` of every step when the model has a reference (``(iteration, psnr)`` pairs)."""

    def __init__(self, bar, iterations: int, record_psnr: bool):
        self.bar, self.iterations, self.record_psnr = bar, iterations, record_psnr
        self.psnr: list = []
        self._shown = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        import time

        done = len(pl_module.losses)
        if self.record_psnr:
            value = trainer.callback_metrics.get("train/psnr")
            if value is not None:
                self.psnr.append((done, value.detach().clone()))
        now = time.monotonic()
        if now - self._shown > 0.5 and pl_module.losses:
            self._shown = now
            self.bar.set_postfix_str(f"iteration {done}/{self.iterations}, loss {pl_module.losses[-1]:.4g}")

    def curves(self, losses) -> dict:
        import numpy as np
        import torch

        curves = {"loss": np.asarray(losses, dtype=np.float32)}
        if self.psnr:
            curves["psnr_iteration"] = np.asarray([i for i, _ in self.psnr], dtype=np.int64)
            curves["psnr"] = torch.stack([v.float().cpu() for _, v in self.psnr]).numpy()
        return curves


def _interrupts_as_keyboard_interrupt():
    """SIGTERM raises KeyboardInterrupt (as Ctrl-C) while the slices run; the SIGINT handler,
    which Lightning sets to 'ignore' after an interrupted fit, is restored afterwards."""
    import contextlib
    import signal
    import threading

    @contextlib.contextmanager
    def handlers():
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def terminate(signum, frame):
            raise KeyboardInterrupt

        previous_term, previous_int = signal.signal(signal.SIGTERM, terminate), signal.getsignal(signal.SIGINT)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous_term)
            signal.signal(signal.SIGINT, previous_int)

    return handlers()


def _finetune_slices(opts) -> dict:
    """``--slices``: DIP on each chosen row in turn, warm-started, committed slice by slice, resumable."""
    import json
    import logging
    import sys
    import time
    import warnings

    import lightning as L
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from .methods.dip import RepeatedMeasurement

    offset = opts.center_offset if opts.center_offset == "auto" else float(opts.center_offset)
    out = Path(opts.out)
    slices_dir = out / "slices"
    state_path = slices_dir / STATE_FILE
    try:  # every input is read and checked (the first row to do in full) before any folder is created
        rows = _scan_rows(opts.input)
        indices = slice_indices(opts.slices, rows)
        reference_volume = None
        if opts.reference not in (None, "full-fbp"):
            reference_volume = np.load(opts.reference, mmap_mode="r")
        state = _load_state(state_path, _slices_settings(opts))
        pending = [k for k in indices if str(k) not in state["finished"]]
        first = _slice_inputs(opts, (pending or indices)[0], offset, None)
        net_state = None  # the network the next slice starts from, saved after the last finished one
        if state["network"] and not opts.independent and pending:
            network = slices_dir / state["network"]
            if not network.is_file():
                raise ValueError(f"{network}, the network the next slice starts from, is missing; remove "
                                 f"{slices_dir} to start over")
            net_state = torch.load(network, map_location="cpu", weights_only=True)
    except (ValueError, OSError) as error:
        if opts.debug:
            raise
        exit_with_error("finetune.py", str(error))
    image_shape = tuple(first[0].geometry.image_shape)
    if reference_volume is not None and tuple(reference_volume.shape) != (rows, *image_shape):
        exit_with_error("finetune.py", f"--reference has shape {tuple(reference_volume.shape)}; with --slices it must be the "
                             f"volume {(rows, *image_shape)} (detector rows, then the reconstruction's shape)")
    if reference_volume is not None:
        first = (first[0], torch.from_numpy(np.array(reference_volume[(pending or indices)[0]], dtype=np.float32)))
    slices_dir.mkdir(parents=True, exist_ok=True)

    n, done_before = len(indices), len(indices) - len(pending)
    previous = state["order"][-1] if state["order"] else None
    if done_before:
        print(f"finetune.py: {done_before} of {n} slices already done in {out}"
              + ("" if opts.independent or not pending or previous is None
                 else f"; continuing warm-started from slice {previous}'s network"))
    quiet = [logging.getLogger(name) for name in ("lightning.pytorch.utilities.rank_zero",
                                                  "lightning.fabric.utilities.rank_zero")]
    levels = [logger.level for logger in quiet]
    computed: dict = {}
    interrupted, error, index = False, None, None
    started = time.perf_counter()
    bar = tqdm(total=n, initial=done_before, unit="slice", dynamic_ncols=True, mininterval=0.5, file=sys.stderr)
    with _interrupts_as_keyboard_interrupt(), warnings.catch_warnings():
        try:
            for position, index in enumerate(pending):
                bar.set_description(f"slice {done_before + position + 1} of {n}")
                start = time.perf_counter()
                scan, reference = first if position == 0 else _slice_inputs(opts, index, offset, reference_volume)
                warm = net_state is not None and not opts.independent
                L.seed_everything(opts.seed, verbose=False)  # every slice the same random start, as one run
                model = _dip_model(opts, scan.geometry, None if warm or opts.init == "random" else opts.init)
                if warm:
                    model.net.load_state_dict(net_state)
                model.reference = reference
                iterations = opts.warm_iterations if warm and opts.warm_iterations else opts.iterations
                progress = _SliceProgress(bar, iterations, record_psnr=reference is not None)
                trainer = L.Trainer(max_steps=iterations, accelerator=opts.accelerator, devices=1,
                                    logger=_logger(opts, out, index), enable_checkpointing=False,
                                    enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=10,
                                    default_root_dir=str(out), callbacks=[progress])
                y = torch.from_numpy(scan.data)[None, None]
                if _fit_saving_on_interrupt(trainer, model, RepeatedMeasurement(y[0], iterations).loader()):
                    interrupted = True
                    break
                if opts.logger == "wandb":
                    import wandb

                    wandb.finish()
                for logger in quiet:  # the device lines once, not once per slice
                    logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
                for notice in LIGHTNING_FIT_NOTICES:  # and Lightning's notices about every fit
                    warnings.filterwarnings("ignore", message=notice)
                result = model.reconstruction[0, 0].float().cpu()
                fbp = model.fbp(y)[0, 0]
                record = {"slice": index, "iterations": len(model.losses), "best_loss": model.best_loss,
                          "first_loss": model.losses[0], "stopped_early_at": model.stopped_at,
                          "returned_iterate": "moving-variance minimum"
                          if model.reconstruction is model.early_stop_image else "lowest loss",
                          "warm_start_from": previous if warm else None,
                          "center_offset": -scan.geometry.detector_offset,
                          **_reference_metrics(result, fbp, reference)}
                net_state = {name: value.detach().cpu().clone() for name, value in model.net.state_dict().items()}
                record["seconds"] = time.perf_counter() - start
                _commit_slice(slices_dir, state, index, result.numpy(), progress.curves(model.losses), net_state,
                              record)
                computed[index], previous = record, index
                bar.update(1)
                tqdm.write(_slice_line(record, done_before + position + 1, n), file=sys.stdout)
        except KeyboardInterrupt:
            interrupted = True
        except ValueError as problem:  # a later row that cannot be read (NaN, dead flats, …)
            if opts.debug:
                raise
            error = f"slice {index}: {problem}"
        finally:
            bar.close()
            for logger, level in zip(quiet, levels):
                logger.setLevel(level)

    done = [k for k in indices if str(k) in state["finished"]]
    if not done:
        exit_with_error("finetune.py", error or "interrupted before the first slice finished; nothing to save",
              2 if error else 130)
    records = [dict(state["finished"][str(k)], from_previous_run=k not in computed) for k in done]
    _save_stack(out, slices_dir, done, image_shape)
    _save_slices_preview(out, opts, offset, reference_volume, done, slices_dir)
    summary = {"input": opts.input, "mode": "independent" if opts.independent else "warm-start",
               "slices_requested": len(indices), "slices_finished": len(done),
               "shape": [len(done), *image_shape], "sinogram_shape": list(first[0].data.shape),
               "seconds": time.perf_counter() - started, "interrupted": interrupted,
               "pending": [k for k in indices if str(k) not in state["finished"]], "slices": records}
    for key in ("dip_psnr", "fbp_psnr"):
        if all(key in r for r in records):
            summary[f"mean_{key}"] = float(np.mean([r[key] for r in records]))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"finetune.py: {len(done)} of {n} slices in {out / 'recon.npy'} {tuple(summary['shape'])}"
          + (f", mean PSNR {summary['mean_dip_psnr']:.2f} dB (FBP {summary['mean_fbp_psnr']:.2f} dB)"
             if "mean_dip_psnr" in summary else ""))
    if error:
        exit_with_error("finetune.py", f"{error}; the {len(done)} finished slices are saved in {out}")
    if interrupted:
        exit_with_error("finetune.py", f"interrupted after {len(done)} of {n} slices; they are saved in {out}, and the same "
                             "command continues from there", 130)
    return summary


def _commit_slice(slices_dir: Path, state: dict, index: int, image, curves: dict, net_state: dict,
                  record: dict) -> None:
    """Save one finished slice; ``state.json``, renamed into place last, is what makes it count."""
    import json

    import numpy as np
    import torch

    _write_atomically(slices_dir / f"slice_{index:04d}.npy", lambda f: np.save(f, image.astype(np.float32)))
    _write_atomically(slices_dir / f"curves_{index:04d}.npz", lambda f: np.savez(f, **curves))
    network = f"net_{index:04d}.pt"  # the weights after this slice, which the next one starts from
    _write_atomically(slices_dir / network, lambda f: torch.save(net_state, f))
    state["finished"][str(index)] = record
    state["order"].append(index)
    state["network"] = network
    _write_atomically(slices_dir / STATE_FILE, lambda f: f.write(json.dumps(state, indent=1).encode()))
    for stale in slices_dir.glob("net_*.pt"):  # only the newest network is needed
        if stale.name != network:
            stale.unlink()


def _slice_line(record: dict, position: int, n: int) -> str:
    line = (f"slice {record['slice']} ({position}/{n}): {record['iterations']} iterations in "
            f"{record['seconds']:.1f} s, best loss {record['best_loss']:.4g}")
    if "dip_psnr" in record:
        line += f", PSNR {record['dip_psnr']:.2f} dB (FBP {record['fbp_psnr']:.2f} dB)"
    start = record["warm_start_from"]
    return line + (f", warm-started from slice {start}" if start is not None else ", from --init")


def _save_stack(out: Path, slices_dir: Path, done: List[int], image_shape) -> None:
    """recon.npy / recon.tif: the finished slices as one (slices, H, W) stack, written slice by slice."""
    import numpy as np
    import tifffile

    stack = np.lib.format.open_memmap(out / "recon.npy", mode="w+", dtype=np.float32, shape=(len(done), *image_shape))
    for position, index in enumerate(done):
        stack[position] = np.load(slices_dir / f"slice_{index:04d}.npy")
    stack.flush()
    tifffile.imwrite(out / "recon.tif", stack, bigtiff=stack.nbytes > 2**31, photometric="minisblack")
    del stack


def _save_slices_preview(out: Path, opts, offset, reference_volume, done: List[int], slices_dir: Path,
                         count: int = 4) -> None:
    """preview.png: FBP | DIP (| reference) for up to ``count`` slices spread over the finished ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from .physics.fbp import FBP

    chosen = sorted({done[i] for i in np.linspace(0, len(done) - 1, min(count, len(done))).round().astype(int)})
    columns = 3 if opts.reference else 2
    fig, axes = plt.subplots(len(chosen), columns, figsize=(3 * columns, 3 * len(chosen)), squeeze=False)
    for row, index in zip(axes, chosen):
        scan, reference = _slice_inputs(opts, index, offset, reference_volume)
        fbp = FBP(scan.geometry, "Hann", 1.0)(torch.from_numpy(scan.data)[None, None])[0, 0].numpy()
        dip = np.load(slices_dir / f"slice_{index:04d}.npy")
        panels = [("FBP", fbp), (NETWORK_LABELS[opts.network], dip)] + ([("reference", reference.numpy())] if reference is not None else [])
        high = float(np.percentile(panels[-1][1] if reference is not None else dip, 99.5))
        for ax, (name, panel) in zip(row, panels):
            ax.imshow(panel.T, origin="lower", cmap="gray", vmin=0, vmax=high)
            ax.set_title(f"slice {index}: {name}", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "preview.png", dpi=80)
    plt.close(fig)
