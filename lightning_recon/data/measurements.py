"""Measurements alone, for ``train.py predict``: a trained model applied to your sinograms.

    python train.py predict --ckpt_path <run>/checkpoints/last.ckpt \\
        --data lightning_recon.data.MeasurementsDataModule --data.path 'scans/*.npy'

Each file is one measurement: a ``.npy`` sinogram ``(A, D)``, a ``.npz`` holding one under
``key`` (default ``sinogram``), or an HDF5 file: a raw Data Exchange scan (flat/dark corrected,
``−log``, one detector row, binning and centre offset, exactly as ``finetune.py`` reads it) or a
dataset ``key``. The geometry is the checkpoint's unless given; every file's sinogram shape is
checked against it when the data module starts, before any work.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from ..physics.geometry import Geometry2D, geometry_from_dict
from .datamodule import SplitDataModule, check_loader_settings
from .files import DataFileError, find_files, read_image
from .real import load_data_exchange

__all__ = ["MEASUREMENT_SUFFIXES", "MeasurementFilesDataset", "MeasurementsDataModule", "is_data_exchange", "read_sinogram"]

MEASUREMENT_SUFFIXES = (".npy", ".npz", ".h5", ".hdf5")


def is_data_exchange(path: Path) -> bool:
    """Whether ``path`` is an HDF5 raw scan in the Data Exchange layout (``exchange/data``)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return "exchange/data" in f
    except Exception:
        raise DataFileError(f"{path}: unreadable HDF5 file; it may be truncated") from None


def read_sinogram(path: Path, key: Optional[str] = "sinogram", **raw_scan: Any) -> np.ndarray:
    """The float32 sinogram ``(A, D)`` of one file: a ``.npy``, the array ``key`` of a ``.npz`` or
    HDF5 file, or a raw Data Exchange scan read with ``raw_scan`` (``data.real.load_data_exchange``'s
    settings). ``DataFileError`` (one line) on a bad file."""
    path = Path(path)
    if path.suffix.lower() in (".h5", ".hdf5") and is_data_exchange(path):
        try:
            return load_data_exchange(path, **raw_scan).data
        except (ValueError, KeyError, OSError) as error:
            raise DataFileError(f"{path}: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
                                ) from None
    return read_image(path, key if path.suffix.lower() != ".npy" else None)


class MeasurementFilesDataset(Dataset):
    """One measurement per file, checked against ``geometry``; items ``measurement (1, A, D)`` and ``index``.

    Args:
        files: the measurement files.
        geometry: the geometry the sinograms must fit.
        key: the array / dataset name in ``.npz`` and (not Data Exchange) HDF5 files.
        slice_index, binning, center_offset, min_transmission: how a raw Data Exchange scan becomes a
            sinogram (``data.real.load_data_exchange``).
    """

    def __init__(self, files: List[Path], geometry: Union[Geometry2D, dict], key: str = "sinogram",
                 slice_index: int = 0, binning: int = 1, center_offset: Optional[float] = None,
                 min_transmission: float = 1e-4):
        self.files = list(files)
        self.geometry = geometry_from_dict(geometry)
        self.key = key
        self.raw_scan = dict(slice_index=slice_index, binning=binning, center_offset=center_offset,
                             min_transmission=min_transmission)

    def __len__(self) -> int:
        return len(self.files)

    def sinogram(self, index: int) -> np.ndarray:
        """The float32 sinogram ``(A, D)`` of file ``index`` (``DataFileError`` on a bad file or shape)."""
        path = self.files[index]
        sinogram = read_sinogram(path, self.key, **self.raw_scan)
        expected = tuple(self.geometry.sinogram_shape)
        if tuple(sinogram.shape) != expected:
            raise DataFileError(f"{path}: sinogram of shape {tuple(sinogram.shape)}, the model's geometry expects "
                                f"{expected} (angles, detector pixels)")
        return np.asarray(sinogram, dtype=np.float32)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return {"measurement": torch.from_numpy(self.sinogram(index))[None], "index": index}


class MeasurementsDataModule(SplitDataModule):
    """Your measurements for ``train.py predict`` (no ground truth: no fit, validate or test).

    Args:
        path: a folder, glob, file or list of ``.npy`` / ``.npz`` / ``.h5`` measurement files.
        geometry: their geometry as a dict of numbers; ``None``: the checkpoint's (``train.py
            predict --ckpt_path`` fills it in), so the files must have the shape it was trained on.
        key, slice_index, binning, center_offset, min_transmission: see :class:`MeasurementFilesDataset`.
        batch_size, num_workers: loader settings.

    Reconstructions are written by the ``ReconstructionWriter`` callback, one set of files per
    input named after it (``sample_name``). No ground truth, so no data range (``None``): previews
    span each reconstruction's own range unless ``--writer.window_max`` sets one.
    """

    data_range = None

    def __init__(self, path: Union[str, List[str]], geometry: Optional[Dict[str, Any]] = None, key: str = "sinogram",
                 slice_index: int = 0, binning: int = 1, center_offset: Optional[float] = None,
                 min_transmission: float = 1e-4, batch_size: int = 1, num_workers: int = 0):
        super().__init__()
        if geometry is None:
            raise ValueError("MeasurementsDataModule needs the measurements' geometry: give --ckpt_path (the "
                             "checkpoint's geometry is used) or data.geometry")
        self.save_hyperparameters()
        self.batch_size, self.num_workers = check_loader_settings(batch_size, num_workers)
        self.geometry = geometry_from_dict(geometry)
        self.files = find_files(path, suffixes=MEASUREMENT_SUFFIXES)
        self.measurements = MeasurementFilesDataset(self.files, self.geometry, key, slice_index, binning,
                                                    center_offset, min_transmission)
        for index in range(len(self.measurements)):  # every file read once: a bad one stops the run here
            self.measurements.sinogram(index)
        self.save_hyperparameters(dict(self.hparams, geometry=self.geometry.to_dict()))
        rank_zero_info(f"measurements: {len(self.files)} files of {self.geometry.sinogram_shape[0]} angles × "
                       f"{self.geometry.sinogram_shape[1]} detector pixels")

    def dataset(self, split: str) -> Dataset:
        if split != "test":
            raise DataFileError(f"{self.hparams.path}: measurements without ground truth serve `train.py predict` "
                                f"only, not the {split} split")
        return self.measurements

    def sample_name(self, index: int) -> str:
        """The file stem of input ``index`` (outputs are named after it)."""
        return self.files[index].stem

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")
