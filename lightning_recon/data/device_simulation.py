"""Training pairs simulated on the accelerator, from the same (seed, index) parameters as the CPU path.

With ``SimulatedCTDataModule(simulate_on="device")`` the training loader yields only batches of
sample indices (no workers; Lightning's distributed sampler gives each DDP rank its own indices),
and ``DeviceEllipsesSimulator`` turns them into ``ground_truth``, ``measurement`` and ``fbp`` on the
device where the batch landed: the phantoms of the split's parameters rasterised by torch
(``physics.phantoms.rasterise_ellipses``, equal to ODL's except on ellipse borders), the same
simulation (bilinear upsampling and projection) and FBP as the CPU path, and Gaussian noise from a
generator seeded by ``(noise_seed, index)`` on the device. Validation and test stay on the CPU path,
so their sets are identical to it.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..physics.fbp import FBP
from ..physics.noise import GaussianNoise
from ..physics.phantoms import rasterise_ellipses
from ..physics.ray_transform import RayTransform
from ..physics.resample import BilinearResize
from .simulated import EllipsesDataset, simulation_geometry

__all__ = ["DeviceEllipsesSimulator", "SampleIndices"]


class SampleIndices(Dataset):
    """The integers ``0 … length − 1``: what the training loader yields when the device simulates."""

    def __init__(self, length: int):
        self.length = int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> int:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        return index


class DeviceEllipsesSimulator(nn.Module):
    """Simulate the samples ``indices`` of ``dataset`` on the indices' device.

    Supports what the benchmarks use: both phantom families, bilinear off-grid simulation or the same
    grid, Gaussian noise (relative std) or none; not ``simulation_factor``, disk support or outlines.
    Operators and the parameter table are built lazily per device and never pickled.
    """

    def __init__(self, dataset: EllipsesDataset, rasterise_chunk: int = 8):
        super().__init__()
        if dataset.simulation_factor > 1 or dataset.disk_support or dataset.object_outlines:
            raise ValueError("device simulation supports simulation_size or the same grid, without disk "
                             "support or outlines; use simulate_on='cpu' for those")
        if dataset.noise is not None and not isinstance(dataset.noise, GaussianNoise):
            raise ValueError("device simulation supports Gaussian noise or none; use simulate_on='cpu'")
        self.__dict__["dataset"] = dataset  # not a submodule: plain settings and the parameter table
        self.rasterise_chunk = int(rasterise_chunk)
        self._device_state: Dict[tuple, dict] = {}

    def _state(self, device: torch.device) -> dict:
        key = (device.type, device.index)
        if key not in self._device_state:
            ds = self.dataset
            g = ds.geometry
            state = {"params": torch.as_tensor(ds.parameters, dtype=torch.float64, device=device),
                     "project": RayTransform(simulation_geometry(g, ds.simulation_shape), backend=ds.backend,
                                             check_finite=False),
                     "fbp": FBP(g, backend=ds.backend, **ds.fbp_settings).to(device)}
            if ds.simulation_size is not None:
                state["upsample"] = BilinearResize(g.image_shape, ds.simulation_shape).to(device)
            self._device_state[key] = state
        return self._device_state[key]

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_device_state"] = {}
        return state

    def noise_seed(self, index: int) -> int:
        """The 64-bit seed of sample ``index``'s noise generator (from ``(noise_seed, index)``)."""
        words = np.random.SeedSequence([self.dataset.noise_seed, int(index), 2]).generate_state(2, dtype=np.uint32)
        return int(words[0]) << 32 | int(words[1])

    @torch.no_grad()
    def forward(self, indices: torch.Tensor, device: Optional[torch.device] = None) -> Dict[str, torch.Tensor]:
        """``indices (B,)`` (int64 on the host: no device synchronisation) → the CPU path's batch
        dict on ``device`` (default: the indices' device)."""
        device = torch.device(device) if device is not None else indices.device
        host_indices = indices.tolist()
        indices = indices.to(device, non_blocking=True)
        state, ds = self._state(device), self.dataset
        params = state["params"][indices]
        truth = torch.cat([rasterise_ellipses(chunk, ds.geometry.image_shape, ds.phantoms)
                           for chunk in params.split(self.rasterise_chunk)])[:, None]
        simulated = state["upsample"](truth) if "upsample" in state else truth
        sinogram = state["project"](simulated)
        if ds.noise is not None:
            normals = torch.stack([
                torch.randn(sinogram.shape[1:], device=device,
                            generator=torch.Generator(device).manual_seed(self.noise_seed(i)))
                for i in host_indices])
            sinogram = ds.noise(sinogram, standard_normal=normals)
        return {"ground_truth": truth, "measurement": sinogram, "fbp": state["fbp"](sinogram), "index": indices}
