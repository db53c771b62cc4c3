"""Real measurements: HDF5 "Data Exchange" raw scans and ``.npz``/``.npy`` sinograms.

``load_data_exchange`` does what a user expects before reconstruction: flat/dark correction
``(data − dark) / (white − dark)``, clipping, ``−log``, slice choice, angle subsampling, detector
binning and a centre-of-rotation offset (given, or estimated with ``estimate_center_offset``).
The result carries a :class:`~lightning_recon.physics.ParallelBeam2D` in detector-pixel units.
"""
from __future__ import annotations

import warnings

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..physics.geometry import ParallelBeam2D

__all__ = ["Sinogram", "load_data_exchange", "load_sinogram", "estimate_center_offset", "scan_rows"]

REQUIRED_KEYS = ("exchange/data", "exchange/data_white", "exchange/data_dark", "exchange/theta")


@dataclass
class Sinogram:
    """A post-log sinogram ``(n_angles, n_det)`` (float32), its angles (radians) and geometry."""

    data: np.ndarray
    angles: np.ndarray
    geometry: ParallelBeam2D


def _finite(name: str, array: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains {int(np.size(array) - np.isfinite(array).sum())} NaN or inf values")
    return array


def _bin(array: np.ndarray, factor: int) -> np.ndarray:
    """Sum ``factor`` neighbouring detector pixels (last axis), dropping a remainder."""
    if factor == 1:
        return array
    n = array.shape[-1] // factor * factor
    return array[..., :n].reshape(*array.shape[:-1], n // factor, factor).mean(-1)


def estimate_center_offset(sinogram: np.ndarray, angles: np.ndarray, search: float = 20.0) -> float:
    """Centre-of-rotation offset (detector pixels, + = right of the detector centre).

    Parallel beam sees the same line integrals at θ and θ + π, mirrored about the rotation axis:
    the first projection is compared with the mirrored projection nearest to θ₀ + π (sub-pixel
    cross-correlation peak). Needs angles spanning about 180°.
    """
    sinogram = np.asarray(sinogram, dtype=np.float64)
    opposite = int(np.argmin(np.abs(angles - (angles[0] + np.pi))))
    tolerance = max(np.deg2rad(1.0), 1.5 * float(np.median(np.diff(angles))) if angles.size > 1 else 0.0)
    if abs(angles[opposite] - angles[0] - np.pi) > tolerance:
        raise ValueError("centre estimation needs a projection within 1.5 angular steps of the first one + 180°")
    a, b = sinogram[0] - sinogram[0].mean(), sinogram[opposite][::-1] - sinogram[opposite].mean()
    n = a.size
    correlation = np.fft.irfft(np.fft.rfft(a, 2 * n) * np.conj(np.fft.rfft(b, 2 * n)), 2 * n)
    shifts = np.concatenate([np.arange(0, n), np.arange(-n, 0)])
    allowed = np.abs(shifts) <= 2 * search
    k = int(np.argmax(np.where(allowed, correlation, -np.inf)))
    left, right = correlation[k - 1], correlation[(k + 1) % (2 * n)]
    denominator = left - 2 * correlation[k] + right
    sub = 0.5 * (left - right) / denominator if denominator != 0 else 0.0
    # a(s) = b(s − shift) with b the mirror: the axis sits at (n − 1)/2 + shift/2
    return float((shifts[k] + sub) / 2)


def evenly_spaced_half_turn(angles: np.ndarray, num_angles: int) -> np.ndarray:
    """Indices of ``num_angles`` of the increasing ``angles`` (radians), evenly spread over the
    first half turn; an angle at or beyond ``angles[0] + π`` (a mirror image) is not used."""
    half_turn = np.flatnonzero(angles < angles[0] + np.pi - 1e-6)
    if not 1 <= num_angles <= half_turn.size:
        raise ValueError(f"num_angles must be between 1 and {half_turn.size} (the angles within a half turn), "
                         f"got {num_angles}")
    return half_turn[np.round(np.arange(num_angles) * half_turn.size / num_angles).astype(int)]


def load_data_exchange(
    path: Union[str, Path],
    slice_index: int = 0,
    angle_step: int = 1,
    binning: int = 1,
    center_offset: Union[float, str, None] = "auto",
    min_transmission: float = 1e-4,
    num_angles: Optional[int] = None,
) -> Sinogram:
    """Read a Data Exchange HDF5 scan (``exchange/data``, ``data_white``, ``data_dark``, ``theta``).

    Args:
        slice_index: detector row to reconstruct.
        angle_step: keep every ``angle_step``-th projection (sparse view).
        binning: average this many neighbouring detector pixels.
        center_offset: rotation-axis offset in (binned) detector pixels; ``"auto"`` estimates it
            from all angles, ``None`` assumes the detector centre.
        min_transmission: transmissions are clipped to ``[min_transmission, 1]`` before ``−log``.
        num_angles: keep this many projections evenly spread over one half turn (after
            ``angle_step``); a projection 180° after the first (0° and 180° are mirror images)
            is dropped first, so 30 of 181 angles over [0°, 180°] are 0°, 6°, …, 174°.
    """
    import h5py

    if angle_step < 1:
        raise ValueError(f"angle_step must be >= 1, got {angle_step}")
    if binning < 1:
        raise ValueError(f"binning must be >= 1, got {binning}")
    path = Path(path)
    if not path.exists():
        raise ValueError(f"no such file: {path}")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path} is not a readable HDF5 file: {error}") from None
    with handle as f:
        missing = [k for k in REQUIRED_KEYS if k not in f]
        if missing:
            raise ValueError(f"{path} is not a Data Exchange scan: missing {missing}")
        data, white, dark = (f[k] for k in REQUIRED_KEYS[:3])
        theta = np.asarray(f["exchange/theta"][:], dtype=np.float64)
        if data.ndim != 3 or white.ndim != 3 or dark.ndim != 3:
            raise ValueError(f"data, white and dark must be (frames, rows, columns), got {data.shape}, {white.shape}, {dark.shape}")
        if theta.shape != (data.shape[0],):
            raise ValueError(f"{theta.size} angles in exchange/theta for {data.shape[0]} projections")
        if binning > data.shape[2]:
            raise ValueError(f"binning {binning} exceeds the {data.shape[2]} detector columns")
        if not 0 <= slice_index < data.shape[1]:
            raise ValueError(f"slice_index {slice_index} outside the {data.shape[1]} detector rows")
        if white.shape[1:] != data.shape[1:] or dark.shape[1:] != data.shape[1:]:
            raise ValueError(f"flat/dark frames {white.shape[1:]}, {dark.shape[1:]} do not match projections {data.shape[1:]}")
        projections = _finite("exchange/data", np.asarray(data[:, slice_index, :], dtype=np.float64))
        flat = _finite("exchange/data_white", np.asarray(white[:, slice_index, :], dtype=np.float64)).mean(0)
        dark_mean = _finite("exchange/data_dark", np.asarray(dark[:, slice_index, :], dtype=np.float64)).mean(0)
    _finite("exchange/theta", theta)
    angles = angles_in_radians(theta, "auto", "exchange/theta", warn=False)  # Data Exchange stores degrees
    transmission = flat_field_correct(projections, flat, dark_mean, path.name)
    sinogram = -np.log(np.clip(transmission, min_transmission, 1.0))
    sinogram = _bin(sinogram, binning)
    if center_offset == "auto":
        center_offset = estimate_center_offset(sinogram, angles)
    offset = float(center_offset or 0.0)
    sinogram, angles = sinogram[::angle_step], angles[::angle_step]
    if num_angles is not None:
        keep = evenly_spaced_half_turn(angles, num_angles)
        sinogram, angles = sinogram[keep], angles[keep]
    return Sinogram(sinogram.astype(np.float32), angles, _geometry_for(sinogram.shape[1], angles, offset))


def scan_rows(path: Union[str, Path]) -> int:
    """Detector rows of a Data Exchange scan (a ``ValueError`` naming what is wrong with the file, from
    ``load_data_exchange``, if it is not one)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            data = f.get("exchange/data")
            rows = data.shape[1] if isinstance(data, h5py.Dataset) and data.ndim == 3 else None
    except OSError:
        rows = None
    if rows is None:
        load_data_exchange(path, 0)  # raises, naming the problem
        raise ValueError(f"{path} is not a Data Exchange scan")
    return int(rows)


# Transmission below which a projection pixel saw no beam (dark level, or dark plus read-out noise)
BEAM_OFF_TRANSMISSION = 0.01
BEAM_OFF_REFUSED, BEAM_OFF_WARNED = 0.5, 0.05  # fractions of the row's projection pixels


def flat_field_correct(projections: np.ndarray, flat: np.ndarray, dark: np.ndarray, name: str = "scan",
                       dead_fraction: float = 0.05) -> np.ndarray:
    """Transmission ``(projections − dark) / (flat − dark)`` of one detector row ``(angles, columns)``.

    Refuses what would only give garbage: flats not above the darks anywhere (all-zero flats, or
    flat = dark), projections without signal above the dark, and projections at the dark level
    (transmission below ``BEAM_OFF_TRANSMISSION``) over more than half of the row (beam off,
    shutter closed: dark plus noise); more than 5 % of such pixels give a warning. Dead flat pixels
    (flat − dark below ``dead_fraction`` of its median: they would zero or blow up their columns,
    ring artefacts) are repaired by linear interpolation from the neighbouring good columns, with a
    warning naming how many.
    """
    gain = flat - dark
    if not np.any(gain > 0):
        raise ValueError(f"{name}: the flat fields are not above the dark fields anywhere in this row "
                         f"(flat − dark max {gain.max():.3g}): all-zero flats, or flats equal to the darks?")
    if not np.any(projections > dark):
        raise ValueError(f"{name}: the projections have no signal above the dark field in this row "
                         f"(all-zero or all-dark projections)")
    dead = gain <= dead_fraction * np.median(gain[gain > 0])
    if dead.all() or dead.sum() > 0.5 * dead.size:
        raise ValueError(f"{name}: {int(dead.sum())} of {dead.size} flat-field pixels are dead (flat ≈ dark)")
    transmission = (projections - dark) / np.where(dead, 1.0, gain)
    dark_level = float(np.mean(transmission[:, ~dead] < BEAM_OFF_TRANSMISSION))
    seen = (f"{name}: {100 * dark_level:.0f} % of the projection pixels in this row are at the dark level "
            f"(transmission below {BEAM_OFF_TRANSMISSION:g})")
    if dark_level > BEAM_OFF_REFUSED:
        raise ValueError(f"{seen}: beam off or shutter closed (projections equal to the darks)?")
    if dark_level > BEAM_OFF_WARNED:
        warnings.warn(f"{seen}: their −log is noise (photon starvation)", stacklevel=3)
    if dead.any():
        columns = np.arange(gain.size)
        for row in transmission:
            row[dead] = np.interp(columns[dead], columns[~dead], row[~dead])
        warnings.warn(f"{name}: {int(dead.sum())} dead flat-field pixel(s) (columns {columns[dead][:8].tolist()}"
                      f"{'…' if dead.sum() > 8 else ''}) repaired by interpolation from their neighbours", stacklevel=3)
    return transmission


def _geometry_for(n_det: int, angles: np.ndarray, center_offset: float) -> ParallelBeam2D:
    """Image of ``n_det``² pixels of detector-pixel size; the detector shifted so that the rotation
    axis (at ``center_offset`` pixels from the detector centre) is the image centre."""
    return ParallelBeam2D(
        image_shape=(n_det, n_det), angles=tuple(float(a) for a in angles), angle_range=(0.0, float(np.pi)),
        num_detector_pixels=n_det, detector_extent=float(n_det), detector_offset=-center_offset,
    )


ANGLE_UNITS = ("auto", "radians", "degrees")


def angles_in_radians(angles: np.ndarray, unit: str = "auto", what: str = "angles", warn: bool = True) -> np.ndarray:
    """``angles`` converted to radians. ``unit="auto"`` reads values beyond 2π as degrees (and
    says so if ``warn``); a half-turn scan in degrees (0…180) can never pass for radians, but a
    scan of less than 6.3° in degrees could: declare ``unit`` for those."""
    if unit not in ANGLE_UNITS:
        raise ValueError(f"angle unit must be one of {ANGLE_UNITS}, got {unit!r}")
    if unit == "degrees":
        return np.deg2rad(angles)
    if unit == "auto" and angles.size and float(np.abs(angles).max()) > 2 * np.pi + 1e-6:
        if warn:
            warnings.warn(f"{what} exceed 2π: read as degrees (declare the unit to silence this)", stacklevel=3)
        return np.deg2rad(angles)
    return angles


def load_sinogram(path: Union[str, Path], center_offset: float = 0.0, angle_unit: str = "auto",
                  angle_step: int = 1) -> Sinogram:
    """A ``.npz`` with ``sinogram (A, D)`` and ``angles (A,)`` (``angle_unit``: radians, degrees or
    ``auto``, see ``angles_in_radians``), or a ``.npy`` sinogram over [0, π) at uniform angles;
    every ``angle_step``-th row kept."""
    if angle_step < 1:
        raise ValueError(f"angle_step must be >= 1, got {angle_step}")
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path) as f:
            if "sinogram" not in f:
                raise ValueError(f"{path} has no 'sinogram' array (found {sorted(f.files)})")
            if "angles" not in f:
                raise ValueError(f"{path} has no 'angles' array (found {sorted(f.files)}); save the angles of "
                                 "the sinogram rows, or save the sinogram alone as .npy for uniform angles over [0, π)")
            data = np.asarray(f["sinogram"], dtype=np.float32)
            angles = np.asarray(f["angles"], dtype=np.float64)
    elif path.suffix == ".npy":
        data, angles = np.asarray(np.load(path), dtype=np.float32), None
    else:
        raise ValueError(f"expected a .npz or .npy sinogram, got {path.name}")
    if data.ndim != 2:
        raise ValueError(f"a sinogram must be 2D (angles, detector pixels), got shape {data.shape}")
    if angles is None:
        angles = (np.arange(data.shape[0]) + 0.5) * np.pi / data.shape[0]
    if angles.shape != (data.shape[0],):
        raise ValueError(f"{angles.size} angles for {data.shape[0]} sinogram rows")
    _finite(f"{path.name} sinogram", data)
    _finite(f"{path.name} angles", angles)
    angles = angles_in_radians(angles, angle_unit, f"{path.name} angles")
    data, angles = data[::angle_step], angles[::angle_step]
    return Sinogram(data, angles, _geometry_for(data.shape[1], angles, center_offset))
