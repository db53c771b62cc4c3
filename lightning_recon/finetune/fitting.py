"""Fitting a prior to one slice, the same for ``--slice`` and for every slice of ``--slices``: the
model of the options, the run's logger, the fit (Ctrl-C or SIGTERM stop it early instead of losing
it) and what it returns."""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import lightning as L
import torch

from ..wandb_mode import default_wandb_mode
from ..data.real import Sinogram
from ..methods.analytic_deep_prior import AnalyticDeepPrior
from ..methods.callbacks import count_steps_in_progress_bar
from ..methods.dip import DeepImagePrior, RepeatedMeasurement
from .arguments import dip_channels

__all__ = ["NETWORK_LABELS", "SliceFit", "fit_slice", "interrupts_as_keyboard_interrupt", "prior_model",
           "returned_iterate", "run_logger"]

NETWORK_LABELS = {"unet": "DIP", "deep-decoder": "deep decoder", "analytic": "analytic deep prior"}


def prior_model(opts, geometry, pretrained: Optional[str]):
    """The model of ``finetune.py``'s options for one slice's geometry: DIP (U-Net or deep decoder)
    or, with ``--network analytic``, the analytic deep prior."""
    if opts.network == "analytic":
        return AnalyticDeepPrior(geometry.to_dict(), iterations=opts.adp_iterations, kernel_size=opts.adp_kernel,
                                 lr=opts.lr)
    channels, skip_channels = dip_channels(opts)
    return DeepImagePrior(geometry.to_dict(), channels=channels, skip_channels=skip_channels,
                          network_input=opts.network_input, tv_weight=opts.tv_weight, lr=opts.lr,
                          lr_warmup=opts.lr_warmup, seed=opts.seed, pretrained=pretrained,
                          data_loss=opts.data_loss, photons=opts.photons, early_stop_window=opts.early_stop_window,
                          early_stop_patience=opts.early_stop_patience, snapshot_every=opts.snapshot_every,
                          network=opts.network, iterations_per_step=opts.iterations_per_step)


def run_logger(opts, out: Path, slice_index: Optional[int] = None):
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


@contextlib.contextmanager
def interrupts_as_keyboard_interrupt():
    """Inside the block SIGTERM raises KeyboardInterrupt, as Ctrl-C does; afterwards both handlers
    are restored (Lightning sets SIGINT's to 'ignore' after an interrupted fit). Outside the main
    thread, where signals cannot be handled, it does nothing."""
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


def _fit_saving_on_interrupt(trainer, model, loader) -> bool:
    """``trainer.fit``; an interrupt stops it early instead of losing the run. True if interrupted."""
    try:
        trainer.fit(model, loader)
        return bool(trainer.interrupted)
    except (KeyboardInterrupt, SystemExit):  # Lightning ends a Ctrl-C with SystemExit after its own clean-up
        return True


@dataclass
class SliceFit:
    """A fitted slice: the model (its losses, best loss, early stop), whether an interrupt ended the
    fit early, and the returned image and the model's FBP of the measurement, both ``(H, W)`` on the
    CPU (None when interrupted before the first iteration)."""

    model: Any
    interrupted: bool
    image: Optional[torch.Tensor]
    fbp: Optional[torch.Tensor]


def fit_slice(opts, scan: Sinogram, reference: Optional[torch.Tensor], iterations: int, logger,
              start_weights: Optional[Dict[str, torch.Tensor]] = None, **trainer_settings) -> SliceFit:
    """Fits the model of the options to ``scan`` for ``iterations`` iterations, from ``start_weights``
    of its network (a warm start), else from ``--init``. ``reference`` (or None) only gives the
    logged PSNR, never the fit; ``trainer_settings`` go to the Lightning ``Trainer``. Ctrl-C or SIGTERM during the
    fit stop it early (``interrupted``), keeping the best iterate so far."""
    L.seed_everything(opts.seed, verbose=False)  # every slice the same random start, as one run
    model = prior_model(opts, scan.geometry, None if start_weights is not None or opts.init == "random" else opts.init)
    if start_weights is not None:
        model.net.load_state_dict(start_weights)
    model.reference = reference
    trainer = L.Trainer(max_steps=iterations, accelerator=opts.accelerator, devices=1, logger=logger,
                        enable_checkpointing=False, log_every_n_steps=10, default_root_dir=str(Path(opts.out)),
                        **trainer_settings)
    count_steps_in_progress_bar(trainer)  # the bar counts DIP iterations, not Lightning steps
    y = torch.from_numpy(scan.data)[None, None]
    with interrupts_as_keyboard_interrupt():
        interrupted = _fit_saving_on_interrupt(trainer, model, RepeatedMeasurement(y[0], iterations).loader())
    if model.reconstruction is None:
        return SliceFit(model, interrupted, None, None)
    return SliceFit(model, interrupted, model.reconstruction[0, 0].float().cpu(), model.fbp(y)[0, 0])


def returned_iterate(model) -> str:
    """Which iterate a fitted model returns, in words."""
    if isinstance(model, AnalyticDeepPrior):
        return "φ_B(y) with the trained B"
    return "moving-variance minimum" if model.reconstruction is model.early_stop_image else "lowest loss"
