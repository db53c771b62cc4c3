"""``finetune.py``'s run after its options are parsed, :func:`run`, and its one-slice run (``--slice`` of an .h5 scan,
or the sinogram of an .npz / .npy file); ``--slices`` is :mod:`.slices`."""
from __future__ import annotations

import json
from pathlib import Path


from ..locks import FolderInUse, OutputLock
from ..messages import exit_with_error, quiet_library_notes
from ..threads import apply_thread_policy
from .arguments import PROGRAM, argument_problems
from .fitting import NETWORK_LABELS, fit_slice, returned_iterate, run_logger
from .inputs import center_offset, input_errors_end_the_run, measurement_problems, read_slice, reference_file
from .outputs import reference_metrics, save_image, save_loss_plot, save_preview, write_summary
from .plug_and_play import pnp_one_slice
from .slices import finetune_slices

__all__ = ["finetune_one_slice", "run"]


def run(opts) -> dict:
    """``finetune.py`` with parsed options (:func:`lightning_recon.finetune.main`): every check of
    them, then one slice or ``--slices``, one run per ``--out`` folder. Returns the summary."""
    problems = argument_problems(opts)
    if problems:
        exit_with_error(PROGRAM, "; ".join(problems))
    quiet_library_notes()
    apply_thread_policy(opts.threads)
    lock = OutputLock(opts.out, PROGRAM)  # one run per --out: a second one would mix its slices in
    try:
        lock.acquire()
    except FolderInUse as error:
        exit_with_error(PROGRAM, str(error))
    try:
        if opts.slices is not None:
            return finetune_slices(opts)
        return pnp_one_slice(opts) if opts.prior != "dip" else finetune_one_slice(opts)
    finally:
        lock.release()


def finetune_one_slice(opts) -> dict:
    """One measurement: recon.npy / .tif, preview.png, loss.png and summary.json (also printed);
    an interrupt saves the best iterate so far and ends with status 130. Returns the summary."""
    row = 0 if opts.slice is None else opts.slice
    offset = center_offset(opts)
    with input_errors_end_the_run(opts.debug):  # every input is read and checked before any folder or work
        scan, reference = read_slice(opts, row, offset, reference_file(opts))
    problems = measurement_problems(opts, scan)
    if reference is not None and tuple(reference.shape) != tuple(scan.geometry.image_shape):
        problems.append(f"--reference has shape {tuple(reference.shape)}, the reconstruction "
                        f"{tuple(scan.geometry.image_shape)}")
    if problems:
        exit_with_error(PROGRAM, "; ".join(problems))
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    fitted = fit_slice(opts, scan, reference, opts.iterations, run_logger(opts, out))
    model = fitted.model
    if fitted.image is None:
        exit_with_error(PROGRAM, "interrupted before the first iteration; nothing to save", 130)

    save_image(out, fitted.image)
    save_preview(out, [("", fitted.fbp.numpy(), fitted.image.numpy(), None if reference is None else reference.numpy())],
                 NETWORK_LABELS[opts.network], inches=4)
    save_loss_plot(out, model.losses)
    summary = reference_metrics(fitted.image, fitted.fbp, reference)
    if opts.network == "analytic":
        summary.update(best_loss=min(model.losses), returned_iterate=returned_iterate(model))
    else:
        summary.update(best_loss=model.best_loss, stopped_early_at=model.stopped_at,
                       returned_iterate=returned_iterate(model), moving_variance_minimum_at=model.early_stop_iteration)
    summary.update(iterations=len(model.losses), input=opts.input, sinogram_shape=list(scan.data.shape),
                   interrupted=fitted.interrupted)
    write_summary(out, summary)
    print(json.dumps(summary, indent=2))
    if fitted.interrupted:
        exit_with_error(PROGRAM, f"interrupted after {len(model.losses)} iterations; the best iterate so far is "
                        f"saved in {out}", 130)
    return summary
