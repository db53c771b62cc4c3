"""``finetune.py``'s command line: its options, every check of them made before anything is read
or written, and the ``--slices`` forms."""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import List, Optional, Tuple

from ..locks import OutputUnwritable, check_writable
from ..pretrained import resolve_checkpoint

__all__ = ["PROGRAM", "argument_problems", "dip_channels", "is_scan", "parse_arguments", "parse_slices",
           "slice_indices"]

PROGRAM = "finetune.py"
SCAN_SUFFIXES = (".h5", ".hdf5")
SLICES_FORMS = "'all', a row ('3') or a range 'start:stop[:step]' of non-negative integers ('0:16', '0:64:4')"


def is_scan(path: str) -> bool:
    """A Data Exchange raw scan (detector rows), not a single sinogram (.npz / .npy)."""
    return path.endswith(SCAN_SUFFIXES)


def parse_arguments(args: Optional[List[str]], description: str) -> argparse.Namespace:
    """``finetune.py``'s options (``--help`` shows ``description`` first); a shipped checkpoint's
    name given to ``--init`` becomes its file."""
    opts = _parser(description).parse_args(args)
    if opts.init != "random":
        opts.init = resolve_checkpoint(opts.init)
    saved = _checkpoint_network(opts.init) if opts.init != "random" and opts.network == "unet" else {}
    for name, default in UNSET_DEFAULTS.items():
        if getattr(opts, name) is None:
            setattr(opts, name, saved.get(name, default))
    return opts


UNSET_DEFAULTS = {"channels": 64, "scales": 5}  # --channels / --scales when neither they nor --init say


def _checkpoint_network(path: str) -> dict:
    """``channels`` and ``scales`` of the U-Net in an EDIP / DIP checkpoint (``{}`` when the file
    does not say; its problems are reported by :func:`argument_problems`)."""
    import torch

    try:
        saved = torch.load(path, weights_only=True, map_location="cpu", mmap=True).get("hyper_parameters", {})
        channels = [int(c) for c in saved["channels"]]
    except Exception:  # missing, unreadable or another kind of checkpoint: checked later, in one line
        return {}
    return {"channels": channels[0], "scales": len(channels)} if len(set(channels)) == 1 else {}


def _parser(description: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=description,
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
    parser.add_argument("--init", default="random", help="'random', a checkpoint with net.* weights (EDIP), or the name of "
                        "shipped EDIP weights ('ellipses-edip')")
    parser.add_argument("--prior", default="dip",
                        help="'dip' (a network fitted to the measurement: --network) or 'denoiser:CHECKPOINT': "
                        "plug-and-play with a trained DenoiserModule (seconds; --pnp-* options)")
    parser.add_argument("--pnp-algorithm", choices=["hqs", "admm", "pgd", "red"], default="admm")
    parser.add_argument("--pnp-iterations", type=int, default=20)
    parser.add_argument("--pnp-weight", type=float, default=0.03,
                        help="λ of the data term (ADMM's choice on ellipses-small at 10 angles; docs/results.md)")
    parser.add_argument("--pnp-sigma-end", type=float, default=0.04, help="the last denoising level")
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
                        help="torch CPU threads (default: the cores free to this run, or OMP_NUM_THREADS; "
                        "lightning_recon.threads)")
    parser.add_argument("--channels", type=int, default=None,
                        help="U-Net channels at every scale (default: the --init checkpoint's, else 64)")
    parser.add_argument("--scales", type=int, default=None, help="(default: the --init checkpoint's, else 5)")
    parser.add_argument("--reference", default=None,
                        help="'full-fbp' (FBP from all angles of the .h5 scan), a .npy image, or a .npy volume "
                             "(rows, H, W) of the scan's slices (row k for --slice k and --slices), for PSNR/SSIM")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--logger", choices=["wandb", "csv", "none"], default="csv")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--angle-unit", choices=["auto", "radians", "degrees"], default="auto",
                        help="unit of an .npz file's angles (auto: values beyond 2π are degrees)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="reconstruct on an N × N grid over the same field of view (default: one pixel "
                             "per detector pixel)")
    parser.add_argument("--geometry", default=None,
                        help="a YAML file with the measurement's geometry as numbers (type: ParallelBeam2D or "
                             "FanBeam2D, image_shape, source_radius, detector_extent, ...; docs/data.md); its "
                             "sinogram shape must be the input's")
    parser.add_argument("--out", default="outputs/finetune")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an input error")
    return parser


# options that only the DIP networks use: given with --network analytic they would be ignored
DIP_ONLY_OPTIONS = ("tv_weight", "network_input", "early_stop_window", "early_stop_patience", "lr_warmup",
                    "data_loss", "photons", "snapshot_every", "channels", "scales", "iterations_per_step")
ACCELERATORS_NEEDING = {"gpu": "CUDA", "cuda": "CUDA", "mps": "MPS"}  # (torch is imported only after --help)


def _accelerator_available(name: str) -> bool:
    import torch

    return torch.backends.mps.is_available() if name == "MPS" else torch.cuda.is_available()


def dip_channels(opts) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """The DIP network's channels and skip channels per scale, from ``--channels`` and ``--scales``."""
    return (opts.channels,) * opts.scales, (4,) * opts.scales


DENOISER_PRIOR = "denoiser:"


def denoiser_checkpoint(prior: str) -> str:
    """The checkpoint of ``--prior denoiser:<checkpoint>`` (``""`` for ``--prior dip`` or a bad form)."""
    return prior[len(DENOISER_PRIOR):] if prior.startswith(DENOISER_PRIOR) else ""


def _plug_and_play_problems(opts) -> List[str]:
    """``--prior denoiser:CHECKPOINT``: its form, a file or a shipped name, one slice, no DIP options."""
    problems = []
    checkpoint = denoiser_checkpoint(opts.prior)
    if not checkpoint:
        return [f"--prior must be 'dip' or 'denoiser:CHECKPOINT', got {opts.prior!r}"]
    if not Path(resolve_checkpoint(checkpoint)).is_file():
        problems.append(f"--prior denoiser:{checkpoint}: no such checkpoint file")
    if opts.slices is not None:
        problems.append("--prior denoiser reconstructs one slice (--slice); --slices fits DIP slice by slice")
    defaults = _parser()
    given = [f"--{name.replace('_', '-')}" for name in (*DIP_ONLY_OPTIONS, "network", "init", "iterations", "lr")
             if getattr(opts, name) != UNSET_DEFAULTS.get(name, defaults.get_default(name))]
    if given:
        problems.append(f"--prior denoiser does not use {', '.join(given)} (DIP options); leave "
                        f"{'it' if len(given) == 1 else 'them'} out")
    if opts.pnp_iterations < 1 or not (opts.pnp_weight > 0 and math.isfinite(opts.pnp_weight)) or \
            not (opts.pnp_sigma_end > 0 and math.isfinite(opts.pnp_sigma_end)):
        problems.append("--pnp-iterations must be >= 1, --pnp-weight and --pnp-sigma-end finite and > 0")
    return problems


def argument_problems(opts) -> List[str]:
    """What is wrong with ``finetune.py``'s arguments, before any input is read or anything written
    (only the ``--init`` checkpoint is read, and ``--out`` probed for writing)."""
    problems = []
    source = Path(opts.input)
    if not source.is_file():
        problems.append(f"no such input file: {opts.input}")
    elif source.suffix not in (*SCAN_SUFFIXES, ".npz", ".npy"):
        problems.append(f"the input must be .h5/.hdf5, .npz or .npy, got {source.name}")
    if opts.slices is not None:
        if opts.slice is not None:
            problems.append("give --slice (one row) or --slices (several), not both")
        if not is_scan(opts.input):
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
    if opts.image_size is not None:
        at_least["--image-size"] = (opts.image_size, 2)
    if opts.geometry is not None and opts.image_size is not None:
        problems.append("give --geometry (its image_shape sets the grid) or --image-size, not both")
    if opts.geometry is not None and not Path(opts.geometry).is_file():
        problems.append(f"no such --geometry file: {opts.geometry}")
    if opts.geometry is not None and opts.reference == "full-fbp":
        problems.append("--reference full-fbp reconstructs the scan's own geometry: use --image-size with it")
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
        if not 0 < value < math.inf:
            problems.append(f"{name} must be finite and > 0, got {value}")
    if not 0 <= opts.tv_weight < math.inf:
        problems.append(f"--tv-weight must be finite and >= 0, got {opts.tv_weight}")
    if opts.center_offset != "auto":
        try:
            offset = float(opts.center_offset)
        except ValueError:
            offset = None
        if offset is None or not math.isfinite(offset):
            problems.append(f"--center-offset must be a number of pixels or 'auto', got {opts.center_offset!r}")
    needed = ACCELERATORS_NEEDING.get(str(opts.accelerator).lower())
    if needed and not _accelerator_available(needed):
        problems.append(f"--accelerator {opts.accelerator} needs {needed}, which this machine does not have "
                        "(use --accelerator cpu or auto)")
    if opts.prior != "dip":
        problems += _plug_and_play_problems(opts)
    if opts.network == "analytic":
        defaults = _parser()
        given = [f"--{name.replace('_', '-')}" for name in DIP_ONLY_OPTIONS
                 if getattr(opts, name) != UNSET_DEFAULTS.get(name, defaults.get_default(name))]
        if given:
            problems.append(f"--network analytic does not use {', '.join(given)} (DIP options); leave "
                            f"{'it' if len(given) == 1 else 'them'} out")
    if opts.init != "random":
        if not Path(opts.init).is_file():
            problems.append(f"--init must be 'random' or a checkpoint file, got {opts.init!r}")
        elif opts.network == "unet" and opts.channels >= 1 and opts.scales >= 1:
            from ..methods.dip import dip_unet, pretrained_weights

            try:
                pretrained_weights(opts.init, dip_unet(*dip_channels(opts)))
            except ValueError as error:
                problems.append(f"--init {error}")
    if opts.reference == "full-fbp" and not is_scan(opts.input):
        problems.append("--reference full-fbp needs an .h5 scan (all its angles)")
    elif opts.reference not in (None, "full-fbp") and not Path(opts.reference).is_file():
        problems.append(f"--reference must be 'full-fbp' or an .npy image file, got {opts.reference!r}")
    try:
        check_writable(opts.out, "--out")
    except OutputUnwritable as error:
        problems.append(str(error))
    return problems


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

