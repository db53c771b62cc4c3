"""Splits of a 2D CT scan's projection angles into K subsets, and the geometry of each subset.

Noise2Inverse (Hendriksen, Pelt & Batenburg, IEEE TCI 2020) reconstructs each of K disjoint subsets
of the measured angles on the full image grid: the sub-reconstructions see the same object with
independent noise. The subsets interleave, as in the paper: subset ``j`` holds the measured angles
``j, j + K, j + 2K, …``, so each one covers the whole angular range (every K-th angle of a uniform
scan is a uniform scan K times sparser).

A subset is described by plain numbers, like every geometry: :func:`sub_geometry` is the geometry
with the subset's ``angles`` given explicitly (``angle_step`` 1, the detector and image unchanged).
For an interleaved subset of a uniform scan its ``angle_range`` is widened by half the subset's
spacing on each side, so that every angle's quadrature weight (``Geometry2D.angle_weights``) is the
subset spacing, as in a uniform scan: the FBP of a subset is then an unbiased, equally weighted
estimate of the image, and the mean of the K subsets' FBPs is the full scan's FBP (K dividing the
angle count). Subsets of explicit ``angles`` keep the geometry's ``angle_range``.
"""
from __future__ import annotations

from typing import List, Sequence, Union

import numpy as np

from .geometry import Geometry2D
from .operator import spec_from_dict

__all__ = ["angle_splits", "check_angle_splits", "split_geometries", "sub_geometry"]


def angle_splits(num_angles: int, splits: int) -> List[np.ndarray]:
    """The interleaved partition of ``range(num_angles)`` into ``splits`` subsets: subset ``j`` is
    ``j, j + splits, …`` (sizes differ by at most one). ``ValueError`` (one line) for ``splits``
    below 2 or above ``num_angles``."""
    if isinstance(splits, bool) or not isinstance(splits, (int, np.integer)) or splits < 2:
        raise ValueError(f"the number of angle splits K must be an integer >= 2, got {splits!r}")
    if isinstance(num_angles, bool) or not isinstance(num_angles, (int, np.integer)) or num_angles < 1:
        raise ValueError(f"num_angles must be an integer >= 1, got {num_angles!r}")
    if splits > num_angles:
        raise ValueError(f"cannot split {num_angles} projection angles into K = {splits} subsets: "
                         f"K must be at most the number of angles")
    return [np.arange(j, num_angles, splits) for j in range(splits)]


def check_angle_splits(geometry: Union[Geometry2D, dict], splits: int) -> Geometry2D:
    """``geometry`` (object or dict of numbers) as a 2D CT geometry whose angles split into ``splits``
    subsets; ``ValueError`` (one line) for a forward model without projection angles (light field,
    sparse coding, 3D cone beam) or ``splits`` outside ``[2, num_angles]``."""
    spec = spec_from_dict(geometry) if isinstance(geometry, dict) else geometry
    if not isinstance(spec, Geometry2D):
        raise ValueError(f"noise2inverse splits the projection angles of a 2D CT geometry (ParallelBeam2D, "
                         f"FanBeam2D); {type(spec).__name__} has none to split")
    angle_splits(spec.num_angles, splits)
    return spec


def sub_geometry(geometry: Union[Geometry2D, dict], indices: Sequence[int]) -> Geometry2D:
    """The geometry measuring only the angles ``geometry.angle_array[indices]`` (sorted, distinct
    indices), on the same image grid and detector: explicit ``angles``, ``angle_step`` 1. For an
    evenly spaced selection of a uniform scan (``angles`` not given) the angle range is widened to
    half the selection's spacing around its first and last angle (equal quadrature weights; module
    docstring)."""
    geometry = spec_from_dict(geometry) if isinstance(geometry, dict) else geometry
    if not isinstance(geometry, Geometry2D):
        raise ValueError(f"a sub-geometry selects projection angles of a 2D CT geometry, got {type(geometry).__name__}")
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    n = geometry.num_angles
    if indices.size == 0 or indices.min() < 0 or indices.max() >= n or np.any(np.diff(indices) <= 0):
        raise ValueError(f"angle indices must be distinct, increasing and in [0, {n}), got {indices.tolist()}")
    angles = geometry.angle_array[indices]
    changes = dict(angles=tuple(float(a) for a in angles), angle_step=1)
    steps = np.diff(indices)
    if geometry.angles is None and (steps.size == 0 or np.all(steps == steps[0])):
        measured_spacing = (geometry.angle_range[1] - geometry.angle_range[0]) / n
        spacing = (int(steps[0]) if steps.size else n) * measured_spacing
        changes["angle_range"] = (float(angles[0]) - spacing / 2, float(angles[-1]) + spacing / 2)
    return geometry.replace(**changes)


def split_geometries(geometry: Union[Geometry2D, dict], splits: int) -> List[Geometry2D]:
    """The ``splits`` interleaved subsets' geometries (:func:`angle_splits`, :func:`sub_geometry`)."""
    geometry = check_angle_splits(geometry, splits)
    return [sub_geometry(geometry, indices) for indices in angle_splits(geometry.num_angles, splits)]
