"""Learned post-processing (FBPConvNet): ``x̂ = x_FBP + U(x_FBP)`` with a U-Net ``U``."""
from __future__ import annotations

from typing import Dict, Sequence

import torch

from ..nets import UNet
from .base import ReconstructionModule
from .self_supervised import LearnedReconstructionModule

__all__ = ["EDIPPretrain", "FBPUNet"]


class FBPUNet(LearnedReconstructionModule):
    """Residual U-Net on the FBP (Jin et al. 2017; dival's FBP+U-Net), trained supervised with MSE
    or without ground truth (``loss: noise2inverse``, on the subsets' FBPs as in Hendriksen et al.
    2020, or ``equivariant``; :mod:`~lightning_recon.methods.self_supervised`).

    Args:
        channels: feature channels per scale (5 scales, 32…128 in the FBPConvNet settings).
        norm: ``"batch"``, ``"group"`` or ``"none"``.
        **kwargs: the loss settings of :class:`LearnedReconstructionModule`, forward_model and optimisation
            settings of :class:`ReconstructionModule`.
    """

    noise2inverse_input = "fbp"

    def __init__(self, channels: Sequence[int] = (32, 32, 64, 64, 128), norm: str = "batch", **kwargs):
        super().__init__(**kwargs)
        self.net = UNet(in_channels=1, out_channels=1, channels=tuple(channels), norm=norm, residual=True)

    def apply_network(self, batch: Dict[str, torch.Tensor], operator=None, operator_scale: float = 1.0) -> torch.Tensor:
        return self.net(batch["fbp"])


class EDIPPretrain(ReconstructionModule):
    """EDIP stage 1 (Barbano et al. 2021): the Deep Image Prior U-Net trained supervised FBP → truth.

    Same network, input and scaling as :class:`~lightning_recon.methods.dip.DeepImagePrior` with
    ``network_input="fbp"`` (input FBP / max(FBP), output × max(FBP)), so ``finetune.py --init
    <checkpoint>`` starts stage 2 from these weights. Keep ``channels``/``skip_channels`` equal to
    the fine-tuning run's.
    """

    def __init__(self, channels: Sequence[int] = (64, 64, 64, 64, 64), skip_channels: Sequence[int] = (4, 4, 4, 4, 4),
                 **kwargs):
        super().__init__(**kwargs)
        self.net = UNet(1, 1, channels=tuple(channels), skip_channels=tuple(skip_channels), norm="group")

    def reconstruct(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        fbp = batch["fbp"]
        scale = fbp.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
        return self.net(fbp / scale) * scale
