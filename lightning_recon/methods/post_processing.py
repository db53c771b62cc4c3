"""Learned post-processing (FBPConvNet): ``x̂ = x_FBP + U(x_FBP)`` with a U-Net ``U``."""
from __future__ import annotations

from typing import Dict, Sequence

import torch

from ..nets import UNet
from .base import ReconstructionModule

__all__ = ["FBPUNet"]


class FBPUNet(ReconstructionModule):
    """Residual U-Net on the FBP, trained supervised with MSE (Jin et al. 2017; dival's FBP+U-Net).

    Args:
        channels: feature channels per scale (5 scales, 32…128 in SPEC.md's settings).
        norm: ``"batch"``, ``"group"`` or ``"none"``.
        **kwargs: geometry and optimisation settings of :class:`ReconstructionModule`.
    """

    def __init__(self, channels: Sequence[int] = (32, 32, 64, 64, 128), norm: str = "batch", **kwargs):
        super().__init__(**kwargs)
        self.net = UNet(in_channels=1, out_channels=1, channels=tuple(channels), norm=norm, residual=True)

    def reconstruct(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(batch["fbp"])
