"""Convolutional critic for (conditional) Wasserstein GANs with gradient penalty."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .layers import LEAKY_SLOPE, group_norm

__all__ = ["ConvCritic"]


class ConvCritic(nn.Module):
    """Strided-convolution critic: ``(B, C, H, W) -> (B,)`` unbounded scores, any ``H, W``.

    A 3 × 3 stem to ``channels[0]``, then one stride-2 3 × 3 convolution per further entry of
    ``channels``, each followed by layer normalisation over ``(C, H, W)`` (``GroupNorm(1, C)``) and
    LeakyReLU(0.2); global average pooling and a linear layer to one score. There is no batch
    normalisation: the WGAN-GP gradient penalty is taken per sample, which batch statistics would
    couple.

    ``forward(image, *conditions)`` concatenates its inputs along the channel axis, e.g.
    ``critic(reconstruction, fbp)`` (a conditional critic) or ``critic(image)`` (none); the channels
    must add up to ``in_channels``.

    Args:
        in_channels: channels of all inputs together.
        channels: feature channels per stage; ``len(channels) - 1`` halvings of the resolution.
        layer_norm: normalise after each strided convolution; ``False``: no normalisation.
    """

    def __init__(self, in_channels: int = 3, channels: Sequence[int] = (32, 64, 128, 256), layer_norm: bool = True):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if not channels:
            raise ValueError("channels must name at least one stage")
        self.in_channels = in_channels
        layers = [nn.Conv2d(in_channels, channels[0], 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE)]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers.append(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1))
            if layer_norm:
                layers.append(group_norm(c_out, groups=1))
            layers.append(nn.LeakyReLU(LEAKY_SLOPE))
        self.features = nn.Sequential(*layers)
        self.score = nn.Linear(channels[-1], 1)

    def forward(self, image: torch.Tensor, *conditions: torch.Tensor) -> torch.Tensor:
        """``image (B, C_1, H, W)``, ``conditions (B, C_i, H, W)`` with ``Σ C_i = in_channels`` -> ``(B,)``."""
        x = torch.cat([image, *conditions], dim=1) if conditions else image
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"critic expects (B, {self.in_channels}, H, W) in total, got {tuple(x.shape)}")
        return self.score(self.features(x).mean(dim=(-2, -1))).squeeze(-1)
