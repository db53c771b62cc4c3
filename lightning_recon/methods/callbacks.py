"""Callbacks: image panels of fixed validation samples (fixed intensity window), learning rate."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["LearningRateLogger", "ReconstructionPanels", "panel_rows"]


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


def _window(image: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return ((image - low) / (high - low)).clamp(0, 1)


def panel_rows(truth: torch.Tensor, fbp: torch.Tensor, recon: torch.Tensor, window=(0.0, 1.0),
               error_max: float = 0.25) -> List[torch.Tensor]:
    """One uint8 RGB image ``(3, H, 4W)`` per sample: ground truth | FBP | reconstruction | |error|.

    Images use the fixed ``window`` (data units); the error map spans [0, error_max]. Axes as in ODL
    (x right, y up), so the panels match ODL's and dival's figures.
    """
    rows = []
    for t, f, r in zip(truth[:, 0], fbp[:, 0], recon[:, 0]):
        tiles = [_window(t, *window), _window(f, *window), _window(r, *window), _window((r - t).abs(), 0.0, error_max)]
        gray = torch.cat([tile.T.flip(0) for tile in tiles], dim=1)  # (H, 4W)
        rows.append((gray.expand(3, *gray.shape) * 255).round().to(torch.uint8).cpu())
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
        if batch_idx == 0 and trainer.is_global_zero and isinstance(outputs, torch.Tensor):
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
        loggers = trainer.loggers
        for logger in loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="val/panels", images=[r.permute(1, 2, 0).numpy() for r in rows],
                                 caption=caption, step=trainer.global_step)
        if not any(isinstance(logger, WandbLogger) for logger in loggers):
            from torchvision.utils import save_image

            # not trainer.log_dir: it broadcasts, and this hook runs on rank zero only
            root = getattr(loggers[0], "log_dir", None) if loggers else None
            folder = Path(root or trainer.default_root_dir) / "panels"
            folder.mkdir(parents=True, exist_ok=True)
            save_image(torch.stack(rows).float() / 255, folder / f"epoch{trainer.current_epoch:04d}-step{trainer.global_step}.png",
                       nrow=1, padding=2)
        self._batch = None
