"""Your own images as ground truths, with measurements simulated through any geometry and noise.

The files (PNG, TIFF, ``.npy``/``.npz``, HDF5 or a DICOM series; ``data.files``) are split into
train / validation / test by a fixed seed or by listed files, converted to one intensity scale,
brought to one size, and projected through the geometry (parallel or fan beam, sparse or limited
angle) with Gaussian or Poisson noise drawn per (split seed, index): validation and test samples
are the same in every run. Optionally the projection is computed from the image upsampled
bilinearly to a finer grid (no inverse crime, as dival's ellipses standard).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset

from ..physics.fbp import DEFAULT_FBP_FILTER, DEFAULT_FBP_FREQUENCY_SCALING
from ..physics.geometry import Geometry2D, ParallelBeam2D, geometry_from_dict
from ..physics.ray_transform import RayTransform
from ..physics.resample import BilinearResize
from .datamodule import SPLIT_SEEDS, SplitDataModule, check_loader_settings, check_train_ground_truth, parse_data_range
from .files import (DataFileError, RESIZE_MODES, find_files, hu_to_attenuation, hu_window, read_image, resize_image,
                    sort_dicom_series)
from .simulated import indexed_generator, noise_model, simulation_geometry

__all__ = ["FileSplitsDataModule", "ImageDataModule", "ImageFileDataset", "INTENSITY_MODES", "split_files"]

INTENSITY_MODES = ("minmax", "none", "attenuation")
NOISE_SEEDS = {"train": 1, "val": 2, "test": 3}


def split_files(items: List[Any], val_fraction: float, test_fraction: float, seed: int,
                val_items: Optional[List[Any]] = None, test_items: Optional[List[Any]] = None,
                what: str = "image files") -> Dict[str, List[Any]]:
    """Train / validation / test lists: the listed ``val_items`` / ``test_items`` (removed from
    ``items``) or a fixed-seed random draw of the fractions of ``items``; each list in ``items``' order."""
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= fraction < 1:
            raise ValueError(f"{name} must be in [0, 1), got {fraction}")
    listed = set(val_items or []) | set(test_items or [])
    pool = [item for item in items if item not in listed]
    order = np.random.RandomState(seed).permutation(len(pool))
    counts = {}
    for split, fraction, given in (("test", test_fraction, test_items), ("val", val_fraction, val_items)):
        counts[split] = 0 if given is not None else (max(1, int(round(fraction * len(pool)))) if fraction > 0 else 0)
    chosen = {"test": set(order[:counts["test"]]), "val": set(order[counts["test"]:counts["test"] + counts["val"]])}
    splits = {split: given if given is not None else [item for i, item in enumerate(pool) if i in chosen[split]]
              for split, given in (("test", test_items), ("val", val_items))}
    splits["train"] = [item for i, item in enumerate(pool) if i not in chosen["test"] | chosen["val"]]
    if not splits["train"]:
        raise DataFileError(f"{len(items)} {what} leave none for training after the validation and test split "
                            f"(val_fraction {val_fraction}, test_fraction {test_fraction})")
    return splits


class FileSplitsDataModule(SplitDataModule):
    """Splits of listed samples (``self.splits``) read from a user's files: one dataset per split,
    every sample checked at start (``check_files``), the resolved settings recorded. Subclasses
    set ``splits``, ``geometry``, ``data_range`` and ``make_dataset``; their datasets provide
    ``check_sample(index)``: read the sample's files (``DataFileError`` on a bad one), return its
    ground truth."""

    samples_name = "files"

    def make_dataset(self, split: str) -> Dataset:  # pragma: no cover - abstract
        raise NotImplementedError

    def dataset(self, split: str) -> Dataset:
        if split not in SPLIT_SEEDS:
            raise ValueError(f"split must be one of {sorted(SPLIT_SEEDS)}, got {split!r}")
        if split not in self.datasets:
            if not self.splits[split]:
                raise DataFileError(f"{self.hparams.path}: no {split} {self.samples_name} (set {split}_fraction or "
                                    f"{split}_path)")
            self.datasets[split] = self.make_dataset(split)
        return self.datasets[split]

    def check_files(self) -> None:
        """Read every sample of the non-empty splits once (a progress bar from 200 samples on), so
        that a bad file ends the run before it begins; resolve ``data_range="dataset"`` to the
        training ground truths' ``max − min``."""
        from tqdm import tqdm

        low, high = math.inf, -math.inf
        for split in (s for s in SPLIT_SEEDS if self.splits[s]):
            dataset = self.dataset(split)
            for index in tqdm(range(len(dataset)), desc=f"checking {split} {self.samples_name}", leave=False,
                              disable=len(dataset) < 200):
                truth = dataset.check_sample(index)
                if split == "train":
                    low, high = min(low, float(truth.min())), max(high, float(truth.max()))
        if self.data_range == "dataset":
            if high <= low:
                raise DataFileError(f"{self.hparams.path}: the training ground truths are constant ({low:g}); "
                                    "data_range 'dataset' needs contrast: give a number")
            self.data_range = high - low

    def record_resolved(self) -> None:
        """Keep the resolved data range and geometry as hyperparameters (Lightning logs the model's
        and the data module's together and requires equal values) and report the split sizes."""
        self.save_hyperparameters(dict(self.hparams, data_range=self.data_range, geometry=self.geometry.to_dict()))
        rank_zero_info(f"{type(self).__name__}: " + ", ".join(f"{s} {len(self.splits[s])}" for s in SPLIT_SEEDS)
                       + f" {self.samples_name}; ground truths {self.geometry.image_shape[0]}×"
                       f"{self.geometry.image_shape[1]}, sinograms {self.geometry.sinogram_shape[0]}×"
                       f"{self.geometry.sinogram_shape[1]}")


def _intensity(choice: Union[str, Sequence[float]]) -> Union[str, Tuple[float, float]]:
    if isinstance(choice, str):
        if choice not in INTENSITY_MODES:
            raise ValueError(f"intensity must be one of {INTENSITY_MODES} or a window [low, high], got {choice!r}")
        return choice
    window = tuple(float(v) for v in choice)
    if len(window) != 2 or not all(math.isfinite(v) for v in window) or window[0] >= window[1]:
        raise ValueError(f"intensity window must be [low, high] with low < high, got {list(choice)}")
    return window


class ImageFileDataset(Dataset):
    """Ground truths from ``files`` and their simulated measurements.

    Args:
        files: the image files of this split (one 2-D image each).
        geometry: the measurement geometry; its ``image_shape`` is the ground truths' size.
        noise_seed: seed of the noise (sample ``i`` draws from a generator seeded by ``(noise_seed, i)``).
        key: the array / dataset name in ``.npz`` / HDF5 files (default: the only one).
        resize: ``"resize"`` (bilinear, antialiased), ``"crop"``, ``"pad-crop"`` or ``"none"`` (all
            images must already have the geometry's size).
        intensity: ``"minmax"`` (each image to [0, 1]), ``"none"`` (values as read), ``"attenuation"``
            (Hounsfield units → μ = μ_water (1 + HU/1000), for DICOM) or a window ``[low, high]``
            mapped to [0, 1] with clipping (e.g. ``[-1000, 1000]`` HU).
        mu_water: μ of water for ``"attenuation"`` (1/mm by default convention: 0.02).
        noise, relative_std, photons, mu_max: the noise model (``data.noise_model``).
        simulation_size: project the image upsampled bilinearly to this square grid (``None``: the
            image grid, an inverse crime).
        backend: ray-transform backend (built lazily per worker).
        cache: keep the converted images in memory (per process).

    Items: ``ground_truth (1, H, W)``, ``measurement (1, A, D)`` (float32) and the integer ``index``.
    """

    def __init__(self, files: Sequence[Path], geometry: Union[Geometry2D, dict], noise_seed: int,
                 key: Optional[str] = None, resize: str = "resize", intensity: Union[str, Sequence[float]] = "minmax",
                 mu_water: float = 0.02, noise: str = "gaussian", relative_std: float = 0.025,
                 photons: float = 4096.0, mu_max: Optional[float] = None, simulation_size: Optional[int] = None,
                 backend: str = "auto", cache: bool = False):
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.files = [Path(f) for f in files]
        self.geometry = geometry_from_dict(geometry)
        self.key, self.resize, self.intensity, self.mu_water = key, resize, _intensity(intensity), float(mu_water)
        self.noise_seed = int(noise_seed)
        self.noise = noise_model(noise, relative_std, photons, mu_max)
        shape = tuple(self.geometry.image_shape)
        simulation_shape = shape if simulation_size is None else (int(simulation_size),) * 2
        self.project = RayTransform(simulation_geometry(self.geometry, simulation_shape), backend=backend,
                                    check_finite=False)
        self.upsample = BilinearResize(shape, simulation_shape) if simulation_shape != shape else None
        self.cache = cache
        self._images: Dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.files)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_images"] = {}
        return state

    def ground_truth(self, index: int) -> np.ndarray:
        """The ground truth of sample ``index``: read, converted and resized, float32 ``(H, W)``."""
        path = self.files[index]
        image = read_image(path, self.key)
        if self.intensity == "minmax":
            low, high = float(image.min()), float(image.max())
            if high <= low:
                raise DataFileError(f"{path}: constant image ({low:g} everywhere); intensity 'minmax' needs contrast")
            image = (image - low) / (high - low)
        elif self.intensity == "attenuation":
            image = hu_to_attenuation(image, self.mu_water)
        elif isinstance(self.intensity, tuple):
            image = hu_window(image, *self.intensity)
        return resize_image(image, self.geometry.image_shape, self.resize, name=path)

    check_sample = ground_truth  # the measurement is simulated from it

    @torch.no_grad()
    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a split of {len(self)} images")
        truth = self._images.get(index)
        if truth is None:
            truth = torch.from_numpy(self.ground_truth(index))[None]
            if self.cache:
                self._images[index] = truth
        simulated = self.upsample(truth) if self.upsample is not None else truth
        sinogram = self.project(simulated[None])
        if self.noise is not None:
            sinogram = self.noise(sinogram, generator=indexed_generator(self.noise_seed, index))
        return {"ground_truth": truth, "measurement": sinogram[0], "index": index}


class ImageDataModule(FileSplitsDataModule):
    """Training on your own images (``configs/data/images.yaml``): ground truths from files,
    measurements simulated.

    Args:
        path: a folder, a glob (``"scans/**/*.dcm"``), a file, or a list of these. A folder of DICOM
            files is one series, ordered by slice position.
        val_path, test_path: listed validation / test files (the same forms); otherwise
            ``val_fraction`` / ``test_fraction`` of ``path``'s files, drawn with ``split_seed``.
        key: array or dataset name inside ``.npz`` / HDF5 files (default: the only one).
        image_size: ground-truth size (an int or ``[H, W]``); default: the geometry's, else the first
            image's. ``resize`` brings every image to it (``"resize"``, ``"crop"``, ``"pad-crop"``,
            ``"none"``: sizes must agree).
        intensity, mu_water: see :class:`ImageFileDataset` (DICOM: ``attenuation`` or a HU window).
        geometry: the full geometry as a dict of numbers (``type: FanBeam2D`` for fan beam); default:
            parallel beam over the image with ``num_angles`` angles, every ``angle_step``-th of the
            grid, over ``angle_range`` (radians; e.g. ``[0, 2.0944]`` for 120° limited angle).
        noise, relative_std, photons, mu_max: the noise model (``"gaussian"`` relative std,
            ``"poisson"`` with ``photons`` per detector pixel, or ``"none"``).
        simulation_size: project from the image upsampled to this grid (no inverse crime).
        data_range: PSNR/SSIM range: ``"dataset"`` (max − min over the training ground truths,
            default), ``"per-image"`` or a number.
        check_files: read every file once at start (bad files end the run before it begins, with one
            line; ``"dataset"`` needs it for the training split).
        fbp_filter, fbp_frequency_scaling: the FBP the method computes on its device (linked by the CLI).
        batch_size, num_workers, cache_samples, backend: loader settings, in-memory image cache,
            ray-transform backend.
        train_ground_truth: ``False``: training batches without ``ground_truth`` (the
            self-supervised losses ``noise2inverse`` / ``equivariant``); validation and test keep it.
    """

    def __init__(
        self,
        path: Union[str, List[str]],
        val_path: Optional[Union[str, List[str]]] = None,
        test_path: Optional[Union[str, List[str]]] = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        key: Optional[str] = None,
        image_size: Optional[Union[int, List[int]]] = None,
        resize: str = "resize",
        intensity: Union[str, List[float]] = "minmax",
        mu_water: float = 0.02,
        geometry: Optional[Dict[str, Any]] = None,
        num_angles: int = 30,
        angle_step: int = 1,
        angle_range: Optional[List[float]] = None,
        noise: str = "gaussian",
        relative_std: float = 0.025,
        photons: float = 4096.0,
        mu_max: Optional[float] = None,
        simulation_size: Optional[int] = None,
        data_range: Union[float, str, None] = "dataset",
        check_files: bool = True,
        fbp_filter: str = DEFAULT_FBP_FILTER,
        fbp_frequency_scaling: float = DEFAULT_FBP_FREQUENCY_SCALING,
        batch_size: int = 8,
        num_workers: int = 0,
        cache_samples: bool = False,
        backend: str = "auto",
        train_ground_truth: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.train_ground_truth = check_train_ground_truth(train_ground_truth)
        self.batch_size, self.num_workers = check_loader_settings(batch_size, num_workers)
        self.data_range = parse_data_range(data_range)
        files = self._find(path)
        self.splits = split_files(files, val_fraction, test_fraction, split_seed,
                                  self._find(val_path) if val_path is not None else None,
                                  self._find(test_path) if test_path is not None else None)
        self.geometry = self._geometry(geometry, image_size, num_angles, angle_step, angle_range, key)
        self._dataset_kwargs = dict(key=key, resize=resize, intensity=intensity, mu_water=mu_water, noise=noise,
                                    relative_std=relative_std, photons=photons, mu_max=mu_max,
                                    simulation_size=simulation_size, backend=backend, cache=cache_samples)
        self.datasets: Dict[str, ImageFileDataset] = {}
        if self.data_range == "dataset" and not check_files:
            raise ValueError("data_range 'dataset' reads every training image: set check_files true or give a number")
        if check_files:
            self.check_files()
        self.record_resolved()

    @staticmethod
    def _find(source: Union[str, List[str]]) -> List[Path]:
        files = find_files(source)
        return sort_dicom_series(files) if all(f.suffix.lower() == ".dcm" for f in files) else files

    def _geometry(self, geometry, image_size, num_angles, angle_step, angle_range, key) -> Geometry2D:
        if image_size is not None:
            image_shape = (int(image_size),) * 2 if isinstance(image_size, int) else tuple(int(s) for s in image_size)
        elif geometry is not None:
            image_shape = tuple(geometry_from_dict(geometry).image_shape)
        else:
            image_shape = read_image(self.splits["train"][0], key).shape
        if geometry is not None:
            built = geometry_from_dict(geometry)
            if tuple(built.image_shape) != image_shape:
                raise ValueError(f"image_size {list(image_shape)} disagrees with the geometry's image_shape "
                                 f"{list(built.image_shape)}")
        else:
            built = ParallelBeam2D(image_shape, num_angles=num_angles, angle_step=angle_step,
                                   **({"angle_range": tuple(angle_range)} if angle_range is not None else {}))
        if not isinstance(built, Geometry2D):
            raise ValueError("ImageDataModule needs a 2D geometry (ParallelBeam2D or FanBeam2D)")
        return built

    def make_dataset(self, split: str) -> ImageFileDataset:
        return ImageFileDataset(self.splits[split], self.geometry, NOISE_SEEDS[split], **self._dataset_kwargs)
