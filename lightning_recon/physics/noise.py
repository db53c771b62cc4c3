"""Seeded measurement noise models for simulated CT data.

Both take a noiseless sinogram ``(B, C, A, D)`` and an optional ``torch.Generator`` (on the
tensor's device) so that a given (seed, sample) always yields the same noise.
"""
from __future__ import annotations

import math
import threading
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

__all__ = ["GaussianNoise", "PoissonNoise", "LODOPAB_MU_MAX", "SequentialNormalStream"]

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

    def forward(self, y: torch.Tensor, generator: Optional[torch.Generator] = None,
                standard_normal: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``y + σ z`` with ``σ = relative_std · mean|y|`` per sample; ``z`` drawn from ``generator``
        unless given as ``standard_normal`` (same shape as ``y``; e.g. dival's own stream)."""
        scale = self.relative_std * y.abs().flatten(1).mean(dim=1)
        if standard_normal is None:
            standard_normal = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        elif standard_normal.shape != y.shape:
            raise ValueError(f"standard_normal must have the shape of y {tuple(y.shape)}, "
                             f"got {tuple(standard_normal.shape)}")
        return y + scale.view(-1, *([1] * (y.dim() - 1))) * standard_normal.to(y.device, y.dtype)

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


class SequentialNormalStream:
    """Random access to the draws ``RandomState(seed).normal(size=shape)``, made once per sample in
    sample order: how dival adds the noise of its standard datasets (noise seeds train 1,
    validation 2, test 3), so that a split's sample ``i`` gets dival's own noise.

    The generator state is remembered every ``stride`` samples; sample ``i`` restores the nearest
    earlier state and draws forward (at most ``stride`` samples' worth). Thread-safe; pickles
    without its cache.
    """

    def __init__(self, seed: int, shape: Sequence[int], stride: int = 32):
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.seed, self.shape, self.stride = int(seed), tuple(int(s) for s in shape), int(stride)
        self._states: Dict[int, Tuple] = {}
        self._lock = threading.Lock()

    def __getstate__(self):
        return {"seed": self.seed, "shape": self.shape, "stride": self.stride}

    def __setstate__(self, state):
        self.__init__(state["seed"], state["shape"], state["stride"])

    def __call__(self, index: int) -> np.ndarray:
        """The standard-normal draw of sample ``index`` (float64, ``shape``)."""
        if index < 0:
            raise IndexError(f"index must be >= 0, got {index}")
        with self._lock:
            block = index // self.stride
            known = max((b for b in self._states if b <= block), default=None)
            rng = np.random.RandomState(self.seed)
            if known is None:
                known, self._states[0] = 0, rng.get_state()
            rng.set_state(self._states[known])
            for sample in range(known * self.stride, index):
                if sample % self.stride == 0:
                    self._states.setdefault(sample // self.stride, rng.get_state())
                rng.normal(size=self.shape)
            if index % self.stride == 0:
                self._states.setdefault(block, rng.get_state())
            return rng.normal(size=self.shape)
