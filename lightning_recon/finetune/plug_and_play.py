"""``finetune.py --prior denoiser:<checkpoint>``: plug-and-play on one measurement with a trained
denoiser (:class:`~lightning_recon.methods.PlugAndPlay`, no network fitted, seconds not minutes).

The denoiser learnt images of values in about [0, 1] (``DenoiserModule`` on normalised ground
truths), so the measurement is divided by ``s``, the 99.5th percentile of its FBP, reconstructed,
and the image multiplied back by ``s``: ``--pnp-weight`` and ``--pnp-sigma-end`` then mean what they
mean on the denoiser's training data (docs/results.md, "Plug-and-play").
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..messages import exit_with_error
from ..methods.plug_and_play import PlugAndPlay
from ..pretrained import resolve_checkpoint
from .arguments import PROGRAM, denoiser_checkpoint
from .inputs import center_offset, input_errors_end_the_run, read_slice, reference_file
from .outputs import reference_metrics, save_image, save_preview, write_summary

__all__ = ["pnp_one_slice"]


def pnp_model(opts, geometry) -> PlugAndPlay:
    """The plug-and-play method of the options in ``geometry``; ``ValueError`` (one line) for a
    checkpoint that is not a denoiser, levels outside its trained range or an image it cannot take."""
    model = PlugAndPlay(forward_model=geometry.to_dict(), denoiser=resolve_checkpoint(denoiser_checkpoint(opts.prior)),
                        algorithm=opts.pnp_algorithm, iterations=opts.pnp_iterations, weight=opts.pnp_weight,
                        sigma_end=opts.pnp_sigma_end, tune=False, results_dir=None)
    model.attach_denoiser()  # read and checked now, before any folder or work
    return model


def pnp_one_slice(opts) -> dict:
    """One measurement reconstructed by plug-and-play: recon.npy / .tif, preview.png and
    summary.json (also printed). Returns the summary."""
    row = 0 if opts.slice is None else opts.slice
    with input_errors_end_the_run(opts.debug):
        scan, reference = read_slice(opts, row, center_offset(opts), reference_file(opts))
    if reference is not None and tuple(reference.shape) != tuple(scan.geometry.image_shape):
        exit_with_error(PROGRAM, f"--reference has shape {tuple(reference.shape)}, the reconstruction "
                        f"{tuple(scan.geometry.image_shape)}")
    try:
        model = pnp_model(opts, scan.geometry).eval()
    except ValueError as error:
        exit_with_error(PROGRAM, f"--prior {error}")
    y = torch.from_numpy(scan.data)[None, None].float()
    start = time.perf_counter()
    with torch.no_grad():
        fbp = model.fbp(y)
        scale = float(torch.quantile(fbp.flatten(), 0.995).clamp_min(1e-12))
        image = model(y / scale) * scale
    seconds = time.perf_counter() - start
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    image, fbp = image[0, 0], fbp[0, 0]
    save_image(out, image)
    save_preview(out, [("", fbp.numpy(), image.numpy(), None if reference is None else reference.numpy())],
                 f"PnP-{opts.pnp_algorithm.upper()}", inches=4)
    summary = reference_metrics(image, fbp, reference)
    summary.update(prior=opts.prior, algorithm=opts.pnp_algorithm, iterations=opts.pnp_iterations,
                   weight=opts.pnp_weight, sigma_end=opts.pnp_sigma_end, intensity_scale=scale, seconds=seconds,
                   input=opts.input, sinogram_shape=list(scan.data.shape))
    write_summary(out, summary)
    print(json.dumps(summary, indent=2))
    return summary
