"""Generators ``z -> x`` and encoders ``x -> (mean, log-variance)`` of generative image priors
(a VAE's decoder and encoder, a GAN's generator), for images ``(1, H, W)``.

Plain ``nn.Module`` s with no operator: a generator trained on images alone is a prior for any
forward model (``solvers/generative.py``, ``methods/generative_priors.py``).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import nn

from .layers import LEAKY_SLOPE, MAX_NORM_GROUPS, group_norm

__all__ = ["ImageDecoder", "ImageEncoder", "coarsest_shape"]


def coarsest_shape(image_shape: Sequence[int], stages: int) -> Tuple[int, int]:
    """``image_shape`` halved ``stages − 1`` times; each side must divide evenly."""
    if len(image_shape) != 2:
        raise ValueError(f"image_shape must be (H, W), got {tuple(image_shape)}")
    if stages < 1:
        raise ValueError("channels must name at least one stage")
    factor = 2 ** (stages - 1)
    height, width = (int(s) for s in image_shape)
    if height % factor or width % factor or height < factor or width < factor:
        raise ValueError(f"image_shape {height}x{width} must be divisible by 2^{stages - 1} = {factor} "
                         f"({stages} stages of channels); use fewer stages or another image size")
    return height // factor, width // factor


def _checked(latent_dim: int, image_shape: Sequence[int], channels: Sequence[int]):
    """``(latent_dim, (H, W), channels, coarsest (h, w))`` as ints, or a ``ValueError`` naming the bad one."""
    channels = tuple(int(c) for c in channels)
    if latent_dim < 1:
        raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
    if any(c < 1 for c in channels):
        raise ValueError(f"channels must be positive, got {channels}")
    image_shape = tuple(int(s) for s in image_shape)
    return int(latent_dim), image_shape, channels, coarsest_shape(image_shape, len(channels))


def _norm(channels: int) -> nn.Module:
    """:func:`~.layers.group_norm` with ``min(8, channels)`` groups, the count these networks were
    trained with (equal to the shared rule for 1, 2, 4 and multiples of 8 channels)."""
    return group_norm(channels, min(MAX_NORM_GROUPS, channels))


class ImageDecoder(nn.Module):
    """Generator ``G: z (B, latent_dim) -> x (B, 1, H, W)``.

    A linear layer maps ``z`` to ``channels[0]`` feature maps at the coarsest resolution
    ``(H, W) / 2^(len(channels) − 1)``; each further entry of ``channels`` is one stage of a 4 × 4
    stride-2 transposed convolution (2× upsampling), GroupNorm and LeakyReLU(0.2); a last 3 × 3
    convolution gives one channel, with no output activation (images in [0, 1] with exact zeros are
    reached linearly). The transposed convolution costs 4/9 of nearest upsampling followed by a
    3 × 3 convolution (it computes on the coarse grid): the reconstruction runs the generator
    hundreds of times per image.

    Args:
        latent_dim: length of ``z``.
        image_shape: ``(H, W)``; both divisible by ``2^(len(channels) − 1)``.
        channels: feature channels from the coarsest stage to the finest. The default
            (128, 64, 32, 16, 8) starts at 8 × 8 for 128² images and at 4 × 4 for 64².
    """

    def __init__(self, latent_dim: int = 128, image_shape: Sequence[int] = (128, 128),
                 channels: Sequence[int] = (128, 64, 32, 16, 8)):
        super().__init__()
        self.latent_dim, self.image_shape, channels, self.base_shape = _checked(latent_dim, image_shape, channels)
        self.channels = channels
        self.project = nn.Linear(self.latent_dim, channels[0] * self.base_shape[0] * self.base_shape[1])
        layers = [_norm(channels[0]), nn.LeakyReLU(LEAKY_SLOPE)]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), _norm(c_out), nn.LeakyReLU(LEAKY_SLOPE)]
        layers.append(nn.Conv2d(channels[-1], 1, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z (B, latent_dim)`` -> images ``(B, 1, H, W)``."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"generator expects z of shape (B, {self.latent_dim}), got {tuple(z.shape)}")
        features = self.project(z).view(z.shape[0], self.channels[0], *self.base_shape)
        return self.body(features)


class ImageEncoder(nn.Module):
    """Encoder of a VAE: ``x (B, 1, H, W) -> (mean, log_variance)``, each ``(B, latent_dim)``.

    A 3 × 3 convolution to ``channels[0]`` at full resolution, then one stride-2 3 × 3 convolution
    (GroupNorm, LeakyReLU(0.2)) per further entry of ``channels``; the coarsest feature maps are
    flattened and a linear layer gives mean and log-variance of the Gaussian ``q(z | x)``.

    Args:
        latent_dim: length of ``z``.
        image_shape: ``(H, W)``; both divisible by ``2^(len(channels) − 1)``.
        channels: feature channels from the finest stage to the coarsest (the decoder's reversed).
    """

    def __init__(self, latent_dim: int = 128, image_shape: Sequence[int] = (128, 128),
                 channels: Sequence[int] = (8, 16, 32, 64, 128)):
        super().__init__()
        self.latent_dim, self.image_shape, channels, base = _checked(latent_dim, image_shape, channels)
        layers = [nn.Conv2d(1, channels[0], 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE)]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), _norm(c_out), nn.LeakyReLU(LEAKY_SLOPE)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels[-1] * base[0] * base[1], 2 * self.latent_dim)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Images ``(B, 1, H, W)`` -> ``(mean, log_variance)``, each ``(B, latent_dim)``."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, *self.image_shape):
            raise ValueError(f"encoder expects images of shape (B, 1, {self.image_shape[0]}, {self.image_shape[1]}), "
                             f"got {tuple(x.shape)}")
        mean, log_variance = self.head(self.features(x).flatten(1)).chunk(2, dim=1)
        return mean, log_variance
