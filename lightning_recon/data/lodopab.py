"""LoDoPaB-CT (Leuschner et al., Scientific Data 2021; Zenodo record 3384092), read from its HDF5 files.

The published layout, in one folder: ``ground_truth_{train,validation,test}_NNN.hdf5`` with a
dataset ``data`` of shape ``(≤128, 362, 362)`` (float32 in [0, 1]: attenuation divided by that of
3071 HU) and ``observation_{part}_NNN.hdf5`` with ``data`` of shape ``(≤128, 1000, 513)`` (post-log
sinograms in the same normalisation), 35,820 / 3,522 / 3,553 samples, and optionally
``patient_ids_rand_{part}.csv`` (one patient id per sample). The geometry is dival's
``LoDoPaBDataset`` geometry: parallel beam, image domain [−0.13, 0.13]² m on 362² pixels, 1000
angles at the cell midpoints of [0, π), 513 detector pixels over [−0.1838, 0.1838] m
(``odl.applications.tomo.parallel_beam_geometry``). ``python -m lightning_recon.data.download
lodopab DEST`` fetches the record.

Samples are read one at a time from the HDF5 files (no whole-file loads); file handles are opened
lazily in each process, so DataLoader workers never share one.
"""
from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset

from ..physics.fbp import DEFAULT_FBP_FILTER, DEFAULT_FBP_FREQUENCY_SCALING
from ..physics.geometry import ParallelBeam2D
from .datamodule import SplitDataModule, check_loader_settings, check_train_ground_truth, parse_data_range
from .files import DataFileError, OpenHDF5Files, hdf5_shapes

__all__ = ["LODOPAB_LENGTHS", "LoDoPaBDataModule", "LoDoPaBDataset", "lodopab_geometry", "scan_lodopab"]

IMAGE_SHAPE = (362, 362)
NUM_ANGLES = 1000
NUM_DETECTOR_PIXELS = 513
IMAGE_EXTENT = (0.26, 0.26)  # metres: the domain [−0.13, 0.13]²
LODOPAB_LENGTHS = {"train": 35820, "validation": 3522, "test": 3553}
PART_OF_SPLIT = {"train": "train", "val": "validation", "test": "test"}
SAMPLES_PER_FILE = 128
PHOTONS_PER_PIXEL = 4096
ORIGINAL_MIN_PHOTON_COUNT = 0.1  # the value zero photon counts were replaced with in the published files
# 1/m: the attenuation of 3071 HU (μ_water 20/m, μ_air 0.02/m, dival's constants), by which the stored
# ground truths and post-log observations are divided
MU_MAX_PER_METRE = 3071 * (20.0 - 0.02) / 1000 + 20.0


def lodopab_geometry(angle_step: int = 1, image_size: int = IMAGE_SHAPE[0], num_angles: int = NUM_ANGLES,
                     num_detector_pixels: int = NUM_DETECTOR_PIXELS) -> ParallelBeam2D:
    """LoDoPaB's geometry (lengths in metres), measuring every ``angle_step``-th of its 1000 angles
    (``angle_step`` must divide 1000: 200 angles for 5, 100 for 10, 50 for 20). The other arguments
    describe a reduced copy (the tests' small files): the same 0.26 m square and detector span."""
    if not isinstance(angle_step, int) or angle_step < 1 or num_angles % angle_step:
        raise ValueError(f"angle_step must be a positive divisor of {num_angles} (the stored angles), got {angle_step!r}")
    return ParallelBeam2D((image_size, image_size), image_extent=IMAGE_EXTENT, num_angles=num_angles // angle_step,
                          angle_step=angle_step, num_detector_pixels=num_detector_pixels,
                          detector_extent=math.hypot(*IMAGE_EXTENT))


NOT_LODOPAB = "; not a LoDoPaB-CT file"
_FILE_NAME = re.compile(r"^(ground_truth|observation)_(train|validation|test)_(\d{3})\.hdf5$")


def scan_lodopab(path: Union[str, Path], part: str, image_shape: Tuple[int, int] = IMAGE_SHAPE,
                 sinogram_shape: Tuple[int, int] = (NUM_ANGLES, NUM_DETECTOR_PIXELS)) -> List[Tuple[int, int]]:
    """``(file number, samples)`` of each ground-truth/observation file pair of ``part`` in ``path``,
    with every pair's shapes checked. Raises ``DataFileError`` (one line) on a missing folder, a part
    without files, a file without its partner, wrong shapes or different sample counts."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataFileError(f"{folder}: LoDoPaB-CT folder does not exist (download it with "
                            f"`python -m lightning_recon.data.download lodopab {folder}`)")
    numbers: Dict[str, set] = {"ground_truth": set(), "observation": set()}
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match and match.group(2) == part:
            numbers[match.group(1)].add(int(match.group(3)))
    if not numbers["ground_truth"] and not numbers["observation"]:
        raise DataFileError(f"{folder}: no LoDoPaB-CT files for part '{part}' (expected ground_truth_{part}_000.hdf5 "
                            f"and observation_{part}_000.hdf5, ...)")
    for kind, other in (("ground_truth", "observation"), ("observation", "ground_truth")):
        lonely = sorted(numbers[kind] - numbers[other])
        if lonely:
            raise DataFileError(f"{folder / f'{kind}_{part}_{lonely[0]:03d}.hdf5'}: no matching "
                                f"{other}_{part}_{lonely[0]:03d}.hdf5")
    pairs = []
    for number in sorted(numbers["ground_truth"]):
        truth_path = folder / f"ground_truth_{part}_{number:03d}.hdf5"
        observation_path = folder / f"observation_{part}_{number:03d}.hdf5"
        (truth_shape,) = hdf5_shapes(truth_path, ["data"], NOT_LODOPAB)
        (observation_shape,) = hdf5_shapes(observation_path, ["data"], NOT_LODOPAB)
        if len(truth_shape) != 3 or truth_shape[1:] != tuple(image_shape):
            raise DataFileError(f"{truth_path}: data of shape {truth_shape}, expected (N, {image_shape[0]}, "
                                f"{image_shape[1]})")
        if len(observation_shape) != 3 or observation_shape[1:] != tuple(sinogram_shape):
            raise DataFileError(f"{observation_path}: data of shape {observation_shape}, expected (N, "
                                f"{sinogram_shape[0]}, {sinogram_shape[1]}): the geometry does not match the stored "
                                "sinograms")
        if truth_shape[0] != observation_shape[0]:
            raise DataFileError(f"{observation_path}: {observation_shape[0]} observations for {truth_shape[0]} ground "
                                f"truths in {truth_path.name}")
        pairs.append((number, truth_shape[0]))
    return pairs


def _patient_ids(folder: Path, part: str) -> np.ndarray:
    path = folder / f"patient_ids_rand_{part}.csv"
    try:
        return np.loadtxt(path, dtype=np.int64, ndmin=1)
    except (OSError, ValueError) as error:
        raise DataFileError(f"{path}: patient ids unreadable ({type(error).__name__}); sorted_by_patient needs "
                            "the record's patient_ids_rand_*.csv") from None


class LoDoPaBDataset(Dataset):
    """One split of LoDoPaB-CT as stored (post-log observations, ground truths in [0, 1]).

    Args:
        path: the folder holding the HDF5 files (a partial copy is read as it is: the files present).
        split: ``"train"``, ``"val"`` or ``"test"`` (parts train / validation / test).
        angle_step: measure every ``angle_step``-th angle (a divisor of 1000; a sparse-angle subset).
        min_photon_count: dival's replacement for a zero photon count. ``None`` or 0.1: the
            observations as stored (0.1 was used when the data were made); another value in (0, 1]
            replaces each stored zero-count value by ``−log(min_photon_count / 4096) / μ_max``
            (values above 1 become 1, with a warning, as in dival).
        sorted_by_patient: order samples by patient id (stable; dival's order), from the record's
            ``patient_ids_rand_{part}.csv``; otherwise the stored (randomised) order.
        length: use only the first ``length`` samples (after ordering); ``None``: all found.
        image_size, num_angles, num_detector_pixels: the stored sizes, LoDoPaB's 362, 1000, 513 (a
            reduced copy, as the tests make, has its own; the physical square and detector span stay).

    Items: ``ground_truth (1, 362, 362)``, ``measurement (1, 1000 / angle_step, 513)`` (float32)
    and the integer ``index``; no ``fbp`` (the method computes it on its device).
    """

    def __init__(self, path: Union[str, Path], split: str, angle_step: int = 1,
                 min_photon_count: Optional[float] = None, sorted_by_patient: bool = False,
                 length: Optional[int] = None, image_size: int = IMAGE_SHAPE[0], num_angles: int = NUM_ANGLES,
                 num_detector_pixels: int = NUM_DETECTOR_PIXELS):
        if split not in PART_OF_SPLIT:
            raise ValueError(f"split must be one of {sorted(PART_OF_SPLIT)}, got {split!r}")
        self.geometry = lodopab_geometry(angle_step, image_size, num_angles, num_detector_pixels)
        self.folder, self.part, self.angle_step = Path(path).expanduser(), PART_OF_SPLIT[split], angle_step
        self.zero_count_value = self._zero_count_value(min_photon_count)
        self.files = scan_lodopab(self.folder, self.part, (image_size, image_size), (num_angles, num_detector_pixels))
        # global sample index (as in the full record) -> (file number, row)
        global_index = np.concatenate([number * SAMPLES_PER_FILE + np.arange(count) for number, count in self.files])
        if sorted_by_patient:
            ids = _patient_ids(self.folder, self.part)
            if global_index.max() >= ids.size:
                raise DataFileError(f"{self.folder / f'patient_ids_rand_{self.part}.csv'}: {ids.size} patient ids for "
                                    f"sample indices up to {int(global_index.max())}")
            global_index = global_index[np.argsort(ids[global_index], kind="stable")]
        if length is not None:
            if length < 0:
                raise ValueError(f"length must be >= 0, got {length}")
            global_index = global_index[:length]
        self.global_index = global_index
        self._files = OpenHDF5Files()

    @staticmethod
    def _zero_count_value(min_photon_count: Optional[float]) -> Optional[float]:
        """The post-log value that replaces a stored zero-count value (``None``: keep the stored one)."""
        if min_photon_count is None or min_photon_count == ORIGINAL_MIN_PHOTON_COUNT:
            return None
        if not (isinstance(min_photon_count, (int, float)) and math.isfinite(min_photon_count) and min_photon_count > 0):
            raise ValueError(f"min_photon_count must be a positive number or None, got {min_photon_count!r}")
        if min_photon_count > 1:
            warnings.warn(f"min_photon_count changed from {min_photon_count} to 1 (as dival)", stacklevel=3)
            min_photon_count = 1.0
        return float(-np.log(min_photon_count / PHOTONS_PER_PIXEL) / MU_MAX_PER_METRE)

    # stored values at or above this threshold were zero photon counts (dival's rule)
    ZERO_COUNT_THRESHOLD = 0.5 * (-np.log(ORIGINAL_MIN_PHOTON_COUNT / PHOTONS_PER_PIXEL)
                                  - np.log(1 / PHOTONS_PER_PIXEL)) / MU_MAX_PER_METRE

    @property
    def available(self) -> int:
        """Samples found in the folder for this part (before ``length``)."""
        return sum(count for _, count in self.files)

    def __len__(self) -> int:
        return int(self.global_index.size)

    def _data(self, kind: str, number: int):
        """The ``data`` dataset of one file (opened once per process)."""
        return self._files[self.folder / f"{kind}_{self.part}_{number:03d}.hdf5"]["data"]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a split of {len(self)} samples")
        number, row = divmod(int(self.global_index[index]), SAMPLES_PER_FILE)
        try:
            truth = np.asarray(self._data("ground_truth", number)[row], dtype=np.float32)
            observation = np.asarray(self._data("observation", number)[row], dtype=np.float32)
        except Exception as error:
            raise DataFileError(f"{self.folder}/*_{self.part}_{number:03d}.hdf5: sample {row} unreadable "
                                f"({type(error).__name__}); the file may be truncated") from None
        observation = observation[:: self.angle_step]
        if self.zero_count_value is not None:
            observation = np.where(observation >= self.ZERO_COUNT_THRESHOLD, self.zero_count_value, observation)
        for kind, array in (("ground_truth", truth), ("observation", observation)):
            if not np.isfinite(array).all():
                raise DataFileError(f"{self.folder / f'{kind}_{self.part}_{number:03d}.hdf5'}: sample {row} has "
                                    f"{int(np.size(array) - np.isfinite(array).sum())} NaN or inf values")
        return {"ground_truth": torch.from_numpy(truth)[None],
                "measurement": torch.from_numpy(np.ascontiguousarray(observation, dtype=np.float32))[None],
                "index": index}


class LoDoPaBDataModule(SplitDataModule):
    """LoDoPaB-CT for training and testing (``configs/data/lodopab.yaml``).

    Args:
        path: the folder of the HDF5 files (``python -m lightning_recon.data.download lodopab PATH``).
        angle_step, min_photon_count, sorted_by_patient: see :class:`LoDoPaBDataset`.
        train_length, val_length, test_length: use only the first samples of a split (``None``: all found).
        data_range: the PSNR/SSIM range of ``val/psnr`` and of the test's "fixed" columns: a number
            (default 1.0: the ground truths are normalised to [0, 1]) or ``"per-image"`` (each
            image's ``max − min``, dival's convention for LoDoPaB). The test table always has the
            per-image columns too.
        fbp_filter, fbp_frequency_scaling: the FBP the method computes on its device (linked by the CLI).
        batch_size, num_workers: loader settings (a 362² pair is 2.6 MB).
        image_size, num_angles, num_detector_pixels: the stored sizes (LoDoPaB's by default; a reduced
            copy has its own).
        train_ground_truth: ``False``: training batches without ``ground_truth`` (the
            self-supervised losses ``noise2inverse`` / ``equivariant``); validation and test keep it.

    The files found are counted once (a partial copy is read as it is); a missing part fails
    where it is needed, with one line naming the folder.
    """

    def __init__(self, path: str, angle_step: int = 1, min_photon_count: Optional[float] = None,
                 sorted_by_patient: bool = False, train_length: Optional[int] = None,
                 val_length: Optional[int] = None, test_length: Optional[int] = None,
                 data_range: Union[float, str, None] = 1.0, fbp_filter: str = DEFAULT_FBP_FILTER,
                 fbp_frequency_scaling: float = DEFAULT_FBP_FREQUENCY_SCALING, batch_size: int = 4,
                 num_workers: int = 2, image_size: int = IMAGE_SHAPE[0], num_angles: int = NUM_ANGLES,
                 num_detector_pixels: int = NUM_DETECTOR_PIXELS, train_ground_truth: bool = True):
        super().__init__()
        self.save_hyperparameters()
        self.train_ground_truth = check_train_ground_truth(train_ground_truth)
        self.geometry = lodopab_geometry(angle_step, image_size, num_angles, num_detector_pixels)
        self.batch_size, self.num_workers = check_loader_settings(batch_size, num_workers)
        self.data_range = parse_data_range(data_range, allow_dataset=False)
        self._lengths = {"train": train_length, "val": val_length, "test": test_length}
        self._options = dict(angle_step=angle_step, min_photon_count=min_photon_count,
                             sorted_by_patient=sorted_by_patient, image_size=image_size, num_angles=num_angles,
                             num_detector_pixels=num_detector_pixels)
        self.datasets: Dict[str, LoDoPaBDataset] = {}
        self._missing: Dict[str, str] = {}
        for split in PART_OF_SPLIT:
            try:
                self.dataset(split)
            except DataFileError as error:
                if not Path(path).expanduser().is_dir():
                    raise
                self._missing[split] = str(error)
        if len(self._missing) == len(PART_OF_SPLIT):
            raise DataFileError(f"{Path(path).expanduser()}: no LoDoPaB-CT files (ground_truth_<part>_NNN.hdf5 and "
                                "observation_<part>_NNN.hdf5)")
        found = ", ".join(
            f"{PART_OF_SPLIT[s]} missing" if s in self._missing else
            f"{PART_OF_SPLIT[s]} {len(self.datasets[s])} of {LODOPAB_LENGTHS[PART_OF_SPLIT[s]]}"
            for s in PART_OF_SPLIT)
        # resolved settings, as the model records them (Lightning logs both and requires equal values)
        self.save_hyperparameters(dict(self.hparams, data_range=self.data_range))
        rank_zero_info(f"LoDoPaB-CT in {path}: {found} samples")

    def dataset(self, split: str) -> LoDoPaBDataset:
        if split in self._missing:
            raise DataFileError(self._missing[split])
        if split not in self.datasets:
            self.datasets[split] = LoDoPaBDataset(self.hparams.path, split, length=self._lengths.get(split),
                                                  **self._options)
        return self.datasets[split]
