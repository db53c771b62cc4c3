"""Sparse recovery data: neuron volumes seen by a light-field microscope, and sparse-coding pairs.

Samples are deterministic per ``(seed, index)`` (``numpy.random.default_rng([seed, index])``) and
are dicts with ``ground_truth`` (the volume or code), ``measurement`` and ``labelled`` (whether
the supervised loss may use the ground truth: the "small ground-truth set + consistency" regime).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..physics.lightfield import LightFieldGeometry
from ..physics.linear import SparseCodingProblem
from ..physics.operator import operator_from_dict
from .datamodule import SPLIT_SEEDS, SplitDataModule

__all__ = ["LightFieldDataModule", "NeuronVolumeDataset", "SparseCodingDataModule", "SparseCodingDataset"]

class _SimulatedSplit(Dataset):
    """Shared length, seeding, labelling and the forward operator of ``spec`` (its plain numbers)."""

    def __init__(self, spec: Any, length: int, seed: int, labelled_fraction: float):
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if not 0 <= labelled_fraction <= 1:
            raise ValueError(f"labelled_fraction must be in [0, 1], got {labelled_fraction}")
        self.length, self.seed = int(length), int(seed)
        self.num_labelled = int(round(labelled_fraction * self.length))
        self.operator = operator_from_dict(spec)

    def __len__(self) -> int:
        return self.length

    def rng(self, index: int) -> np.random.Generator:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        return np.random.default_rng([self.seed, index])


class NeuronVolumeDataset(_SimulatedSplit):
    """Sparse non-negative volumes of Gaussian "neurons" and their noisy light-field images.

    A volume ``(D, H, W)`` holds ``num_neurons`` (uniform in the given range) blobs with lateral
    std ``radius`` pixels, axial std ``axial_radius`` planes and peak intensity uniform in
    ``[0.5, 1]``, centred at uniform random positions (continuous, away from the lateral edges by
    ``2 radius``). The light-field image is ``Poisson(photons · H x) / photons`` plus Gaussian read
    noise of std ``read_noise_std`` (``photons = 0``: no shot noise).

    Items: ``ground_truth (D, H, W)``, ``measurement (1, H, W)``, ``centres (max_neurons, 3)`` as
    ``(depth, row, column)`` in planes/pixels, padded with ``-1``, ``num_neurons``, ``labelled``.
    """

    def __init__(self, geometry: Union[LightFieldGeometry, Dict[str, Any]], length: int, seed: int = 0,
                 num_neurons: Tuple[int, int] = (4, 12), radius: float = 1.0, axial_radius: float = 0.6,
                 photons: float = 1000.0, read_noise_std: float = 0.0, labelled_fraction: float = 1.0):
        geometry = LightFieldGeometry.from_dict(geometry)
        super().__init__(geometry, length, seed, labelled_fraction)
        self.geometry = geometry
        low, high = (int(v) for v in num_neurons)
        if not 0 <= low <= high:
            raise ValueError(f"num_neurons must be a range (low, high) with 0 <= low <= high, got {num_neurons}")
        for name, value in (("radius", radius), ("axial_radius", axial_radius)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0, got {value}")
        if not (math.isfinite(photons) and photons >= 0) or not (math.isfinite(read_noise_std) and read_noise_std >= 0):
            raise ValueError(f"photons and read_noise_std must be finite and >= 0, got {photons}, {read_noise_std}")
        self.num_neurons = (low, high)
        self.radius, self.axial_radius = float(radius), float(axial_radius)
        self.photons, self.read_noise_std = float(photons), float(read_noise_std)

    def volume(self, index: int) -> Tuple[torch.Tensor, np.ndarray]:
        """The volume ``(D, H, W)`` and its neuron centres ``(n, 3)`` of sample ``index``."""
        rng = self.rng(index)
        depth, size = self.geometry.num_depths, self.geometry.image_size
        count = int(rng.integers(self.num_neurons[0], self.num_neurons[1] + 1))
        margin = min(2 * self.radius, (size - 1) / 2)
        centres = np.stack([rng.uniform(0, depth - 1, count), rng.uniform(margin, size - 1 - margin, count),
                            rng.uniform(margin, size - 1 - margin, count)], axis=1) if count else np.zeros((0, 3))
        peaks = rng.uniform(0.5, 1.0, count)
        z, y, x = (np.arange(n, dtype=np.float64) for n in (depth, size, size))
        volume = np.zeros((depth, size, size))
        for (cz, cy, cx), peak in zip(centres, peaks):
            gz = np.exp(-0.5 * ((z - cz) / self.axial_radius) ** 2)
            gy = np.exp(-0.5 * ((y - cy) / self.radius) ** 2)
            gx = np.exp(-0.5 * ((x - cx) / self.radius) ** 2)
            volume = np.maximum(volume, peak * gz[:, None, None] * gy[None, :, None] * gx[None, None, :])
        return torch.from_numpy(volume).float(), centres

    def __getitem__(self, index: int) -> Dict[str, Any]:
        volume, centres = self.volume(index)
        with torch.no_grad():
            clean = self.operator(volume[None])[0].clamp_min(0).double()
        rng = np.random.default_rng([self.seed, index, 1])
        noisy = rng.poisson(self.photons * clean.numpy()) / self.photons if self.photons > 0 else clean.numpy()
        noisy = noisy + self.read_noise_std * rng.standard_normal(noisy.shape)
        padded = -np.ones((self.num_neurons[1], 3), dtype=np.float32)
        padded[: len(centres)] = centres
        return {"ground_truth": volume, "measurement": torch.from_numpy(noisy).float(),
                "centres": torch.from_numpy(padded), "num_neurons": len(centres), "labelled": index < self.num_labelled}


class SparseCodingDataset(_SimulatedSplit):
    """Bernoulli–Gaussian codes ``x`` and ``y = A x + e`` of a :class:`SparseCodingProblem`.

    Items: ``ground_truth`` (domain shape of ``A``), ``measurement`` (range shape), ``labelled``.
    """

    def __init__(self, problem: Union[SparseCodingProblem, Dict[str, Any]], length: int, seed: int = 0,
                 labelled_fraction: float = 1.0):
        if isinstance(problem, dict):
            problem = SparseCodingProblem.from_dict(problem)
        super().__init__(problem, length, seed, labelled_fraction)
        self.problem = problem

    def __getitem__(self, index: int) -> Dict[str, Any]:
        rng, p = self.rng(index), self.problem
        shape = self.operator.domain_shape
        values = rng.standard_normal(shape)
        code = (rng.random(shape) < p.sparsity) * (np.abs(values) if p.nonnegative else values)
        x = torch.from_numpy(code).float()
        with torch.no_grad():
            y = self.operator(x[None])[0]
        y = y + p.noise_std * torch.from_numpy(rng.standard_normal(tuple(y.shape))).float()
        return {"ground_truth": x, "measurement": y, "labelled": index < self.num_labelled}


class _SparseDataModule(SplitDataModule):
    """Splits (train seed 42, val 2, test 1), loaders, and the forward model linked into the model."""

    def __init__(self, train_length: int, val_length: int, test_length: int, labelled_fraction: float,
                 batch_size: int, num_workers: int):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths = {"train": train_length, "val": val_length, "test": test_length}
        self.labelled_fraction = labelled_fraction
        self.batch_size, self.num_workers = batch_size, num_workers
        self.datasets: Dict[str, Dataset] = {}

    def make_dataset(self, length: int, seed: int, labelled_fraction: float) -> Dataset:  # pragma: no cover
        raise NotImplementedError

    def dataset(self, split: str) -> Dataset:
        if split not in SPLIT_SEEDS:
            raise ValueError(f"split must be one of {sorted(SPLIT_SEEDS)}, got {split!r}")
        if split not in self.datasets:
            fraction = self.labelled_fraction if split == "train" else 1.0
            self.datasets[split] = self.make_dataset(self.lengths[split], SPLIT_SEEDS[split], fraction)
        return self.datasets[split]


class LightFieldDataModule(_SparseDataModule):
    """Neuron volumes and light-field images (:class:`NeuronVolumeDataset`) for LISTA training.

    Args:
        geometry: :class:`LightFieldGeometry` as a dict (default: its defaults, 60² sensor, 7 depths).
        num_neurons, radius, axial_radius, photons, read_noise_std: see :class:`NeuronVolumeDataset`.
        labelled_fraction: share of training samples whose ground truth the loss may use.
    """

    def __init__(self, geometry: Optional[Dict[str, Any]] = None, num_neurons: Tuple[int, int] = (4, 12),
                 radius: float = 1.0, axial_radius: float = 0.6, photons: float = 1000.0,
                 read_noise_std: float = 0.0, train_length: int = 4096, val_length: int = 64, test_length: int = 64,
                 labelled_fraction: float = 1.0, batch_size: int = 16, num_workers: int = 0):
        super().__init__(train_length, val_length, test_length, labelled_fraction, batch_size, num_workers)
        self.geometry = LightFieldGeometry.from_dict(geometry or {})
        self.save_hyperparameters(ignore=["geometry"])
        self.save_hyperparameters({"geometry": self.geometry.to_dict()})
        self._sample_kwargs = dict(num_neurons=tuple(num_neurons), radius=radius, axial_radius=axial_radius,
                                   photons=photons, read_noise_std=read_noise_std)

    def make_dataset(self, length: int, seed: int, labelled_fraction: float) -> NeuronVolumeDataset:
        return NeuronVolumeDataset(self.geometry, length, seed, labelled_fraction=labelled_fraction, **self._sample_kwargs)


class SparseCodingDataModule(_SparseDataModule):
    """Classic LISTA data (:class:`SparseCodingDataset`); ``problem`` holds :class:`SparseCodingProblem`'s numbers."""

    def __init__(self, problem: Optional[Dict[str, Any]] = None, train_length: int = 16384, val_length: int = 256,
                 test_length: int = 1000, labelled_fraction: float = 1.0, batch_size: int = 64, num_workers: int = 0):
        super().__init__(train_length, val_length, test_length, labelled_fraction, batch_size, num_workers)
        problem = dict(problem or {})
        problem.pop("type", None)
        self.problem = SparseCodingProblem(**problem)
        self.save_hyperparameters(ignore=["problem"])
        self.save_hyperparameters({"problem": self.problem.to_dict()})

    @property
    def forward_model_dict(self) -> Dict[str, Any]:
        """The problem's numbers (codes are unbounded: NMSE is the figure of merit, not PSNR)."""
        return self.problem.to_dict()

    def make_dataset(self, length: int, seed: int, labelled_fraction: float) -> SparseCodingDataset:
        return SparseCodingDataset(self.problem, length, seed, labelled_fraction)
