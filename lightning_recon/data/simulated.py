"""Simulated CT pairs on the fly: random-ellipse phantoms, their noisy sinograms and FBPs.

Every sample is a deterministic function of ``(seed, index)``: phantom parameters are the
``index``-th draw of the split's seed (as in dival), and the noise is either dival's own stream
(``noise_stream="sequential"``: ``RandomState(noise_seed).normal`` once per sample in order) or
drawn from a generator seeded by ``(noise_seed, index)`` (``"indexed"``). DataLoader workers and
DDP ranks therefore never duplicate or disagree on samples, and splits with different seeds
never overlap.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..physics.fbp import DEFAULT_FBP_FILTER, DEFAULT_FBP_FREQUENCY_SCALING, FBP
from ..physics.geometry import Geometry, Geometry2D, geometry_from_dict
from ..physics.noise import GaussianNoise, PoissonNoise, SequentialNormalStream
from ..physics.phantoms import PHANTOM_FAMILIES, ellipse_parameters, ellipse_phantom
from ..physics.ray_transform import RayTransform
from ..physics.resample import BilinearResize

__all__ = ["EllipsesDataset", "indexed_generator", "noise_model", "simulation_geometry", "NOISE_STREAMS"]

NOISE_STREAMS = ("sequential", "indexed")


def noise_model(kind: str = "gaussian", relative_std: float = 0.025, photons: float = 4096.0,
                mu_max: Optional[float] = None) -> Optional[torch.nn.Module]:
    """``"gaussian"`` (std relative to mean |y|), ``"poisson"`` (pre-log photons) or ``"none"``."""
    if kind == "gaussian":
        return GaussianNoise(relative_std)
    if kind == "poisson":
        return PoissonNoise(photons) if mu_max is None else PoissonNoise(photons, mu_max)
    if kind == "none":
        return None
    raise ValueError(f"noise must be 'gaussian', 'poisson' or 'none', got {kind!r}")


def indexed_generator(seed: int, index: int) -> torch.Generator:
    """The generator of sample ``index`` of a split seeded ``seed``: independent of order, worker
    and rank (a 64-bit seed from ``numpy.random.SeedSequence([seed, index])``)."""
    state = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def simulation_geometry(geometry: Geometry2D, image_shape) -> Geometry2D:
    """``geometry`` with the image discretised on ``image_shape`` (same extent, detector and angles)."""
    if tuple(image_shape) == tuple(geometry.image_shape):
        return geometry
    return geometry.replace(image_shape=tuple(image_shape), image_extent=geometry.extent,
                            num_detector_pixels=geometry.num_detector_pixels, detector_extent=geometry.detector_length)


class EllipsesDataset(Dataset):
    """Random-ellipse phantoms with simulated measurements.

    Args:
        geometry: the measurement geometry (object or dict of numbers).
        length: number of samples.
        seed: phantom seed of this split (dival: train 42, validation 2, test 1).
        phantoms: the phantom family, ``"dival"`` (dival's ``ellipses`` standard) or ``"adler"``
            (Adler & Öktem's); see ``lightning_recon.physics.phantoms``.
        noise: ``"gaussian"``, ``"poisson"`` or ``"none"``; ``relative_std`` / ``photons`` set its level.
        noise_seed: seed of the noise; defaults to ``seed + 1000``.
        noise_stream: ``"sequential"`` (Gaussian noise only): sample ``i`` gets the ``i``-th draw of
            ``RandomState(noise_seed).normal``, dival's own noise for its noise seeds (train 1,
            validation 2, test 3); ``"indexed"``: a generator seeded by ``(noise_seed, index)``,
            cheap random access for long training splits.
        simulation_size: simulate the sinogram from the truth upsampled bilinearly to this grid
            (a size or (rows, cols)) (dival's standard: 400 for 128² truths; scikit-image ``resize(order=1)``
            semantics) and projected on the same detector, avoiding the inverse crime.
        simulation_factor: alternatively, simulate from a phantom rasterised ``factor``× finer (the
            ground truth is its area average). Neither: the same grid (an inverse crime).
        fbp_filter, fbp_frequency_scaling: the FBP returned with each sample.
        disk_support: zero the phantom outside the inscribed disk (the field of view of a rotating
            scan; EDIP pre-training for real scans).
        object_outlines: multiply each phantom by a random elliptical outline inside the disk
            (semi-axes 0.25–0.75 of the field-of-view radius, random centre and rotation, seeded by
            the index): a sample surrounded by air, as on a rotation stage, instead of a field of
            view filled to its edge.
        backend: ray-transform backend (operators are built lazily, per worker).
        cache: keep every simulated sample in memory (per process): later epochs over a short
            split cost nothing (CPU training of small presets; ~45 kB per 64² sample). Samples that
            loader workers simulate are kept in the training process too (``adopt_batch``), so that
            the training loader serves later epochs without its workers (``data/resumable.py``).

    Each item is a dict of float32 tensors ``ground_truth (1, H, W)``, ``measurement (1, A, D)``,
    ``fbp (1, H, W)`` and the integer ``index``.
    """

    def __init__(
        self,
        geometry: Union[Geometry, dict],
        length: int,
        seed: int,
        phantoms: str = "dival",
        noise: str = "gaussian",
        relative_std: float = 0.025,
        photons: float = 4096.0,
        noise_seed: Optional[int] = None,
        noise_stream: str = "indexed",
        simulation_size: Optional[Union[int, Tuple[int, int]]] = None,
        simulation_factor: int = 1,
        fbp_filter: str = DEFAULT_FBP_FILTER,
        fbp_frequency_scaling: float = DEFAULT_FBP_FREQUENCY_SCALING,
        backend: str = "auto",
        disk_support: bool = False,
        object_outlines: bool = False,
        cache: bool = False,
    ):
        self.geometry = geometry_from_dict(geometry)
        if not isinstance(self.geometry, Geometry2D):
            raise ValueError("EllipsesDataset needs a 2D geometry")
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        if simulation_factor < 1 or int(simulation_factor) != simulation_factor:
            raise ValueError(f"simulation_factor must be a positive integer, got {simulation_factor}")
        if isinstance(simulation_size, int):
            simulation_size = (simulation_size, simulation_size)
        if simulation_size is not None and (len(simulation_size) != 2 or min(simulation_size) < 2):
            raise ValueError(f"simulation_size must be a size or (rows, cols) >= 2, or None; got {simulation_size}")
        if simulation_size is not None and simulation_factor > 1:
            raise ValueError("give simulation_size (bilinear upsampling) or simulation_factor (finer "
                             "rasterisation), not both")
        if phantoms not in PHANTOM_FAMILIES:
            raise ValueError(f"phantoms must be one of {PHANTOM_FAMILIES}, got {phantoms!r}")
        if noise_stream not in NOISE_STREAMS:
            raise ValueError(f"noise_stream must be one of {NOISE_STREAMS}, got {noise_stream!r}")
        if noise_stream == "sequential" and noise != "gaussian":
            raise ValueError(f"noise_stream 'sequential' (dival's stream) is for Gaussian noise, got noise={noise!r}")
        self.length, self.seed = int(length), int(seed)
        self.phantoms = phantoms
        self.noise_seed = int(noise_seed) if noise_seed is not None else self.seed + 1000
        self.noise = noise_model(noise, relative_std, photons)
        self.noise_stream = noise_stream
        self._normal_stream = SequentialNormalStream(self.noise_seed, self.geometry.sinogram_shape)
        self.simulation_size = tuple(int(s) for s in simulation_size) if simulation_size is not None else None
        self.simulation_factor = int(simulation_factor)
        self.disk_support = disk_support
        self.object_outlines = object_outlines
        self.backend = backend
        self.fbp_settings = dict(filter_type=fbp_filter, frequency_scaling=fbp_frequency_scaling)
        self._params: Optional[np.ndarray] = None
        # operators pickle without their backend state (built per process on first use)
        self.project = RayTransform(simulation_geometry(self.geometry, self.simulation_shape), backend=backend,
                                    check_finite=False)
        self.upsample = (BilinearResize(self.geometry.image_shape, self.simulation_size)
                         if self.simulation_size is not None else None)
        self.fbp = FBP(self.geometry, backend=backend, **self.fbp_settings)
        self.cache = cache
        self._samples: Dict[int, dict] = {}

    def __len__(self) -> int:
        return self.length

    # -- lazily built, per process -----------------------------------------------------------
    @property
    def parameters(self) -> np.ndarray:
        if self._params is None:
            self._params = ellipse_parameters(self.seed, self.length, self.phantoms)
        return self._params

    @property
    def simulation_shape(self):
        """The image grid the sinograms are simulated on."""
        g = self.geometry
        if self.simulation_size is not None:
            return self.simulation_size
        return tuple(s * self.simulation_factor for s in g.image_shape)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_params"] = None
        state["_samples"] = {}
        return state

    # -- samples -----------------------------------------------------------------------------
    def phantom(self, index: int) -> torch.Tensor:
        """The phantom ``(1, h, w)`` in [0, 1] on the rasterisation grid (``factor``× the image grid)."""
        g, k = self.geometry, self.simulation_factor
        shape = tuple(s * k for s in g.image_shape)
        image = torch.from_numpy(ellipse_phantom(self.parameters[index], shape, g.extent, self.phantoms))[None]
        if self.disk_support or self.object_outlines:
            rows, cols = torch.meshgrid(*(torch.linspace(-1, 1, n) * (n - 1) / n for n in shape), indexing="ij")
            image = image * (rows**2 + cols**2 <= 1.0)
            if self.object_outlines:
                image = image * self._outline(index, rows, cols)
        return image

    def _outline(self, index: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """A random filled ellipse inside the unit disk, on the grid ``rows, cols`` in [−1, 1]."""
        rng = np.random.default_rng([self.seed, index, 1])
        semi_axes = rng.uniform(0.25, 0.75, 2)
        centre = rng.uniform(-1, 1, 2) * (1 - semi_axes.max()) / np.sqrt(2)  # the ellipse stays inside the disk
        angle = rng.uniform(0, np.pi)
        u = (rows - centre[0]) * np.cos(angle) + (cols - centre[1]) * np.sin(angle)
        v = -(rows - centre[0]) * np.sin(angle) + (cols - centre[1]) * np.cos(angle)
        return (u / semi_axes[0]) ** 2 + (v / semi_axes[1]) ** 2 <= 1.0

    @torch.no_grad()
    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of length {self.length}")
        if index not in self._samples:
            sample = self.simulate(index)
            if not self.cache:
                return sample
            self._samples[index] = sample
        return self._samples[index]

    def adopt_batch(self, batch: dict) -> None:
        """Keep the samples of ``batch`` (collated, as a loader worker sent them) in this process's
        cache; a no-op without ``cache``."""
        if not self.cache:
            return
        for row, index in enumerate(batch["index"].tolist()):
            if index not in self._samples:
                self._samples[index] = {key: value[row].clone() for key, value in batch.items() if key != "index"}
                self._samples[index]["index"] = index

    def holds_every_sample(self) -> bool:
        """Whether every sample of the split is in this process's cache."""
        return self.cache and len(self._samples) == self.length

    def simulate(self, index: int) -> dict:
        """Sample ``index`` computed afresh (``__getitem__`` may return a cached copy)."""
        raster = self.phantom(index)
        truth = F.avg_pool2d(raster[None], self.simulation_factor)[0] if self.simulation_factor > 1 else raster
        simulated = self.upsample(raster) if self.upsample is not None else raster
        sinogram = self.project(simulated[None])
        if self.noise_stream == "sequential" and self.noise is not None:
            z = torch.from_numpy(self._normal_stream(index)).to(sinogram.dtype)
            sinogram = self.noise(sinogram, standard_normal=z.expand_as(sinogram))
        elif self.noise is not None:
            sinogram = self.noise(sinogram, generator=indexed_generator(self.noise_seed, index))
        fbp = self.fbp(sinogram)
        return {"ground_truth": truth, "measurement": sinogram[0], "fbp": fbp[0], "index": index}
