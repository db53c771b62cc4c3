"""The base of methods fitted to a single measurement (Deep Image Prior, the analytic deep prior).

Such a method is trained on the one sinogram it reconstructs (``trainer.fit(model,
RepeatedMeasurement(y[0], steps).loader())``): no scheduler, no results table, ``forward`` is
``reconstruct`` of the measurement alone, and an optional ``reference`` image (never used to fit)
gives ``train/psnr`` (and ``train/ssim``) of the current image.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from ..metrics import psnr, ssim
from .base import ReconstructionModule

__all__ = ["SingleMeasurementModule", "UNCUT_FBP_FILTER", "UNCUT_FBP_FREQUENCY_SCALING"]

# The uncut FBP (Hann, no frequency cut-off): a single measurement's FBP keeps the scan's detail.
UNCUT_FBP_FILTER = "Hann"
UNCUT_FBP_FREQUENCY_SCALING = 1.0


class SingleMeasurementModule(ReconstructionModule):
    """A :class:`ReconstructionModule` whose training is the optimisation on one measurement.

    Attributes:
        reference: optional image ``(H, W)`` for PSNR (and SSIM) logging; not used by the fit.
        losses: the loss of every iteration, as floats.
    """

    logs_reference_ssim = True  # train/ssim next to train/psnr

    def __init__(self, forward_model: Dict[str, Any], lr: float, **kwargs):
        super().__init__(forward_model, lr=lr, scheduler="none", results_dir=None, **kwargs)
        self.reference: Optional[torch.Tensor] = None
        self.losses: List[float] = []

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """``reconstruct`` from the sinogram ``(1, 1, A, D)`` alone."""
        return self.reconstruct({"measurement": y})

    def log_reference_scores(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """Logs ``train/psnr`` (and ``train/ssim``) of the image ``x (1, 1, H, W)`` against
        ``reference`` (its own data range) and returns the PSNR; None without a reference."""
        if self.reference is None:
            return None
        ref = self.reference.to(x.device)[None, None]
        data_range = float(ref.max() - ref.min())
        value = psnr(x.detach(), ref, data_range).mean()
        self.log("train/psnr", value, prog_bar=True, batch_size=1)
        if self.logs_reference_ssim:
            self.log("train/ssim", ssim(x.detach(), ref, data_range).mean(), batch_size=1)
        return value
