"""LightningCLI of lightning_recon: ``train.py`` (fit / validate / test / predict).

    python train.py fit --config configs/experiment/ellipses30_fbp_unet.yaml
    python train.py fit --config configs/data/ellipses-small.yaml --config configs/model/learned_pd.yaml \\
        --config configs/trainer/cpu.yaml --config configs/logger/csv.yaml
    python train.py test --config <same configs> --ckpt_path <run>/checkpoints/last.ckpt

The model's geometry is linked from the data module, so the two never disagree (links whose source
or target a chosen class lacks are skipped); the full resolved config is saved next to the run and
sent to the logger.
"""
from __future__ import annotations

import netrc
import os
import socket
import sys
import warnings
from pathlib import Path
from typing import List, Optional
from urllib.parse import urlparse

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .checkpointing import AtomicCheckpointIO
from .methods.callbacks import LearningRateLogger, ReconstructionPanels

__all__ = ["ReconCLI", "cli_main", "default_wandb_mode"]


def default_wandb_mode(probe_seconds: float = 3.0) -> str:
    """The W&B mode a run uses: ``offline``/``disabled`` when ``WANDB_MODE`` says so; ``online``
    (``WANDB_MODE=online``, or unset with W&B credentials) only when the W&B server answers a TCP
    connection within ``probe_seconds``, otherwise ``offline`` with one warning, so that a run on a
    machine without network never waits on the server; ``offline`` without credentials."""
    mode = os.environ.get("WANDB_MODE")
    if mode and mode != "online":
        return mode
    if mode != "online" and not _wandb_credentials():
        return "offline"
    if _wandb_server_reachable(probe_seconds):
        return "online"
    warnings.warn("W&B server unreachable: logging offline instead (upload later with `wandb sync`)", stacklevel=2)
    return "offline"


def _wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return bool(netrc.netrc().authenticators(urlparse(_wandb_url()).hostname or "api.wandb.ai"))
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _wandb_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"


def _wandb_server_reachable(timeout: float) -> bool:
    """A TCP connection to the W&B server (``WANDB_BASE_URL``) within ``timeout`` seconds."""
    url = urlparse(_wandb_url())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "api.wandb.ai", port), timeout=timeout):
            return True
    except OSError:
        return False


class LoggedSaveConfig(SaveConfigCallback):
    """Saves ``config.yaml`` into the run folder and sends the resolved config to the logger."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        if isinstance(trainer.logger, Logger):
            config = self.parser.dump(self.config, skip_none=False)
            trainer.logger.log_hyperparams({"config": config})


# --ckpt_path: settings the command line decides over the checkpoint's, and settings that only
# matter while training (the checkpoint's are kept outside `fit` without comparison).
HONOURED_SETTINGS = ("results_dir", "method_name", "ray_transform_backend")
REPORT_SETTINGS = ("results_dir", "method_name")  # honoured only when a config or flag sets them
TRAINING_ONLY_SETTINGS = ("lr", "betas", "weight_decay", "scheduler", "channels_last", "fused_optimizer",
                          "lr_warmup", "n_critic", "gp_weight")
LINKED_SETTINGS = ("geometry", "data_range", "fbp_filter", "fbp_frequency_scaling")


def _class_default(class_path: str, key: str):
    """The default of ``__init__`` argument ``key`` of ``class_path`` or of a base class (None if none)."""
    import importlib
    import inspect

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None
    for base in cls.__mro__:
        parameter = inspect.signature(base.__init__).parameters.get(key) if "__init__" in vars(base) else None
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    return None


def _exit(program: str, message: str, code: int = 2):
    """End ``program`` with one line on stderr, no traceback; status 2 (bad input) reads ``error:``."""
    sys.stderr.write(f"{program}: {'error: ' if code == 2 else ''}{message}\n")
    raise SystemExit(code)


def _same_setting(a, b) -> bool:
    """Equal up to list/tuple and int/float spelling (YAML lists, checkpoint tuples)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_setting(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


class ReconCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.geometry_dict", "model.init_args.geometry", apply_on="instantiate")
        parser.link_arguments("data.fixed_data_range", "model.init_args.data_range", apply_on="instantiate")
        # the model's own FBP (used by forward(measurement)) is the one its training inputs were made with
        parser.link_arguments("data.init_args.fbp_filter", "model.init_args.fbp_filter")
        parser.link_arguments("data.init_args.fbp_frequency_scaling", "model.init_args.fbp_frequency_scaling")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/psnr",
            "checkpoint.mode": "max",
            "checkpoint.save_last": True,
            "checkpoint.filename": "epoch{epoch:03d}-psnr{val/psnr:.2f}",
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.add_lightning_class_args(ReconstructionPanels, "panels")
        # simulated CT data unless a config names another data module (light field, sparse coding)
        parser.set_defaults({"data": {"class_path": "lightning_recon.data.SimulatedCTDataModule"}})

    def _parse_ckpt_path(self) -> None:
        """With ``--ckpt_path``, LightningCLI replaces the model config by the checkpoint's
        hyperparameters. Here a model class or a setting that differs from the checkpoint's is refused
        (one line naming each), except the settings of where and how to run and report, which the
        configs and flags clearly mean and which win: ``results_dir`` and ``method_name`` when set
        (else the checkpoint's stay), ``ray_transform_backend`` (a GPU checkpoint on a CPU) and,
        outside ``fit``, the training-only settings. Settings the data module links (geometry, FBP,
        data range) come from the data."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return super()._parse_ckpt_path()
        try:
            # memory-mapped: only the hyperparameters are read here; Lightning reads the checkpoint next
            hparams = dict(torch.load(ckpt_path, weights_only=True, map_location="cpu", mmap=True)
                           .get("hyper_parameters", {}))
        except Exception as error:
            _exit("train.py", f"checkpoint {ckpt_path} is unreadable ({type(error).__name__}); it may be truncated: "
                       "resume from another checkpoint of the run")
        asked = self.config[subcommand].get("model")
        asked_args = dict(vars(asked.get("init_args") or {})) if asked is not None else {}
        saved_class = hparams.get("_class_path")
        if asked is not None and saved_class and asked.get("class_path") != saved_class:
            _exit("train.py", f"--ckpt_path holds a {saved_class.rsplit('.', 1)[-1]}, the config asks for "
                       f"{str(asked.get('class_path')).rsplit('.', 1)[-1]}; to start a new model from other "
                       "weights use its pretrained-weights argument, not --ckpt_path")
        honoured = set(HONOURED_SETTINGS) | (set() if subcommand == "fit" else set(TRAINING_ONLY_SETTINGS))
        differing = [f"{key}: config {asked_args[key]!r}, checkpoint {hparams[key]!r}"
                     for key in sorted(asked_args)
                     if key in hparams and key not in honoured and key not in LINKED_SETTINGS
                     and not _same_setting(asked_args[key], hparams[key])]
        if differing:
            _exit("train.py", "the model config differs from --ckpt_path's (" + "; ".join(differing) + "); drop the "
                       "setting to use the checkpoint's, or train a new model")
        super()._parse_ckpt_path()
        if subcommand == "fit":
            self._continue_logger_version(Path(ckpt_path))
        model_args = self.config[subcommand].model.init_args
        class_path = str(asked.get("class_path")) if asked is not None else ""
        for key in honoured & set(asked_args):
            if key in REPORT_SETTINGS and _same_setting(asked_args[key], _class_default(class_path, key)):
                continue  # not set by any config or flag: the checkpoint's row name and folder stay
            if not _same_setting(model_args.get(key), asked_args[key]):
                rank_zero_info(f"--ckpt_path: {key} = {asked_args[key]!r} from the command line "
                               f"(the checkpoint had {model_args.get(key)!r})")
                model_args[key] = asked_args[key]

    def instantiate_classes(self) -> None:
        """Build data, model and trainer; a ValueError of ours (a bad setting) ends in one line
        naming it instead of jsonargparse's chained tracebacks (``LIGHTNING_RECON_DEBUG=1``: all)."""
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as error:
            if os.environ.get("LIGHTNING_RECON_DEBUG"):
                raise
            root = error
            while root.__cause__ is not None:
                root = root.__cause__
            _exit("train.py", str(root).splitlines()[0] if str(root) else type(root).__name__)

    def _continue_logger_version(self, ckpt_path: Path) -> None:
        """Resuming ``<save_dir>/<name>/version_N/checkpoints/*.ckpt`` with a CSV or TensorBoard logger
        logs into that same ``version_N`` (not a new one), which also keeps the checkpoint folder and
        with it the best-checkpoint record. The CSV logger would delete the earlier ``metrics.csv``
        there: it is kept as ``metrics.until-<checkpoint name>.csv``."""
        folder = ckpt_path.resolve().parent
        logger = self.config.fit.trainer.get("logger")
        if folder.name != "checkpoints" or not folder.parent.name.startswith("version_") or logger is None:
            return
        if not hasattr(logger, "class_path") or not str(logger.class_path).endswith(("CSVLogger", "TensorBoardLogger")):
            return
        init_args = logger.get("init_args")
        if init_args is not None and init_args.get("version") is None:
            init_args["version"] = folder.parent.name
            earlier = folder.parent / "metrics.csv"
            try:
                earlier.rename(earlier.with_name(f"metrics.until-{ckpt_path.stem}.csv"))
            except FileNotFoundError:  # no CSV log, or another process moved it already
                pass
            rank_zero_info(f"--ckpt_path: logging on in {folder.parent}")

    def instantiate_trainer(self, **kwargs):
        """The trainer, writing checkpoints atomically unless a config chose another checkpoint IO."""
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def before_instantiate_classes(self) -> None:
        os.environ["WANDB_MODE"] = default_wandb_mode()
        # TF32 for float32 matrix products on GPUs that have it (convolutions already use it by
        # default); the ray transform's sparse products are unaffected and stay float32.
        torch.set_float32_matmul_precision("high")


def cli_main(args: Optional[List[str]] = None, run: bool = True) -> ReconCLI:
    """Entry point of ``train.py``; ``args`` as on the command line (``None``: ``sys.argv``)."""
    return ReconCLI(
        L.LightningModule,  # any method: CT (ReconstructionModule), light field / sparse coding (SparseRecoveryModule)
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=LoggedSaveConfig,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"callbacks": [LearningRateLogger(logging_interval="step")], "default_root_dir": "outputs"},
        args=args,
        run=run,
    )



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
                           early_stop_patience=opts.early_stop_patience, snapshot_every=opts.snapshot_every)
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
