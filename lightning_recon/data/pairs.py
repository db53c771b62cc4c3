"""Measured sinograms with reference reconstructions (``configs/data/pairs.yaml``).

Three layouts, told apart by ``path``:

- a folder, glob or list of ``.npz`` files, each one pair: ``measurement_key`` (default
  ``sinogram``, ``(A, D)``) and ``reference_key`` (default ``reference``, ``(H, W)``);
- one HDF5 file holding both stacks: ``measurement_key`` ``(N, A, D)`` and ``reference_key``
  ``(N, H, W)`` (read one sample at a time);
- a manifest ``.csv`` with a header ``measurement,reference`` and one pair per row (paths relative
  to the manifest): the measurement a ``.npy``/``.npz`` sinogram or a Data Exchange raw scan
  (``.h5`` with ``exchange/data``: flat/dark correction, ``−log``, one detector row, binning and
  centre offset, as ``finetune.py`` reads it), the reference any image file of ``data.files``.

The geometry comes from the config and must match every stored sinogram's shape.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..physics.fbp import DEFAULT_FBP_FILTER, DEFAULT_FBP_FREQUENCY_SCALING
from ..physics.geometry import Geometry2D, ParallelBeam2D, geometry_from_dict
from .datamodule import check_loader_settings, check_train_ground_truth, parse_data_range
from .files import DataFileError, OpenHDF5Files, find_files, hdf5_shapes, read_image
from .images import FileSplitsDataModule, split_files
from .measurements import read_sinogram

__all__ = ["MeasuredPairsDataModule", "MeasuredPairsDataset", "pair_items"]

# one pair: ("npz", file) | ("hdf5", file, index) | ("manifest", measurement file, reference file)
PairItem = Tuple[Any, ...]


def _manifest_items(path: Path) -> List[PairItem]:
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataFileError(f"{path}: unreadable manifest ({type(error).__name__})") from None
    if not rows or not {"measurement", "reference"} <= set(rows[0]):
        raise DataFileError(f"{path}: a manifest needs a header 'measurement,reference' and at least one row")
    items = []
    for number, row in enumerate(rows, start=2):
        files = tuple(path.parent / Path(os.path.expanduser(row[k] or "")) for k in ("measurement", "reference"))
        for file in files:
            if not file.is_file():
                raise DataFileError(f"{path}, line {number}: {file} does not exist")
        items.append(("manifest", *files))
    return items


def pair_items(source: Union[str, List[str]], keys: Tuple[str, str]) -> List[PairItem]:
    """The pairs of ``source`` (one of the three layouts), each stack's counts checked."""
    sources = source if isinstance(source, (list, tuple)) else [source]
    items: List[PairItem] = []
    for entry in sources:
        path = Path(os.path.expanduser(str(entry)))
        if path.suffix.lower() == ".csv":
            items += _manifest_items(path) if path.is_file() else []
            if not path.is_file():
                raise DataFileError(f"{path}: does not exist")
        elif path.suffix.lower() in (".h5", ".hdf5") and path.is_file():
            measurements, references = hdf5_shapes(path, keys, " (set measurement_key / reference_key)")
            if len(measurements) != 3 or len(references) != 3:
                raise DataFileError(f"{path}: expected stacks (N, A, D) and (N, H, W), got {measurements} and {references}")
            if measurements[0] != references[0]:
                raise DataFileError(f"{path}: {measurements[0]} measurements for {references[0]} references")
            items += [("hdf5", path, i) for i in range(measurements[0])]
        else:
            items += [("npz", file) for file in find_files(str(path), suffixes=(".npz",))]
    return items


class MeasuredPairsDataset(Dataset):
    """Stored (measurement, reference) pairs of one split.

    Args:
        items: the pairs (``pair_items``).
        geometry: the geometry of the stored sinograms (their shape must be its ``sinogram_shape``).
        measurement_key, reference_key: array / dataset names in ``.npz`` and HDF5 files.
        slice_index, binning, center_offset, min_transmission: how a Data Exchange raw scan of a
            manifest becomes a sinogram (``data.real.load_data_exchange``).

    Items: ``ground_truth (1, H, W)``, ``measurement (1, A, D)`` (float32) and the integer ``index``.
    """

    def __init__(self, items: List[PairItem], geometry: Union[Geometry2D, dict], measurement_key: str = "sinogram",
                 reference_key: str = "reference", slice_index: int = 0, binning: int = 1,
                 center_offset: Optional[float] = None, min_transmission: float = 1e-4):
        self.items = list(items)
        self.geometry = geometry_from_dict(geometry)
        self.keys = (measurement_key, reference_key)
        self.raw_scan = dict(slice_index=slice_index, binning=binning, center_offset=center_offset,
                             min_transmission=min_transmission)
        self._files = OpenHDF5Files()

    def __len__(self) -> int:
        return len(self.items)

    def _checked(self, array: np.ndarray, expected: Tuple[int, int], what: str, where: str) -> np.ndarray:
        array = np.asarray(array, dtype=np.float32)
        if array.shape != tuple(expected):
            hint = " the geometry does not match the stored sinogram" if what == "sinogram" else ""
            raise DataFileError(f"{where}: {what} of shape {array.shape}, expected {tuple(expected)};{hint}".rstrip(";"))
        if not np.isfinite(array).all():
            raise DataFileError(f"{where}: {what} has {int(array.size - np.isfinite(array).sum())} NaN or inf values")
        return array

    def _measurement(self, index: int) -> np.ndarray:
        item = self.items[index]
        if item[0] == "npz":
            sinogram, where = read_image(item[1], self.keys[0]), str(item[1])
        elif item[0] == "hdf5":
            sinogram, where = self._files[item[1]][self.keys[0]][item[2]], f"{item[1]} [{self.keys[0]} {item[2]}]"
        else:
            sinogram, where = read_sinogram(item[1], self.keys[0], **self.raw_scan), str(item[1])
        return self._checked(sinogram, self.geometry.sinogram_shape, "sinogram", where)

    def ground_truth(self, index: int) -> np.ndarray:
        """The reference reconstruction of pair ``index``, float32 ``(H, W)``."""
        item = self.items[index]
        if item[0] == "hdf5":
            reference, where = self._files[item[1]][self.keys[1]][item[2]], f"{item[1]} [{self.keys[1]} {item[2]}]"
        else:
            path = item[1] if item[0] == "npz" else item[2]
            reference, where = read_image(path, self.keys[1]), str(path)
        return self._checked(reference, self.geometry.image_shape, "reference", where)

    def check_sample(self, index: int) -> np.ndarray:
        """Read pair ``index`` (``DataFileError`` on a bad file); its reference."""
        self._measurement(index)
        return self.ground_truth(index)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a split of {len(self)} pairs")
        return {"ground_truth": torch.from_numpy(self.ground_truth(index))[None],
                "measurement": torch.from_numpy(self._measurement(index))[None], "index": index}


class MeasuredPairsDataModule(FileSplitsDataModule):
    """Training and testing on measured sinograms with reference reconstructions.

    Args:
        path: the pairs (see the module docstring: ``.npz`` files, one HDF5 file with two stacks, or
            a ``.csv`` manifest), or a list of such sources.
        val_path, test_path: listed validation / test pairs (the same forms); otherwise
            ``val_fraction`` / ``test_fraction`` of the pairs, drawn with ``split_seed``.
        geometry: the geometry of the stored sinograms as a dict of numbers (``type: FanBeam2D`` for
            fan beam; ``detector_offset`` for a shifted rotation centre); default: parallel beam over
            ``image_size``² with ``num_angles`` angles over [0, π) and ``num_detector_pixels``.
        measurement_key, reference_key: names of the arrays / datasets.
        slice_index, binning, center_offset, min_transmission: raw Data Exchange scans of a manifest.
        data_range: ``"dataset"`` (training references' max − min, default), ``"per-image"`` or a number.
        check_files: read every pair once at start (bad files end the run before it begins).
        fbp_filter, fbp_frequency_scaling: the FBP the method computes on its device (linked by the CLI).
        batch_size, num_workers: loader settings.
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
        geometry: Optional[Dict[str, Any]] = None,
        image_size: Optional[int] = None,
        num_angles: Optional[int] = None,
        num_detector_pixels: Optional[int] = None,
        measurement_key: str = "sinogram",
        reference_key: str = "reference",
        slice_index: int = 0,
        binning: int = 1,
        center_offset: Optional[float] = None,
        min_transmission: float = 1e-4,
        data_range: Union[float, str, None] = "dataset",
        check_files: bool = True,
        fbp_filter: str = DEFAULT_FBP_FILTER,
        fbp_frequency_scaling: float = DEFAULT_FBP_FREQUENCY_SCALING,
        batch_size: int = 8,
        num_workers: int = 0,
        train_ground_truth: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.train_ground_truth = check_train_ground_truth(train_ground_truth)
        self.batch_size, self.num_workers = check_loader_settings(batch_size, num_workers)
        self.data_range = parse_data_range(data_range)
        if self.data_range == "dataset" and not check_files:
            raise ValueError("data_range 'dataset' reads every training reference: set check_files true or give a number")
        if geometry is None:
            if image_size is None or num_angles is None:
                raise ValueError("give the geometry of the stored sinograms: geometry (a dict of numbers) or "
                                 "image_size and num_angles (parallel beam over [0, π))")
            geometry = ParallelBeam2D((image_size, image_size), num_angles=num_angles,
                                      num_detector_pixels=num_detector_pixels).to_dict()
        self.geometry = geometry_from_dict(geometry)
        if not isinstance(self.geometry, Geometry2D):
            raise ValueError("MeasuredPairsDataModule needs a 2D geometry (ParallelBeam2D or FanBeam2D)")
        keys = (measurement_key, reference_key)
        items = pair_items(path, keys)
        if not items:
            raise DataFileError(f"{path}: no measurement/reference pairs")
        self.splits = split_files(items, val_fraction, test_fraction, split_seed,
                                  pair_items(val_path, keys) if val_path is not None else None,
                                  pair_items(test_path, keys) if test_path is not None else None, what="pairs")
        self._dataset_kwargs = dict(measurement_key=measurement_key, reference_key=reference_key,
                                    slice_index=slice_index, binning=binning, center_offset=center_offset,
                                    min_transmission=min_transmission)
        self.datasets: Dict[str, MeasuredPairsDataset] = {}
        if check_files:
            self.check_files()
        self.record_resolved()

    samples_name = "pairs"

    def make_dataset(self, split: str) -> MeasuredPairsDataset:
        return MeasuredPairsDataset(self.splits[split], self.geometry, **self._dataset_kwargs)
