"""LightningDataModule for simulated CT pairs, with the benchmark presets (docs/data.md states
each one in full)."""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple, Union

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from ..physics.fbp import DEFAULT_FBP_FILTER, DEFAULT_FBP_FREQUENCY_SCALING
from ..physics.geometry import ParallelBeam2D, geometry_from_dict
from .device_simulation import DeviceEllipsesSimulator, SampleIndices
from .resumable import ResumableLoader
from .simulated import EllipsesDataset

__all__ = ["DATA_RANGES", "PRESETS", "SimulatedCTDataModule", "SplitDataModule", "WithoutGroundTruth",
           "check_loader_settings", "parse_data_range"]

# dival's `ellipses` standard (dival 0.6.2, `get_standard_dataset('ellipses', fixed_seeds=True)`):
# dival's phantom generator at 128², simulated from the truth upsampled bilinearly to 400², 30
# parallel-beam angles, 2.5 % white Gaussian noise; phantom seeds 42 / 2 / 1 and dival's own noise
# streams (seeds 1 / 2 / 3). `simulation_ratio` scales the simulation grid with `image_size`.
_DIVAL = dict(phantoms="dival", simulation_ratio=400 / 128, noise_stream="sequential",
              noise_seeds={"train": 1, "val": 2, "test": 3})
PRESETS: Dict[str, Dict[str, Any]] = {
    "ellipses-30": dict(_DIVAL, image_size=128, num_angles=30, noise="gaussian", relative_std=0.025,
                        train_length=32000, val_length=3200, test_length=100),
    "ellipses-30-5pct": dict(_DIVAL, image_size=128, num_angles=30, noise="gaussian", relative_std=0.05,
                             train_length=32000, val_length=3200, test_length=100),
    "ellipses-small": dict(_DIVAL, image_size=64, num_angles=30, noise="gaussian", relative_std=0.025,
                           train_length=2048, val_length=32, test_length=32),
    # Adler & Öktem's phantom family in ellipses-30's geometry and noise, simulated on the
    # reconstruction grid: a different distribution, never compared with dival's published numbers.
    "adler-ellipses-30": dict(phantoms="adler", simulation_ratio=1.0, noise_stream="indexed", noise_seeds=None,
                              image_size=128, num_angles=30, noise="gaussian", relative_std=0.025,
                              train_length=32000, val_length=3200, test_length=100),
    # Low dose, many angles (the regime of Noise2Inverse): ellipses-small's phantoms and simulation grid,
    # 360 angles over [0, π), Poisson noise at 100 photons per detector pixel (post-log, μ_max of
    # LoDoPaB per pixel length), noise drawn per (seed, index). 100, not 1,000: there the FBP loses only
    # 2 dB to the noise (docs/data.md).
    "ellipses-small-lowdose": dict(_DIVAL, noise_stream="indexed", image_size=64, num_angles=360, noise="poisson",
                                   photons=100.0, relative_std=0.025, train_length=2048, val_length=32,
                                   test_length=32),
}
SPLIT_SEEDS = {"train": 42, "val": 2, "test": 1}
DATA_RANGES = ("per-image", "dataset")


def parse_data_range(choice: Union[float, str, None], allow_dataset: bool = True) -> Union[float, str, None]:
    """A data module's ``data_range`` setting: a positive number (fixed), ``"per-image"`` or ``None``
    (``None``: each image's ``max − min``) or ``"dataset"`` (resolved by the data module)."""
    if choice is None:
        return None
    if isinstance(choice, str):
        allowed = DATA_RANGES if allow_dataset else ("per-image",)
        if choice not in allowed:
            raise ValueError(f"data_range must be a positive number or one of {allowed}, got {choice!r}")
        return None if choice == "per-image" else choice
    if isinstance(choice, bool) or not isinstance(choice, (int, float)) or not math.isfinite(choice) or choice <= 0:
        raise ValueError(f"data_range must be a positive number or 'per-image', got {choice!r}")
    return float(choice)


def check_loader_settings(batch_size: int, num_workers: int) -> Tuple[int, int]:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers!r}")
    return batch_size, num_workers


def check_train_ground_truth(train_ground_truth: bool) -> bool:
    """``train_ground_truth`` of a data module: ``True`` or ``False`` (one-line ``ValueError`` else)."""
    if not isinstance(train_ground_truth, bool):
        raise ValueError(f"train_ground_truth must be true or false, got {train_ground_truth!r}")
    return train_ground_truth


class WithoutGroundTruth(Dataset):
    """``dataset``'s samples without their ``ground_truth``: training from measurements alone
    (``train_ground_truth: false``; the self-supervised losses of ``methods/self_supervised.py``)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {key: value for key, value in self.dataset[index].items() if key != "ground_truth"}


class SplitDataModule(L.LightningDataModule):
    """Loaders over ``self.dataset(split)`` for the splits of ``SPLIT_SEEDS`` (train shuffled;
    predict uses the test split). Subclasses set ``batch_size``, ``num_workers`` and ``dataset``;
    ``train_ground_truth = False`` leaves ``ground_truth`` out of the training batches (validation
    and test keep it for their metrics)."""

    batch_size: int
    num_workers: int
    data_range: Optional[float] = 1.0  # phantoms and neuron volumes are normalised to at most 1
    train_ground_truth: bool = True

    @property
    def forward_model_dict(self) -> Dict[str, Any]:
        """``self.geometry`` as plain numbers with its ``type`` (the CLI links it into the model's
        ``forward_model``)."""
        return self.geometry.to_dict()

    @property
    def fixed_data_range(self) -> Optional[float]:
        """The PSNR/SSIM range of ``val/psnr`` and the "fixed" test columns (``None``: per image)."""
        return self.data_range

    @property
    def description(self) -> str:
        """The data of a results row: the class, or a preset / source and the measured geometry."""
        geometry = getattr(self, "geometry", None)
        shape = getattr(geometry, "sinogram_shape", None)
        source = self.hparams.get("preset") or self.hparams.get("path") or type(self).__name__
        described = f"{source}, {shape[0]} angles" if shape is not None and len(shape) == 2 else str(source)
        return described if self.train_ground_truth else f"{described}, trained without ground truth"

    def dataset(self, split: str):  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self, stage: Optional[str] = None) -> None:
        """Build the splits ``stage`` needs (a missing or bad one fails here, before any step)."""
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in splits.get(stage, tuple(SPLIT_SEEDS)):
            self.dataset(split)

    def _loader(self, split: str) -> DataLoader:
        """The split in order (validation, test, predict)."""
        return DataLoader(
            self.dataset(split),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled; checkpointed position (``ResumableLoader``) so that a killed run resumes in order.
        Without ``ground_truth`` when ``train_ground_truth`` is false."""
        dataset = self.dataset("train")
        return ResumableLoader(dataset if self.train_ground_truth else WithoutGroundTruth(dataset),
                               batch_size=self.batch_size, seed=self.shuffle_seed,
                               num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    @property
    def shuffle_seed(self) -> int:
        """Seed of the training order (epoch ``e`` uses ``seed + e``)."""
        return SPLIT_SEEDS["train"]

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")


class SimulatedCTDataModule(SplitDataModule):
    """Random-ellipse training, validation and test pairs ``(ground_truth, measurement, fbp)``.

    Args:
        preset: a name from ``PRESETS`` (``ellipses-30``, ``ellipses-30-5pct``, ``ellipses-small``,
            ``adler-ellipses-30``); any explicit argument below overrides the preset's value.
        phantoms: phantom family, ``"dival"`` or ``"adler"`` (see ``physics.phantoms``).
        geometry: full geometry as a dict of numbers; default: parallel beam ``image_size``² with
            ``num_angles`` angles over [0, π) (ODL's ``parallel_beam_geometry``).
        train_length, val_length, test_length: split sizes; the test split is the first
            ``test_length`` samples of the fixed test seed.
        noise, relative_std, photons: noise model (see ``EllipsesDataset``); ``photons`` defaults to
            the preset's (``ellipses-small-lowdose``: 100), else 4,096.
        noise_stream: ``"sequential"`` (dival's noise, seeds train 1 / val 2 / test 3) or
            ``"indexed"`` (per-(seed, index) generators); see ``EllipsesDataset``.
        simulation_size: simulate sinograms from the truth upsampled bilinearly to this square grid
            (default for the dival presets: the image size × 400/128, i.e. 400 at 128²); the image
            size simulates on the reconstruction grid (an inverse crime, for comparison only).
        simulation_factor: alternatively rasterise the phantom this many times finer (truth = its
            area average); needs ``simulation_size`` equal to ``image_size``.
        fbp_filter, fbp_frequency_scaling: the FBP delivered with each sample (the project's default,
            Hann 0.5: the best of a grid on ellipses-30, 24.2 dB; docs/results.md). The CLI gives the
            model this same FBP.
        batch_size, num_workers: loader settings (validation and test use the same batch size).
        backend: ray-transform backend for simulation.
        simulate_on: ``"cpu"`` (DataLoader workers) or ``"device"``: training pairs simulated on the
            accelerator from the loader's index batches (``DeviceEllipsesSimulator``; no workers, for
            GPU training); validation and test always use the CPU path.
        cache_samples: keep simulated samples in memory per process (``EllipsesDataset(cache=True)``):
            for short splits on the CPU; use with persistent workers (the default when workers > 0).
        disk_support: phantoms only inside the inscribed disk (EDIP pre-training for real scans).
        object_outlines: each phantom cut to a random elliptical outline, an object in air (EDIP
            pre-training for a sample smaller than the field of view).
        train_ground_truth: ``False``: the training batches hold ``measurement``, ``fbp`` and
            ``index`` only (the self-supervised losses ``noise2inverse`` and ``equivariant`` of
            ``FBPUNet``, ``LearnedGD``, ``LearnedPD``); validation and test keep the ground truth
            for their metrics, and the results row's data says "trained without ground truth".
    """

    def __init__(
        self,
        preset: Optional[str] = "ellipses-30",
        geometry: Optional[Dict[str, Any]] = None,
        image_size: Optional[int] = None,
        num_angles: Optional[int] = None,
        train_length: Optional[int] = None,
        val_length: Optional[int] = None,
        test_length: Optional[int] = None,
        noise: Optional[str] = None,
        relative_std: Optional[float] = None,
        photons: Optional[float] = None,
        phantoms: Optional[str] = None,
        noise_stream: Optional[str] = None,
        simulation_size: Optional[int] = None,
        simulation_factor: int = 1,
        fbp_filter: str = DEFAULT_FBP_FILTER,
        fbp_frequency_scaling: float = DEFAULT_FBP_FREQUENCY_SCALING,
        batch_size: int = 32,
        num_workers: int = 0,
        backend: str = "auto",
        simulate_on: str = "cpu",
        cache_samples: bool = False,
        disk_support: bool = False,
        object_outlines: bool = False,
        train_ground_truth: bool = True,
    ):
        super().__init__()
        self.train_ground_truth = check_train_ground_truth(train_ground_truth)
        if simulate_on not in ("cpu", "device"):
            raise ValueError(f"simulate_on must be 'cpu' or 'device', got {simulate_on!r}")
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)} or None")
        self.save_hyperparameters()
        base = dict(PRESETS[preset]) if preset else dict(PRESETS["ellipses-30"])
        given = dict(image_size=image_size, num_angles=num_angles, train_length=train_length,
                     val_length=val_length, test_length=test_length, noise=noise, relative_std=relative_std,
                     phantoms=phantoms, noise_stream=noise_stream, photons=photons)
        base.update({k: v for k, v in given.items() if v is not None})
        if base["noise"] != "gaussian" and base["noise_stream"] == "sequential" and noise_stream is None:
            base["noise_stream"] = "indexed"  # dival's stream is Gaussian; other noise draws per index
        self.settings = base
        if geometry is None:
            size = int(base["image_size"])
            geometry = ParallelBeam2D((size, size), num_angles=int(base["num_angles"])).to_dict()
        self.geometry = geometry_from_dict(geometry)
        self.save_hyperparameters(dict(self.hparams, geometry=self.geometry.to_dict()))  # as the model records it
        self.batch_size, self.num_workers = check_loader_settings(batch_size, num_workers)
        if simulation_size is None:
            ratio = 1.0 if simulation_factor > 1 else base["simulation_ratio"]
            simulation_shape = tuple(int(round(s * ratio)) for s in self.geometry.image_shape)
        else:
            simulation_shape = (int(simulation_size),) * 2
        same_grid = simulation_shape == tuple(self.geometry.image_shape)
        self.noise_seeds = base["noise_seeds"] or {}
        self._dataset_kwargs = dict(
            phantoms=base["phantoms"], noise=base["noise"], relative_std=base["relative_std"],
            photons=float(base.get("photons", 4096.0)),
            noise_stream=base["noise_stream"], simulation_size=None if same_grid else simulation_shape,
            simulation_factor=simulation_factor, fbp_filter=fbp_filter,
            fbp_frequency_scaling=fbp_frequency_scaling, backend=backend, disk_support=disk_support,
            object_outlines=object_outlines, cache=cache_samples,
        )
        self.datasets: Dict[str, EllipsesDataset] = {}
        self.simulate_on = simulate_on
        self._simulator: Optional[DeviceEllipsesSimulator] = None
        if simulate_on == "device":
            self.device_simulator()  # unsupported settings fail here, not at the first step

    def dataset(self, split: str) -> EllipsesDataset:
        if split not in SPLIT_SEEDS:
            raise ValueError(f"split must be one of {sorted(SPLIT_SEEDS)}, got {split!r}")
        if split not in self.datasets:
            self.datasets[split] = EllipsesDataset(
                self.geometry, self.settings[f"{split}_length"], seed=SPLIT_SEEDS[split],
                noise_seed=self.noise_seeds.get(split), **self._dataset_kwargs
            )
        return self.datasets[split]

    def device_simulator(self) -> DeviceEllipsesSimulator:
        """The simulator of the training split on the device (``simulate_on="device"``)."""
        if self._simulator is None:
            self._simulator = DeviceEllipsesSimulator(self.dataset("train"))
        return self._simulator

    def train_dataloader(self) -> DataLoader:
        if self.simulate_on == "cpu":
            return super().train_dataloader()
        return ResumableLoader(SampleIndices(len(self.dataset("train"))), batch_size=self.batch_size,
                               seed=self.shuffle_seed)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Index batches of the device-simulated training split become sample dicts on ``device``."""
        if self.simulate_on == "device" and isinstance(batch, torch.Tensor):
            batch = self.device_simulator()(batch, device)
            return batch if self.train_ground_truth else {k: v for k, v in batch.items() if k != "ground_truth"}
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

