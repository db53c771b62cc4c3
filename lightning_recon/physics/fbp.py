"""Filtered back-projection as a torch module (2D parallel and fan beam).

The filter follows ``odl.applications.tomo.fbp_op``: along the detector axis, multiply the
Fourier transform of the (zero-padded) sinogram by ``|ξ| · window(|ξ| / ξ_max)`` with angular
frequency ``ξ``, then back-project with angular quadrature weights. For fan beam this is ODL's
approximate FBP (no fan weighting; exact in the limit of small fan angles).
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from .geometry import ConeBeam3D, Geometry, geometry_from_dict
from .ray_transform import RayTransform

__all__ = ["DEFAULT_FBP_FILTER", "DEFAULT_FBP_FREQUENCY_SCALING", "FBP", "FILTERS", "fbp_filter_response"]

FILTERS = ("ram-lak", "shepp-logan", "cosine", "hamming", "hann")
# The one default FBP of the project (this module, the methods, the data modules, DIP): Hann window,
# frequencies above half the maximum cut (the best of a grid on ellipses-30 at 2.5 % noise, 24.2 dB;
# docs/results.md). Runs that want another say so (finetune.py gives DIP the uncut FBP, scaling 1.0).
DEFAULT_FBP_FILTER = "Hann"
DEFAULT_FBP_FREQUENCY_SCALING = 0.5


def fbp_filter_response(norm_freq: np.ndarray, filter_type: str, frequency_scaling: float) -> np.ndarray:
    """Ramp × window at normalised frequencies in [0, 1]; zero above ``frequency_scaling``."""
    name = filter_type.lower()
    s = frequency_scaling
    if name == "ram-lak":
        window = np.ones_like(norm_freq)
    elif name == "shepp-logan":
        window = np.sinc(norm_freq / (2 * s))
    elif name == "cosine":
        window = np.cos(norm_freq * np.pi / (2 * s))
    elif name == "hamming":
        window = 0.54 + 0.46 * np.cos(norm_freq * np.pi / s)
    elif name == "hann":
        window = np.cos(norm_freq * np.pi / (2 * s)) ** 2
    else:
        raise ValueError(f"filter_type must be one of {FILTERS} (any case), got {filter_type!r}")
    return norm_freq * window * (norm_freq <= s)


class FBP(nn.Module):
    """Filtered back-projection: ``(B, C, n_angles, n_det) -> (B, C, H, W)``.

    Args:
        geometry: a 2D geometry or its ``to_dict()``.
        filter_type: one of ``FILTERS`` (case-insensitive): Ram-Lak, Shepp-Logan, cosine, Hamming, Hann.
        frequency_scaling: relative cut-off in (0, 1]; frequencies above it are zeroed.
        padding: zero-pad the detector axis to ``2 n_det - 1`` (no circular wrap-around).
        backend: ray-transform backend for the back-projection (see :class:`RayTransform`).
        ray_transform: reuse an existing operator instead of building one.
    """

    def __init__(
        self,
        geometry: Union[Geometry, dict],
        filter_type: str = DEFAULT_FBP_FILTER,
        frequency_scaling: float = DEFAULT_FBP_FREQUENCY_SCALING,
        padding: bool = True,
        backend: str = "auto",
        ray_transform: Optional[RayTransform] = None,
    ):
        super().__init__()
        geometry = geometry_from_dict(geometry)
        if isinstance(geometry, ConeBeam3D):
            raise ValueError("FBP supports 2D geometries only; got ConeBeam3D")
        if not 0 < frequency_scaling <= 1:
            raise ValueError(f"frequency_scaling must be in (0, 1], got {frequency_scaling}")
        fbp_filter_response(np.zeros(1), filter_type, frequency_scaling)  # validates the name
        self.geometry = geometry
        self.filter_type = filter_type
        self.frequency_scaling = float(frequency_scaling)
        self.padding = padding
        self.ray_transform = ray_transform if ray_transform is not None else RayTransform(geometry, backend=backend)

        n_det = geometry.num_detector_pixels
        self.n_fft = 2 * n_det - 1 if padding else n_det
        self.pad_left = (self.n_fft - n_det) // 2
        d = geometry.detector_pixel_size
        # ODL's reciprocal grid: ξ_k = −π/d + k·2π/(N d). For odd N it has no zero frequency
        # (half-shifted), which keeps the filter's DC response non-zero as the continuous ramp's is.
        freq = np.abs(-np.pi / d + 2 * np.pi / (self.n_fft * d) * np.arange(self.n_fft))
        response = fbp_filter_response(freq / freq.max(), filter_type, frequency_scaling) * freq.max()
        modulation = (-1.0) ** np.arange(self.n_fft)  # moves ξ = −π/d to FFT bin 0
        weights = geometry.angle_weights
        angle_length = float(np.sum(weights))
        pixel_area = float(np.prod(geometry.pixel_size))
        # per-angle factor: quadrature weight · detector pixel / (2 · angular range · pixel area)
        angle_factor = weights * d / (2 * angle_length * pixel_area)
        self.register_buffer("frequency_response", torch.tensor(response, dtype=torch.float32), persistent=False)
        self.register_buffer("modulation", torch.tensor(modulation, dtype=torch.float32), persistent=False)
        self.register_buffer("angle_factor", torch.tensor(angle_factor, dtype=torch.float32)[:, None], persistent=False)

    def filter_sinogram(self, y: torch.Tensor) -> torch.Tensor:
        """Ramp-filter along the detector axis and apply angular weights; shape unchanged."""
        n_det = y.shape[-1]
        padded = nn.functional.pad(y.float(), (self.pad_left, self.n_fft - n_det - self.pad_left))
        spectrum = torch.fft.fft(padded * self.modulation, dim=-1)
        filtered = torch.fft.ifft(spectrum * self.frequency_response, dim=-1).real * self.modulation
        return filtered[..., self.pad_left : self.pad_left + n_det] * self.angle_factor

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        expected = self.geometry.sinogram_shape
        if not isinstance(y, torch.Tensor) or y.dim() != 4 or tuple(y.shape[-2:]) != expected:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"sinogram must have shape (B, C, {expected[0]}, {expected[1]}), got {got}")
        if y.numel() == 0:  # an empty batch: no FFT of zero signals
            return y.new_zeros(*y.shape[:2], *self.geometry.image_shape)
        return self.ray_transform.apply_adjoint(self.filter_sinogram(y))

    def extra_repr(self) -> str:
        return f"filter_type={self.filter_type!r}, frequency_scaling={self.frequency_scaling}, padding={self.padding}"
