"""Every callback of the methods: image panels of fixed validation samples (fixed intensity window),
posterior panels of samplers, max-intensity projections of volumes, the learning rate, the files
``train.py predict`` writes; and the one way they publish pictures (W&B image, or PNG in the run folder)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, LearningRateMonitor, TQDMProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["LearningRateLogger", "PosteriorPanels", "ReconstructionPanels", "ReconstructionWriter", "StepProgressBar",
           "ValidateAtEnd", "VolumePanels", "count_steps_in_progress_bar", "gray_to_rgb_uint8",
           "panel_rows", "posterior_panel_rows", "projection_panel", "publish_panels"]


class LearningRateLogger(LearningRateMonitor):
    """Lightning's ``LearningRateMonitor`` that stays quiet (instead of failing) without a logger."""

    def on_train_start(self, trainer, *args, **kwargs):
        if trainer.loggers:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer, *args, **kwargs):
        if trainer.loggers:
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer, *args, **kwargs):
        if trainer.loggers:
            super().on_train_epoch_start(trainer, *args, **kwargs)


class StepProgressBar(TQDMProgressBar):
    """Lightning's training bar counting ``trainer.global_step``, what ``max_steps`` counts, instead
    of batches: every optimiser step of a GAN (a critic and a generator update on one batch are two)
    and every DIP iteration (several per batch with ``iterations_per_step``). A method that makes
    more than one optimiser step per batch says how many in ``optimizer_steps_per_batch``; the
    bar's total is the epoch's batches times that, capped by the steps left to ``max_steps``.
    With ``generator_steps`` (a GAN) the bar also shows the generator updates made."""

    def on_train_start(self, trainer, *args) -> None:
        """Counts from the batches already made in this epoch: Lightning calls ``on_train_epoch_start``
        after this unless it resumes inside an epoch."""
        super().on_train_start(trainer, *args)
        batches_done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        self._begin_epoch(trainer, trainer.global_step - round(batches_done * self._steps_per_batch(trainer)))

    def on_train_epoch_start(self, trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        self._begin_epoch(trainer, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        n = trainer.global_step - self._epoch_start_step
        bar = self.train_progress_bar
        if bar is not None and (self._should_update(batch_idx + 1, bar.total) or n >= (bar.total or 0)):
            bar.n = n
            bar.refresh()
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    @staticmethod
    def _steps_per_batch(trainer) -> float:
        return float(getattr(trainer.lightning_module, "optimizer_steps_per_batch", 1))

    def _begin_epoch(self, trainer, epoch_start_step: int) -> None:
        """Counts from ``epoch_start_step``; the total is the epoch's optimiser steps, capped by ``max_steps``."""
        self._epoch_start_step = epoch_start_step
        total = trainer.num_training_batches * self._steps_per_batch(trainer)
        if trainer.max_steps is not None and trainer.max_steps > 0:
            total = min(total, trainer.max_steps - epoch_start_step)
        self.train_progress_bar.total = total if total == float("inf") else int(round(total))

    def get_metrics(self, trainer, pl_module):
        metrics = super().get_metrics(trainer, pl_module)
        generator_steps = getattr(pl_module, "generator_steps", None)
        if generator_steps is not None:
            metrics["generator_steps"] = generator_steps
        return metrics


def count_steps_in_progress_bar(trainer: L.Trainer) -> None:
    """Puts :class:`StepProgressBar` in the place of Lightning's default bar (same refresh rate);
    a bar of another kind, or none, is left as it is."""
    bar = trainer.progress_bar_callback
    if type(bar) is TQDMProgressBar:
        trainer.callbacks[trainer.callbacks.index(bar)] = StepProgressBar(refresh_rate=bar.refresh_rate,
                                                                          leave=bar._leave)


def _window(image: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return ((image - low) / (high - low)).clamp(0, 1)


def gray_to_rgb_uint8(gray: torch.Tensor) -> torch.Tensor:
    """A gray image ``(H, W)`` in [0, 1] as uint8 RGB ``(3, H, W)`` on the CPU (what loggers take)."""
    return (gray.expand(3, *gray.shape) * 255).round().to(torch.uint8).cpu()


def panel_rows(truth: torch.Tensor, fbp: torch.Tensor, recon: torch.Tensor, window=(0.0, 1.0),
               error_max: float = 0.25) -> List[torch.Tensor]:
    """One uint8 RGB image ``(3, H, 4W)`` per sample: ground truth | FBP | reconstruction | |error|.

    Images use the fixed ``window`` (data units); the error map spans [0, error_max]. Axes as in ODL
    (x right, y up), so the panels match ODL's and dival's figures.
    """
    rows = []
    for t, f, r in zip(truth[:, 0], fbp[:, 0], recon[:, 0]):
        tiles = [_window(t, *window), _window(f, *window), _window(r, *window), _window((r - t).abs(), 0.0, error_max)]
        rows.append(gray_to_rgb_uint8(torch.cat([tile.T.flip(0) for tile in tiles], dim=1)))  # (3, H, 4W)
    return rows


class ReconstructionPanels(L.Callback):
    """Logs panels of the first ``num_samples`` validation samples after each validation epoch.

    W&B gets ``val/panels`` images; any other logger gets PNG files under ``<log_dir>/panels``.
    Runs on rank zero only. ``window`` is the fixed display range of images in data units.
    """

    def __init__(self, num_samples: int = 4, window=(0.0, 1.0), every_n_epochs: int = 1):
        self.num_samples = num_samples
        self.window = tuple(window)
        self.every_n_epochs = every_n_epochs
        self._batch: Optional[dict] = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and trainer.is_global_zero and isinstance(outputs, torch.Tensor) and "fbp" in batch:
            n = self.num_samples
            self._batch = {"truth": batch["ground_truth"][:n].detach().float(), "fbp": batch["fbp"][:n].detach().float(),
                           "recon": outputs[:n].detach().float()}

    @rank_zero_only
    def on_validation_epoch_end(self, trainer, pl_module):
        if self._batch is None or trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs:
            return
        rows = panel_rows(self._batch["truth"], self._batch["fbp"], self._batch["recon"], self.window)
        caption = [f"sample {i}: ground truth | FBP | {type(pl_module).__name__} | |error| (window {self.window})"
                   for i in range(len(rows))]
        publish_panels(trainer, rows, caption, key="val/panels", file_name=_panel_file(trainer, ""))
        self._batch = None


def _panel_file(trainer, prefix: str) -> str:
    return f"panels/{prefix}epoch{trainer.current_epoch:04d}-step{trainer.global_step}.png"


def publish_panels(trainer, rows: List[torch.Tensor], caption: List[str], key: str, file_name: str) -> None:
    """Log uint8 ``(3, H, W)`` rows as W&B images under ``key``, or, without a W&B logger, save them
    stacked as one PNG ``<log_dir>/<file_name>`` (e.g. ``panels/epoch0003-step1200.png``)."""
    loggers = trainer.loggers
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[r.permute(1, 2, 0).numpy() for r in rows], caption=caption,
                             step=trainer.global_step)
    if not any(isinstance(logger, WandbLogger) for logger in loggers):
        from torchvision.utils import save_image

        # not trainer.log_dir: it broadcasts, and the callers run on rank zero only
        root = getattr(loggers[0], "log_dir", None) if loggers else None
        path = Path(root or trainer.default_root_dir) / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(torch.stack(rows).float() / 255, path, nrow=1, padding=2)


def posterior_panel_rows(truth: torch.Tensor, samples: torch.Tensor, window=(0.0, 1.0), std_max: float = 0.1,
                         error_max: float = 0.25, shown_samples: int = 3) -> List[torch.Tensor]:
    """One uint8 RGB image ``(3, H, (4 + k)·W)`` per measurement: ground truth | posterior mean |
    pixel-wise std | |mean − truth| | ``k = shown_samples`` samples.

    ``truth (B, 1, H, W)``, ``samples (S >= 2, B, 1, H, W)``. Images use the fixed ``window``; the
    std map spans [0, std_max], the error map [0, error_max] (data units). Axes as ``panel_rows``.
    """
    if samples.dim() != 5 or samples.shape[1:] != truth.shape or samples.shape[0] < 2:
        raise ValueError(f"samples must be (S >= 2, *truth.shape), got {tuple(samples.shape)} for {tuple(truth.shape)}")
    mean, std = samples.mean(dim=0), samples.std(dim=0)
    rows = []
    for b in range(truth.shape[0]):
        tiles = [_window(truth[b, 0], *window), _window(mean[b, 0], *window), _window(std[b, 0], 0.0, std_max),
                 _window((mean[b, 0] - truth[b, 0]).abs(), 0.0, error_max)]
        tiles += [_window(sample[b, 0], *window) for sample in samples[:shown_samples]]
        rows.append(gray_to_rgb_uint8(torch.cat([tile.T.flip(0) for tile in tiles], dim=1)))
    return rows


class PosteriorPanels(L.Callback):
    """Panels of a posterior sampler on the first ``num_images`` validation measurements after each
    validation epoch: ground truth | mean | std | |error| | ``shown_samples`` samples, from
    ``num_samples`` draws of ``pl_module.sample(batch, num_samples)`` (e.g. ``ConditionalWGAN``).

    W&B gets ``val/posterior_panels`` images; any other logger gets PNG files
    ``<log_dir>/panels/posterior-….png``. Rank zero only. ``window`` is the display range of images,
    ``std_max`` and ``error_max`` those of the std and error maps (data units).
    """

    def __init__(self, num_images: int = 2, num_samples: int = 32, shown_samples: int = 3, window=(0.0, 1.0),
                 std_max: float = 0.1, error_max: float = 0.25, every_n_epochs: int = 1):
        if num_samples < 2:
            raise ValueError(f"num_samples must be >= 2, got {num_samples}")
        self.num_images, self.num_samples, self.shown_samples = num_images, num_samples, shown_samples
        self.window = tuple(window)
        self.std_max, self.error_max = std_max, error_max
        self.every_n_epochs = every_n_epochs
        self._batch: Optional[dict] = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and trainer.is_global_zero:
            self._batch = {k: v[:self.num_images].detach() for k, v in batch.items() if isinstance(v, torch.Tensor)}

    @rank_zero_only
    def on_validation_epoch_end(self, trainer, pl_module):
        if self._batch is None or trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs:
            return
        if not hasattr(pl_module, "sample"):
            raise TypeError(f"PosteriorPanels needs a module with sample(batch, n), got {type(pl_module).__name__}")
        samples = pl_module.sample(self._batch, self.num_samples).float()
        rows = posterior_panel_rows(self._batch["ground_truth"].float(), samples, self.window, self.std_max,
                                    self.error_max, self.shown_samples)
        caption = [f"sample {i}: ground truth | mean | std (0–{self.std_max}) | |error| (0–{self.error_max}) | "
                   f"{min(self.shown_samples, self.num_samples)} samples; {self.num_samples} draws, window {self.window}"
                   for i in range(len(rows))]
        publish_panels(trainer, rows, caption, key="val/posterior_panels", file_name=_panel_file(trainer, "posterior-"))
        self._batch = None


def projection_panel(truth: torch.Tensor, recon: torch.Tensor, window=(0.0, 1.0), zoom: int = 3) -> torch.Tensor:
    """uint8 RGB ``(3, zoom (H + D'), 2 zoom W)``: max-intensity projections of a ground truth |
    reconstruction volume ``(D, H, W)``, along depth (top) and along rows (bottom, depth stretched
    to ``D'``), enlarged ``zoom`` times (nearest neighbour)."""
    tiles = []
    for volume in (truth, recon):
        volume = _window(volume.float(), *window)
        stretch = max(1, volume.shape[1] // (4 * volume.shape[0]))
        side = volume.amax(dim=1).repeat_interleave(stretch, dim=0)  # (D', W): x–z projection
        tiles.append(torch.cat([volume.amax(dim=0), side], dim=0))
    gray = torch.cat(tiles, dim=1).repeat_interleave(zoom, dim=0).repeat_interleave(zoom, dim=1)
    return gray_to_rgb_uint8(gray)


class VolumePanels(L.Callback):
    """Max-intensity projections (ground truth | reconstruction) of the first validation volumes.

    Fixed ``window`` in data units; rank zero only; W&B images ``val/projections`` or PNGs under
    ``<log_dir>/panels`` for other loggers.
    """

    def __init__(self, num_samples: int = 4, window=(0.0, 1.0)):
        self.num_samples, self.window = num_samples, tuple(window)
        self._panels = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and trainer.is_global_zero and isinstance(outputs, torch.Tensor) and outputs.dim() == 4:
            n = self.num_samples
            self._panels = [projection_panel(t, r, self.window)
                            for t, r in zip(batch["ground_truth"][:n], outputs[:n].detach())]

    @rank_zero_only
    def on_validation_epoch_end(self, trainer, pl_module):
        if not self._panels or trainer.sanity_checking:
            return
        caption = [f"sample {i}: truth | {pl_module.method_name} (top: along depth, bottom: along rows; "
                   f"window {self.window})" for i in range(len(self._panels))]
        publish_panels(trainer, self._panels, caption, key="val/projections",
                       file_name=_panel_file(trainer, "projections-"))
        self._panels = None


class ReconstructionWriter(BasePredictionWriter):
    """Writes what ``train.py predict`` reconstructs, one set of files per input, on every rank for
    its own inputs: ``<name>.npy`` and ``<name>.tif`` (float32 ``(H, W)``) and ``<name>.png``
    (FBP | reconstruction, window ``[0, window_max]``, default the model's data range or the
    reconstruction's maximum). Posterior samplers (predictions ``{"mean", "std", "samples"}``) write
    the mean as ``<name>``, ``<name>_std`` and ``<name>_samples.npy`` ``(N, H, W)``, and a preview
    FBP | mean | std. ``<name>`` is the data module's ``sample_name(index)`` (the input file's stem)
    or ``sample_<index>``. Values are in the data's own units: divided by the data module's
    ``intensity_scale`` where it has one (``ScanSlicesDataModule``).

    Args:
        output_dir: where the files go (``None``: ``<default_root_dir>/predictions``).
        window_max: the upper end of the preview window (data units).
    """

    def __init__(self, output_dir: Optional[str] = None, window_max: Optional[float] = None):
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.window_max = window_max

    def folder(self, trainer) -> Path:
        return Path(self.output_dir or Path(trainer.default_root_dir) / "predictions")

    @staticmethod
    def _name(trainer, index: int) -> str:
        namer = getattr(trainer.datamodule, "sample_name", None) if trainer.datamodule is not None else None
        return namer(index) if namer is not None else f"sample_{index:05d}"

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        import tifffile
        from torchvision.utils import save_image

        folder = self.folder(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        posterior = isinstance(prediction, dict)
        # a data module that scales its data (ScanSlicesDataModule) gets its reconstructions back in its own units
        scale = float(getattr(trainer.datamodule, "intensity_scale", 1.0)) if trainer.datamodule is not None else 1.0
        mean = (prediction["mean"] if posterior else prediction).detach().float().cpu() / scale
        fbp = batch["fbp"].detach().float().cpu() / scale if "fbp" in batch else None
        for position, index in enumerate(batch["index"].tolist()):
            name = self._name(trainer, int(index))
            image = mean[position, 0].numpy()
            np.save(folder / f"{name}.npy", image)
            tifffile.imwrite(folder / f"{name}.tif", image)
            high = self.window_max or pl_module.hparams.get("data_range") or float(image.max()) or 1.0
            tiles = [] if fbp is None else [fbp[position, 0]]
            tiles.append(mean[position, 0])
            if posterior:
                std = prediction["std"][position, 0].detach().float().cpu() / scale
                np.save(folder / f"{name}_std.npy", std.numpy())
                samples = prediction["samples"][:, position, 0].detach().float().cpu() / scale
                np.save(folder / f"{name}_samples.npy", samples.numpy())
                tiles.append(std * (high / max(float(std.max()), 1e-12)))  # the std stretched to the window
            row = torch.cat([_window(tile, 0.0, high).T.flip(0) for tile in tiles], dim=1)
            save_image(row[None], folder / f"{name}.png")


class ValidateAtEnd(L.Callback):
    """A run validates at its last step whatever ``val_check_interval`` is (a 30-step run with
    validation every 500 steps still gets ``val/psnr``, panels and a best checkpoint): at the step
    that reaches ``max_steps`` it asks the trainer to stop, and Lightning validates a stopping run."""

    def on_train_batch_end(self, trainer, *args) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True
