"""Light-field microscope forward model: a periodically shift-invariant PSF as a filter bank.

A volume ``x (B, D, H, W)`` of ``D`` depth planes is sampled on the sensor grid, ``H = W =
num_lenslets · lenslet_size``; a microlens covers ``s × s = lenslet_size²`` sensor pixels. The
light-field image is ``y (B, 1, H, W)``. The PSF of a point depends on its depth and on its
position *within* its lenslet (its phase ``(i, j)``, ``s²`` of them), and shifts by whole lenslets
with the point: per depth, a periodically shift-invariant system. Split each depth plane into its
``s²`` phase components (``pixel_unshuffle``); each component is filtered with its own PSF and
upsampled by ``s``, and all are summed (``conv_transpose2d`` with stride ``s``):

    y = Σ_d Σ_(i,j) h_{d,i,j} ⊛ (↑s x_d^{(i,j)})          (Verinaz-Jadan, Dragotti et al. 2023)

The adjoint is the matching strided ``conv2d`` followed by ``pixel_shuffle``: exact, not an
approximation. The PSF stack has shape ``(D, s, s, K, K)`` with ``K = s (2 r + 1)``, ``r`` the
PSF radius in lenslets; the centre lenslet of the kernel is the point's own lenslet.

``LightFieldGeometry`` holds the plain numbers of a simple geometric-optics PSF (or the path of a
measured/wave-optics PSF stack). The simple model: sub-aperture view ``(u, v)`` (the pixel under
each lenslet) sees a point at depth ``z`` displaced by ``disparity · z · (u, v)_n`` lenslets, with
``(u, v)_n ∈ [-1, 1]`` the view's normalised offset from the lenslet centre, blurred by a Gaussian of
``blur_in_focus + blur_per_depth · |z|`` lenslets; views outside the circular pupil get no light.
Each PSF is normalised to unit sum (a point's total light does not depend on depth or phase).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from .operator import WeightedOperator, description_from_dict, register_operator

__all__ = ["LightFieldGeometry", "LightFieldModel", "load_psf_stack", "simple_psf_stack"]


@dataclass(frozen=True)
class LightFieldGeometry:
    """Plain numbers of a light-field microscope (lengths in lenslets unless stated).

    Args:
        num_lenslets: microlenses per side; the sensor has ``num_lenslets · lenslet_size`` pixels per side.
        lenslet_size: sensor pixels per lenslet per side, ``s``.
        num_depths: depth planes ``D``, evenly spaced over ``[-depth_range, depth_range]``
            (``z = 0`` is the native focal plane).
        depth_range: half the axial extent in units of ``z``.
        disparity: lateral shift, in lenslets, of the outermost view per unit ``z``.
        blur_in_focus, blur_per_depth: Gaussian defocus std ``blur_in_focus + blur_per_depth · |z|``.
        psf_radius: PSF support radius ``r`` in lenslets (kernel side ``s (2 r + 1)`` pixels).
        psf_file: a measured or wave-optics PSF stack (``.npy``, ``.npz`` or HDF5 with key ``psf``)
            of shape ``(D, s, s, K, K)``; replaces the simple model, whose numbers then only
            describe the grid.
    """

    num_lenslets: int = 12
    lenslet_size: int = 5
    num_depths: int = 7
    depth_range: float = 1.0
    disparity: float = 1.5
    blur_in_focus: float = 0.3
    blur_per_depth: float = 0.4
    psf_radius: int = 2
    psf_file: Optional[str] = None

    def __post_init__(self):
        for name in ("num_lenslets", "lenslet_size", "num_depths"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.psf_radius, int) and self.psf_radius >= 0):
            raise ValueError(f"psf_radius must be an integer >= 0, got {self.psf_radius!r}")
        for name in ("depth_range", "disparity", "blur_in_focus", "blur_per_depth"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.blur_in_focus <= 0:
            raise ValueError("blur_in_focus must be > 0 (a PSF needs some width)")

    @property
    def image_size(self) -> int:
        return self.num_lenslets * self.lenslet_size

    @property
    def kernel_size(self) -> int:
        return self.lenslet_size * (2 * self.psf_radius + 1)

    @property
    def volume_shape(self):
        return (self.num_depths, self.image_size, self.image_size)

    @property
    def depths(self) -> np.ndarray:
        if self.num_depths == 1:
            return np.zeros(1)
        return np.linspace(-self.depth_range, self.depth_range, self.num_depths)

    def to_dict(self) -> Dict[str, Any]:
        return {"type": "LightFieldGeometry", **asdict(self)}

    def replace(self, **changes: Any) -> "LightFieldGeometry":
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, values: Union[Dict[str, Any], "LightFieldGeometry"]) -> "LightFieldGeometry":
        return values if isinstance(values, cls) else description_from_dict(cls, values)


def simple_psf_stack(geometry: LightFieldGeometry) -> torch.Tensor:
    """The geometric-optics PSF stack ``(D, s, s, K, K)`` of the module docstring (float32, unit sums)."""
    s, r = geometry.lenslet_size, geometry.psf_radius
    z = torch.tensor(geometry.depths, dtype=torch.float64)  # (D,)
    phase = (torch.arange(s, dtype=torch.float64) + 0.5) / s - 0.5  # point within its lenslet, (s,)
    view = (torch.arange(s, dtype=torch.float64) - (s - 1) / 2) / max((s - 1) / 2, 1)  # in [-1, 1], (s,)
    lenslet = torch.arange(-r, r + 1, dtype=torch.float64)  # (2r+1,)
    sigma = (geometry.blur_in_focus + geometry.blur_per_depth * z.abs()).view(-1, 1, 1, 1)
    # centre of the light in lenslets for (depth, phase, view): (D, s, s, 1)
    centre = (phase.view(1, -1, 1) + geometry.disparity * z.view(-1, 1, 1) * view.view(1, 1, -1)).unsqueeze(-1)
    profile = torch.exp(-0.5 * ((lenslet - centre) / sigma) ** 2)  # (D, phase, view, lenslet)
    pupil = (view.view(-1, 1) ** 2 + view.view(1, -1) ** 2 <= 1.0 + 1e-9).double()  # (u, v)
    # psf[d, i, j, my, u, mx, v] = profile_y[d, i, u, my] · profile_x[d, j, v, mx] · pupil[u, v]
    psf = torch.einsum("diup,djvq,uv->dijpuqv", profile, profile, pupil)
    k = geometry.kernel_size
    psf = psf.reshape(geometry.num_depths, s, s, k, k)
    psf = psf / psf.sum(dim=(-2, -1), keepdim=True)
    return psf.float()


def load_psf_stack(path: Union[str, Path], geometry: LightFieldGeometry) -> torch.Tensor:
    """A PSF stack ``(D, s, s, K, K)`` from ``.npy``, ``.npz`` (key ``psf``) or HDF5 (dataset ``psf``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PSF file not found: {path}")
    if path.suffix == ".npy":
        psf = np.load(path)
    elif path.suffix == ".npz":
        with np.load(path) as archive:
            if "psf" not in archive:
                raise ValueError(f"{path}: no array named 'psf' (found {sorted(archive.files)})")
            psf = archive["psf"]
    elif path.suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(path, "r") as handle:
            if "psf" not in handle:
                raise ValueError(f"{path}: no dataset named 'psf' (found {sorted(handle.keys())})")
            psf = handle["psf"][()]
    else:
        raise ValueError(f"{path}: unsupported PSF file type {path.suffix!r} (use .npy, .npz or .h5)")
    s, k = geometry.lenslet_size, geometry.kernel_size
    expected = (geometry.num_depths, s, s, k, k)
    if psf.shape != expected:
        raise ValueError(f"{path}: PSF stack has shape {psf.shape}, the geometry needs {expected} "
                         "(depths, phase rows, phase columns, kernel rows, kernel columns)")
    if not np.isfinite(psf).all():
        raise ValueError(f"{path}: PSF stack contains non-finite values")
    return torch.from_numpy(np.ascontiguousarray(psf, dtype=np.float32))


class LightFieldModel(WeightedOperator):
    """``H``: volume ``(B, D, H, W)`` -> light-field image ``(B, 1, H, W)``, with the exact adjoint.

    Args:
        geometry: a :class:`LightFieldGeometry` or its dict.
        psf: optional PSF stack ``(D, s, s, K, K)`` (otherwise ``psf_file`` or the simple model).
    """

    domain_name, range_name = "volume", "light-field image"

    def __init__(self, geometry: Union[LightFieldGeometry, Dict[str, Any]], psf: Optional[torch.Tensor] = None):
        geometry = LightFieldGeometry.from_dict(geometry)
        if psf is None:
            psf = load_psf_stack(geometry.psf_file, geometry) if geometry.psf_file else simple_psf_stack(geometry)
        s, k = geometry.lenslet_size, geometry.kernel_size
        if tuple(psf.shape) != (geometry.num_depths, s, s, k, k):
            raise ValueError(f"psf must have shape {(geometry.num_depths, s, s, k, k)}, got {tuple(psf.shape)}")
        # filter bank (D·s², 1, K, K); channel d·s² + i·s + j matches pixel_unshuffle's order
        super().__init__(psf.reshape(-1, 1, k, k), domain_shape=geometry.volume_shape,
                         range_shape=(1, geometry.image_size, geometry.image_size))
        self.geometry = geometry

    def _compute(self, x: torch.Tensor) -> torch.Tensor:
        g = self.geometry
        phases = F.pixel_unshuffle(x, g.lenslet_size)  # (B, D s², n, n)
        return F.conv_transpose2d(phases, self.weight.to(x.dtype), stride=g.lenslet_size, padding=g.psf_radius * g.lenslet_size)

    def adjoint_with(self, weight: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = self._check(y, self.range_shape, self.range_name)
        g = self.geometry
        phases = F.conv2d(y, weight.to(y.dtype), stride=g.lenslet_size, padding=g.psf_radius * g.lenslet_size)
        return F.pixel_shuffle(phases, g.lenslet_size)  # (B, D, H, W)

    def extra_repr(self) -> str:
        g = self.geometry
        return (f"depths={g.num_depths}, lenslets={g.num_lenslets}², lenslet_size={g.lenslet_size}, "
                f"kernel={g.kernel_size}²")


register_operator("LightFieldGeometry", LightFieldGeometry.from_dict,
                  lambda geometry, **options: LightFieldModel(geometry))
