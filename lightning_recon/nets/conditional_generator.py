"""Conditional generator of a conditional WGAN posterior sampler: ``G(x_FBP, z)``."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .unet import UNet

__all__ = ["ConditionalGenerator"]

INITIAL_HEAD_SCALE = 0.01  # the untrained generator returns the FBP plus a small noise-driven perturbation


class ConditionalGenerator(nn.Module):
    """``x = x_FBP + U([x_FBP, z])``: a U-Net on the FBP and per-pixel N(0, 1) noise channels.

    Each draw of ``z (B, noise_channels, H, W)`` gives one sample of the posterior given the
    measurement behind ``x_FBP``; with ``noise_channels = 0`` it is the deterministic FBP + U-Net.

    Args:
        noise_channels: channels of the noise ``z``.
        channels: U-Net feature channels per scale.
        norm: U-Net normalisation; ``"group"`` (default) behaves the same in training and evaluation
            and never mixes the samples of a batch, unlike batch normalisation.

    The U-Net's output layer starts scaled by ``INITIAL_HEAD_SCALE``: training starts from samples
    close to the FBP rather than from the FBP plus O(1) noise.
    """

    def __init__(self, noise_channels: int = 3, channels: Sequence[int] = (32, 32, 64, 64, 128), norm: str = "group"):
        super().__init__()
        if noise_channels < 0:
            raise ValueError(f"noise_channels must be >= 0, got {noise_channels}")
        self.noise_channels = int(noise_channels)
        self.net = UNet(in_channels=1 + self.noise_channels, out_channels=1, channels=tuple(channels), norm=norm)
        with torch.no_grad():
            self.net.head.weight.mul_(INITIAL_HEAD_SCALE)
            self.net.head.bias.mul_(INITIAL_HEAD_SCALE)

    def noise(self, fbp: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Fresh ``z (B, noise_channels, H, W)`` ~ N(0, 1) on the device and dtype of ``fbp (B, 1, H, W)``."""
        return torch.randn(fbp.shape[0], self.noise_channels, *fbp.shape[-2:], device=fbp.device, dtype=fbp.dtype,
                           generator=generator)

    def forward(self, fbp: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``fbp (B, 1, H, W)``, ``z (B, noise_channels, H, W)`` (default: drawn here) -> ``(B, 1, H, W)``."""
        if fbp.dim() != 4 or fbp.shape[1] != 1:
            raise ValueError(f"generator expects the FBP as (B, 1, H, W), got {tuple(fbp.shape)}")
        z = self.noise(fbp) if z is None else z
        if z.shape != (fbp.shape[0], self.noise_channels, *fbp.shape[-2:]):
            raise ValueError(f"z must be (B, {self.noise_channels}, H, W) = "
                             f"{(fbp.shape[0], self.noise_channels, *fbp.shape[-2:])}, got {tuple(z.shape)}")
        return fbp + self.net(torch.cat([fbp, z], dim=1))
