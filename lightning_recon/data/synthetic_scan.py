"""A synthetic multi-slice raw scan in the Data Exchange layout, with its ground truth.

``write_synthetic_scan(path, slices=64, size=64, angles=180, seed=0)`` makes a 3D phantom (an
elliptic cylinder of "body" holding a few random ellipsoids, values in [0, 1], seeded), projects
it in parallel beam row by row (detector row ``k`` is the 2D projection of axial slice ``k``),
turns the line integrals into detector counts (Poisson photon noise and Gaussian read-out noise
on a dark offset), adds flat (bright) and dark frames and writes what
:func:`~lightning_recon.data.real.load_data_exchange` reads:

- ``exchange/data`` ``(angles, slices, size)``, ``exchange/data_white`` and ``exchange/data_dark``
  ``(frames, slices, size)``, all uint16 counts;
- ``exchange/theta`` ``(angles,)``: 0°, 180°/angles, …, in degrees, over one half turn;
- ``exchange/ground_truth`` ``(slices, size, size)`` float32: the attenuation per detector pixel
  that ``load_data_exchange(path, k, center_offset=0)`` followed by FBP reconstructs, slice ``k``
  in the same orientation (ODL axes: axis 0 along x). Attribute ``attenuation``: the line
  integral through the whole field of view at phantom value 1 (the ground truth is
  ``phantom · attenuation / size``).

The rotation axis sits at the detector centre (``--center-offset 0``; ``auto`` estimates about
0). The projection uses the same discrete ray transform as the reconstruction (an "inverse
crime": fine for comparing methods on one footing, optimistic in absolute terms).

    python -m lightning_recon.data.synthetic_scan out.h5 --slices 64 --size 64 --angles 180 --seed 0
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np

from .real import _geometry_for

__all__ = ["ellipsoid_phantom", "write_synthetic_scan", "read_ground_truth"]

GROUND_TRUTH_KEY = "exchange/ground_truth"


def ellipsoid_phantom(slices: int, size: int, seed: int = 0, ellipsoids: int = 12) -> np.ndarray:
    """A seeded 3D phantom ``(slices, size, size)`` (float32, values in [0, 1]).

    Cubic voxels; coordinates in units of the field-of-view radius (``size / 2`` voxels). An
    elliptic cylinder along the slice axis (value 0.5) holds ``ellipsoids`` randomly placed and
    sized ellipsoids, elongated along the slice axis, turned about it and tilted by up to 0.3 rad
    (values added, U(−0.3, 0.5)); the sum is clipped to [0, 1].
    Everything lies inside the cylinder inscribed in the field of view, so no detector row is
    truncated.
    """
    if slices < 1 or size < 2:
        raise ValueError(f"need slices >= 1 and size >= 2, got slices={slices}, size={size}")
    if ellipsoids < 0:
        raise ValueError(f"ellipsoids must be >= 0, got {ellipsoids}")
    rng = np.random.default_rng(seed)
    half = size / 2
    x = (np.arange(size) - (size - 1) / 2) / half
    z = (np.arange(slices) - (slices - 1) / 2) / half
    zz, xx, yy = np.meshgrid(z, x, x, indexing="ij")
    body_a, body_b = rng.uniform(0.75, 0.9, 2)
    body_angle = rng.uniform(0, np.pi)
    c, s = np.cos(body_angle), np.sin(body_angle)
    u, v = c * xx + s * yy, -s * xx + c * yy
    volume = 0.5 * ((u / body_a) ** 2 + (v / body_b) ** 2 <= 1.0)
    z_half = max(float(np.abs(z).max()), 0.05)
    for _ in range(ellipsoids):
        axes = np.array([rng.uniform(0.15, 0.6), *rng.uniform(0.08, 0.35, 2)])  # (z, x, y) half-axes
        tilt, turn = rng.uniform(-0.3, 0.3), rng.uniform(0, np.pi)
        radius = rng.uniform(0.0, 0.9 - axes[1:].max() - abs(np.sin(tilt)) * axes[0])
        phi = rng.uniform(0, 2 * np.pi)
        centre = np.array([rng.uniform(-z_half, z_half), radius * np.cos(phi), radius * np.sin(phi)])
        tilt_x = np.array([[np.cos(tilt), np.sin(tilt), 0], [-np.sin(tilt), np.cos(tilt), 0], [0, 0, 1]])
        turn_z = np.array([[1, 0, 0], [0, np.cos(turn), -np.sin(turn)], [0, np.sin(turn), np.cos(turn)]])
        value = rng.uniform(-0.3, 0.5)
        points = np.stack([zz - centre[0], xx - centre[1], yy - centre[2]], axis=-1) @ (turn_z @ tilt_x)
        volume = volume + value * (((points / axes) ** 2).sum(-1) <= 1.0)
    return np.clip(volume, 0.0, 1.0).astype(np.float32)


def _project(volume: np.ndarray, angles_rad: np.ndarray, backend: str = "auto") -> np.ndarray:
    """Line integrals ``(slices, angles, size)`` of every slice (one batch through the ray transform)."""
    import torch

    from ..physics import RayTransform

    geometry = _geometry_for(volume.shape[-1], angles_rad, 0.0)
    with torch.no_grad():
        sinograms = RayTransform(geometry, backend=backend)(torch.from_numpy(volume)[:, None])
    return sinograms[:, 0].double().numpy()


def write_synthetic_scan(
    path: Union[str, Path],
    slices: int = 64,
    size: int = 64,
    angles: int = 180,
    seed: int = 0,
    photons: float = 1e4,
    attenuation: float = 2.0,
    dark_level: float = 100.0,
    read_noise: float = 2.0,
    flat_frames: int = 4,
    dark_frames: int = 4,
    ellipsoids: int = 12,
    backend: str = "auto",
) -> np.ndarray:
    """Write a synthetic Data Exchange scan (see the module docstring); returns the ground truth
    ``(slices, size, size)`` in attenuation per detector pixel, as stored in ``exchange/ground_truth``.

    Args:
        angles: projections over one half turn, at 0°, 180°/angles, … (the mirror 180° left out).
        photons: mean flat-field counts per detector pixel (above the dark level).
        attenuation: line integral through the whole field of view (``size`` pixels) at phantom
            value 1; 2.0 leaves ≥ e⁻² ≈ 14 % transmission through the densest path.
        dark_level, read_noise: dark offset and Gaussian read-out noise (counts).
    """
    import h5py

    if angles < 2:
        raise ValueError(f"angles must be >= 2, got {angles}")
    for name, value in (("photons", photons), ("attenuation", attenuation)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    if photons + dark_level + 6 * np.sqrt(photons) + 6 * read_noise > np.iinfo(np.uint16).max:
        raise ValueError(f"photons {photons:g} + dark level {dark_level:g} overflow uint16 counts")
    if flat_frames < 1 or dark_frames < 1:
        raise ValueError("need at least one flat and one dark frame")
    phantom = ellipsoid_phantom(slices, size, seed, ellipsoids)
    truth = (phantom * (attenuation / size)).astype(np.float32)  # per pixel: the line integral is in pixels
    theta = np.arange(angles) * (180.0 / angles)
    lines = _project(truth, np.deg2rad(theta), backend)  # (slices, angles, size)
    rng = np.random.default_rng([seed, 1])  # the noise stream, separate from the phantom's

    def counts(mean: np.ndarray) -> np.ndarray:
        noisy = rng.poisson(mean) + dark_level + rng.normal(0.0, read_noise, mean.shape)
        return np.clip(np.rint(noisy), 0, np.iinfo(np.uint16).max).astype(np.uint16)

    data = counts(photons * np.exp(-lines.transpose(1, 0, 2)))  # (angles, slices, size)
    white = counts(np.full((flat_frames, slices, size), float(photons)))
    dark = counts(np.zeros((dark_frames, slices, size)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("exchange/data", data=data, chunks=(angles, 1, size))  # one detector row per chunk
        f["exchange/data_white"] = white
        f["exchange/data_dark"] = dark
        f["exchange/theta"] = theta
        f["exchange/theta"].attrs["units"] = "degrees"
        f[GROUND_TRUTH_KEY] = truth
        f[GROUND_TRUTH_KEY].attrs.update(attenuation=float(attenuation), seed=int(seed), photons=float(photons),
                                         description="attenuation per detector pixel, (slices, x, y)")
    return truth


def read_ground_truth(path: Union[str, Path], slice_index: Optional[int] = None) -> np.ndarray:
    """``exchange/ground_truth`` of a synthetic scan: the volume, or one slice ``(size, size)``."""
    import h5py

    with h5py.File(path, "r") as f:
        if GROUND_TRUTH_KEY not in f:
            raise ValueError(f"{path} has no {GROUND_TRUTH_KEY} (not a synthetic scan)")
        dataset = f[GROUND_TRUTH_KEY]
        return np.asarray(dataset[()] if slice_index is None else dataset[slice_index], dtype=np.float32)


def main(args: Optional[List[str]] = None) -> Tuple[Path, Tuple[int, ...]]:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_recon.data.synthetic_scan",
        description="Write a synthetic multi-slice Data Exchange scan with its ground truth.")
    parser.add_argument("out", help="the .h5 file to write")
    parser.add_argument("--slices", type=int, default=64, help="detector rows (axial slices)")
    parser.add_argument("--size", type=int, default=64, help="detector columns = slice width and height")
    parser.add_argument("--angles", type=int, default=180, help="projections over [0°, 180°)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--photons", type=float, default=1e4, help="flat-field counts per pixel")
    parser.add_argument("--attenuation", type=float, default=2.0,
                        help="line integral across the field of view at phantom value 1")
    parser.add_argument("--ellipsoids", type=int, default=12)
    opts = parser.parse_args(args)
    if opts.slices < 1 or opts.size < 2:
        parser.error(f"need --slices >= 1 and --size >= 2, got {opts.slices} and {opts.size}")
    try:
        truth = write_synthetic_scan(opts.out, opts.slices, opts.size, opts.angles, opts.seed, opts.photons,
                                     opts.attenuation, ellipsoids=opts.ellipsoids)
    except ValueError as error:
        parser.error(str(error))
    print(f"{opts.out}: {opts.angles} projections of {opts.slices} x {opts.size} pixels; "
          f"ground truth {truth.shape} in exchange/ground_truth")
    return Path(opts.out), truth.shape


if __name__ == "__main__":
    main()
