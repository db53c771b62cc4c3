"""Seeded measurement noise models for simulated CT data.

Both take a noiseless sinogram ``(B, C, A, D)`` and an optional ``torch.Generator`` (on the
tensor's device) so that a given (seed, sample) always yields the same noise.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

__all__ = ["GaussianNoise", "PoissonNoise", "LODOPAB_MU_MAX"]

# LoDoPaB-CT: μ_max = 81.35858 / m, 362 pixels over 0.26 m → attenuation per pixel length for image value 1.
LODOPAB_MU_MAX = 81.35858 * 0.26 / 362


class GaussianNoise(nn.Module):
    """Additive white Gaussian noise with std = ``relative_std`` × mean |y| of each sample.

    ellipses-30 uses ``relative_std=0.025`` (2.5 %), ellipses-30-5pct ``0.05``.
    """

    def __init__(self, relative_std: float = 0.025):
        super().__init__()
        if not (math.isfinite(relative_std) and relative_std >= 0):
            raise ValueError(f"relative_std must be a finite number >= 0, got {relative_std}")
        self.relative_std = float(relative_std)

    def forward(self, y: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        scale = self.relative_std * y.abs().flatten(1).mean(dim=1)
        noise = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        return y + scale.view(-1, *([1] * (y.dim() - 1))) * noise

    def extra_repr(self) -> str:
        return f"relative_std={self.relative_std}"


class PoissonNoise(nn.Module):
    """Pre-log photon-counting noise, post-log output (as LoDoPaB-CT simulates low dose).

    ``counts ~ Poisson(photons · exp(−mu_max · y))``, then ``y_noisy = −log(max(counts, 0.1) / photons) / mu_max``.
    ``mu_max`` is the attenuation per unit length of image value 1 (``LODOPAB_MU_MAX`` for LoDoPaB's
    geometry in pixel units). Also returns the counts with ``return_counts=True``.
    """

    def __init__(self, photons: float = 4096.0, mu_max: float = LODOPAB_MU_MAX, min_count: float = 0.1):
        super().__init__()
        for name, value in (("photons", photons), ("mu_max", mu_max), ("min_count", min_count)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value}")
        self.photons, self.mu_max, self.min_count = float(photons), float(mu_max), float(min_count)

    def forward(self, y: torch.Tensor, generator: Optional[torch.Generator] = None, return_counts: bool = False):
        expected = self.photons * torch.exp(-self.mu_max * y.double())
        counts = torch.poisson(expected, generator=generator)
        y_noisy = (-torch.log(counts.clamp_min(self.min_count) / self.photons) / self.mu_max).to(y.dtype)
        return (y_noisy, counts.to(y.dtype)) if return_counts else y_noisy

    def extra_repr(self) -> str:
        return f"photons={self.photons}, mu_max={self.mu_max:.6g}"
