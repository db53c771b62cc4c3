"""The slices of one raw scan as a data set: train on the scan's own measurements without any
reference (``loss: noise2inverse`` or ``equivariant``), then reconstruct every slice.

    python train.py fit --config configs/experiment/scan_noise2inverse_cpu.yaml --data.path scan.h5
    python train.py predict --config configs/experiment/scan_noise2inverse_cpu.yaml --data.path scan.h5 \\
        --ckpt_path <out>/checkpoints/last.ckpt      # one .npy / .png per slice, named slice_0000, ...

Each detector row of a Data Exchange scan (``exchange/data``, ``data_white``, ``data_dark``,
``theta``) is one sample, read as ``finetune.py`` reads it (flat/dark correction, clipping,
``−log``, angle choice, binning), with one rotation-axis offset for the whole scan (``"auto"``:
estimated on the middle row). The image grid has one pixel per (binned) detector pixel. Values are
attenuation per pixel times ``intensity_scale`` (``"auto"``: the factor that brings the 99th
percentile of the rows' Hann FBPs to 1: networks initialised for images of order 1 learn badly on a
scan's 0.01–0.05, docs/results.md); ``train.py predict`` writes reconstructions divided by it
again, in attenuation per pixel. Splits: ``train`` every chosen row, never with a ground truth;
``val`` ``val_slices`` rows spread evenly; ``test`` and ``predict`` every chosen row in order.
Where the file holds ``exchange/ground_truth`` (the synthetic scans of ``data.synthetic_scan``),
validation and test samples carry it, for metrics only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset

from ..physics.fbp import DEFAULT_FBP_FILTER, DEFAULT_FBP_FREQUENCY_SCALING, FBP
from .datamodule import SplitDataModule, check_loader_settings, parse_data_range
from .files import DataFileError
from .real import load_data_exchange, scan_rows
from .synthetic_scan import GROUND_TRUTH_KEY

__all__ = ["ScanSlicesDataModule", "ScanSlicesDataset"]


def _chosen_rows(slices: Union[str, Sequence[int]], rows: int, path: Path) -> List[int]:
    if slices == "all":
        return list(range(rows))
    if isinstance(slices, str) or not len(slices) or any(isinstance(k, bool) or not isinstance(k, int)
                                                         for k in slices):
        raise ValueError(f"slices must be 'all' or a list of row indices, got {slices!r}")
    outside = [k for k in slices if not 0 <= k < rows]
    if outside:
        raise DataFileError(f"{path}: rows {outside} outside the scan's {rows} detector rows")
    return sorted(set(slices))


class ScanSlicesDataset(Dataset):
    """Samples ``measurement (1, A, D)``, ``fbp (1, H, W)``, ``index`` (the detector row) and, with
    ``ground_truth`` given, ``ground_truth (1, H, W)``; all held in memory."""

    def __init__(self, rows: List[int], measurements: torch.Tensor, fbps: torch.Tensor,
                 ground_truth: Optional[torch.Tensor] = None):
        self.rows, self.measurements, self.fbps, self.ground_truth = rows, measurements, fbps, ground_truth

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, position: int) -> Dict[str, Any]:
        sample = {"measurement": self.measurements[position], "fbp": self.fbps[position],
                  "index": self.rows[position]}
        if self.ground_truth is not None:
            sample["ground_truth"] = self.ground_truth[position]
        return sample


class ScanSlicesDataModule(SplitDataModule):
    """The rows of one raw scan as training, validation and test samples (module docstring).

    Args:
        path: the Data Exchange ``.h5`` scan.
        slices: ``"all"`` or a list of detector rows.
        val_slices: validation rows, evenly spread over the chosen ones (the training split keeps them:
            no row is held out, a scan has no other data).
        angle_step, num_angles, binning, min_transmission: how a row becomes a sinogram
            (``data.real.load_data_exchange``).
        center_offset: rotation-axis offset in (binned) detector pixels, one for every row;
            ``"auto"`` estimates it on the middle chosen row; ``None``: the detector centre.
        intensity_scale: factor applied to every sinogram (and ground truth): ``"auto"`` (module
            docstring) or a positive number (1: attenuation per pixel as measured).
        fbp_filter, fbp_frequency_scaling: the FBP delivered with each sample.
        data_range: PSNR/SSIM range of the metrics where a ground truth exists: ``"per-image"``
            (default: attenuation units differ from scan to scan) or a number in attenuation per
            pixel (scaled with the data).
        batch_size, num_workers: loader settings.
    """

    train_ground_truth = False  # a scan's rows train from their measurements alone

    def __init__(self, path: str, slices: Union[str, List[int]] = "all", val_slices: int = 4, angle_step: int = 1,
                 num_angles: Optional[int] = None, binning: int = 1, center_offset: Union[float, str, None] = "auto",
                 min_transmission: float = 1e-4, intensity_scale: Union[float, str] = "auto",
                 fbp_filter: str = DEFAULT_FBP_FILTER,
                 fbp_frequency_scaling: float = DEFAULT_FBP_FREQUENCY_SCALING,
                 data_range: Union[float, str, None] = "per-image", batch_size: int = 8, num_workers: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.batch_size, self.num_workers = check_loader_settings(batch_size, num_workers)
        data_range = parse_data_range(data_range, allow_dataset=False)
        path = Path(path)
        if not path.is_file():
            raise DataFileError(f"{path}: no such file")
        try:
            rows = scan_rows(path)
        except ValueError as error:  # its message names the file
            raise DataFileError(str(error).splitlines()[0]) from None
        self.rows = _chosen_rows(slices, rows, path)
        if isinstance(val_slices, bool) or not isinstance(val_slices, int) or not 1 <= val_slices <= len(self.rows):
            raise ValueError(f"val_slices must be between 1 and the {len(self.rows)} chosen rows, got {val_slices!r}")
        read = dict(angle_step=angle_step, binning=binning, min_transmission=min_transmission, num_angles=num_angles)
        try:
            if center_offset == "auto":
                middle = load_data_exchange(path, self.rows[len(self.rows) // 2], center_offset="auto", **read)
                center_offset = -middle.geometry.detector_offset
            sinograms = [load_data_exchange(path, row, center_offset=center_offset, **read) for row in self.rows]
        except ValueError as error:
            raise DataFileError(f"{path}: {str(error).splitlines()[0]}") from None
        self.center_offset = float(center_offset or 0.0)
        self.geometry = sinograms[0].geometry
        measurements = torch.from_numpy(np.stack([s.data for s in sinograms]))[:, None]
        self.intensity_scale = self._intensity_scale(intensity_scale, measurements)
        self.measurements = measurements * self.intensity_scale
        with torch.no_grad():
            fbp = FBP(self.geometry, fbp_filter, fbp_frequency_scaling)
            self.fbps = torch.cat([fbp(chunk) for chunk in self.measurements.split(64)])
        self.data_range = None if data_range is None else data_range * self.intensity_scale
        self.ground_truth = self._read_ground_truth(path)
        if self.ground_truth is not None:
            self.ground_truth = self.ground_truth * self.intensity_scale
        spread = np.linspace(0, len(self.rows) - 1, val_slices).round().astype(int)
        self.val_positions = sorted(set(int(p) for p in spread))
        truth = ("ground truth for validation and test metrics only" if self.ground_truth is not None
                 else "no ground truth (metrics: none)")
        rank_zero_info(f"scan {path.name}: {len(self.rows)} rows of {self.geometry.sinogram_shape[0]} angles × "
                       f"{self.geometry.sinogram_shape[1]} detector pixels, rotation axis {self.center_offset:+.2f} "
                       f"pixels, values × {self.intensity_scale:.4g}; {truth}")

    def _intensity_scale(self, setting: Union[float, str], measurements: torch.Tensor) -> float:
        if setting == "auto":
            some = measurements[np.unique(np.linspace(0, len(measurements) - 1, 64).round().astype(int))]
            with torch.no_grad():
                values = FBP(self.geometry, "Hann", 1.0)(some).flatten()
            level = float(values[::values.numel() // 2 ** 24 + 1].quantile(0.99))  # quantile takes ≤ 2²⁴ values
            if not level > 0:
                raise DataFileError(f"{self.hparams.path}: the rows' FBPs have no positive values to scale by; set "
                                    f"intensity_scale to a number")
            return 1.0 / level
        if isinstance(setting, bool) or not isinstance(setting, (int, float)) or not 0 < setting < float("inf"):
            raise ValueError(f"intensity_scale must be 'auto' or a positive number, got {setting!r}")
        return float(setting)

    def _read_ground_truth(self, path: Path) -> Optional[torch.Tensor]:
        import h5py

        with h5py.File(path, "r") as f:
            if GROUND_TRUTH_KEY not in f:
                return None
            volume = f[GROUND_TRUTH_KEY]
            if volume.ndim != 3 or tuple(volume.shape[1:]) != tuple(self.geometry.image_shape):
                rank_zero_info(f"{path}: {GROUND_TRUTH_KEY} {tuple(volume.shape)} does not fit the "
                               f"{tuple(self.geometry.image_shape)} grid (binning?); metrics: none")
                return None
            return torch.from_numpy(np.asarray(volume[self.rows], dtype=np.float32))[:, None]

    def dataset(self, split: str) -> Dataset:
        if split == "train":
            return ScanSlicesDataset(self.rows, self.measurements, self.fbps)
        positions = self.val_positions if split == "val" else list(range(len(self.rows)))
        truth = None if self.ground_truth is None else self.ground_truth[positions]
        return ScanSlicesDataset([self.rows[p] for p in positions], self.measurements[positions],
                                 self.fbps[positions], truth)

    def setup(self, stage: Optional[str] = None) -> None:
        if stage == "test" and self.ground_truth is None:
            raise DataFileError(f"{self.hparams.path}: no {GROUND_TRUTH_KEY} to test against; `train.py predict` "
                                f"writes the reconstructions")
        super().setup(stage)

    def sample_name(self, index: int) -> str:
        """Outputs are named after the detector row ``index``: ``slice_0007``."""
        return f"slice_{index:04d}"
