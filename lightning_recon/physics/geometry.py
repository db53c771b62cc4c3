"""Serialisable CT geometries: plain numbers in, ODL objects out (built lazily, never pickled).

Conventions follow ODL: an image tensor ``(H, W)`` is ODL's array with axis 0 along ``x`` and
axis 1 along ``y``, centred at the origin, with physical side lengths ``image_extent``. A
sinogram is ``(num_angles, num_detector_pixels)``: ``num_angles`` is always the number of angles
actually measured (after any ``angle_step`` subsampling). Angles are in radians. Lengths share one
unit (by default one pixel).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Optional, Tuple, Union

import numpy as np

from .operator import description_from_dict, spec_from_dict

__all__ = ["Geometry2D", "ParallelBeam2D", "FanBeam2D", "ConeBeam3D", "Geometry", "geometry_from_dict"]


def _odl():
    import odl  # deferred: importing ODL costs ~1 s and is not needed for pickling or configs

    return odl


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


class _PlainNumbers:
    """Serialisation shared by the geometry dataclasses."""

    def to_dict(self) -> dict:
        """Plain numbers, with the class name under ``type``: safe for YAML and ``weights_only`` checkpoints."""
        out = {"type": type(self).__name__}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def cache_key(self) -> str:
        """A short hash of the numbers that determine the discrete operator."""
        payload = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:20]

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: dict):
        """The geometry of ``to_dict()`` output; unknown fields are an error."""
        return description_from_dict(cls, values)

    def odl_space(self):
        """The ODL reconstruction space of ``domain_shape`` over ``extent``, centred (float32, numpy)."""
        odl = _odl()
        half = [e / 2 for e in self.extent]
        return odl.uniform_discr([-h for h in half], half, self.domain_shape, dtype="float32")


@dataclass(frozen=True)
class Geometry2D(_PlainNumbers):
    """Fields shared by the 2D geometries; see the concrete classes.

    Angles: ``num_angles`` is the number of angles actually measured, the first axis of the
    sinogram (``num_angles == len(angle_array)`` after construction). Without explicit ``angles`` they are
    every ``angle_step``-th cell midpoint of a uniform grid of ``num_angles * angle_step`` cells over
    ``angle_range`` (``num_angles=30, angle_step=6``: 30 angles 6° apart, those of a 180-angle grid).
    With explicit ``angles`` the measured ones are ``angles[::angle_step]``; ``num_angles`` may be
    left out (``None``: their count) and must otherwise equal that count. ``num_angles`` defaults to
    30 without explicit angles.
    """

    image_shape: Tuple[int, int] = (128, 128)
    image_extent: Optional[Tuple[float, float]] = None
    num_angles: Optional[int] = None
    angle_range: Tuple[float, float] = (0.0, math.pi)
    angles: Optional[Tuple[float, ...]] = None
    angle_step: int = 1
    num_detector_pixels: Optional[int] = None
    detector_extent: Optional[float] = None
    detector_offset: float = 0.0

    def __post_init__(self) -> None:
        # Normalise sequences to tuples so that YAML lists and checkpoints give equal, hashable objects.
        object.__setattr__(self, "image_shape", tuple(int(s) for s in self.image_shape))
        object.__setattr__(self, "angle_range", tuple(float(a) for a in self.angle_range))
        if self.image_extent is not None:
            object.__setattr__(self, "image_extent", tuple(float(e) for e in self.image_extent))
        if self.angles is not None:
            object.__setattr__(self, "angles", tuple(float(a) for a in self.angles))
        self._validate()
        self._resolve_num_angles()
        if self.num_detector_pixels is None:  # the default detector, stated (``to_dict`` records it)
            object.__setattr__(self, "num_detector_pixels", self._default_detector()[0])

    def _resolve_num_angles(self) -> None:
        """``num_angles``: the measured count; ``None`` is 30, or the count of explicit ``angles``."""
        if self.angles is None:
            if self.num_angles is None:
                object.__setattr__(self, "num_angles", 30)
            if self.num_angles < 1:
                raise ValueError(f"num_angles must be >= 1, got {self.num_angles}")
            return
        measured = len(self.angles[:: self.angle_step])
        if self.num_angles is None:
            object.__setattr__(self, "num_angles", measured)
        elif self.num_angles != measured:
            raise ValueError(
                f"num_angles ({self.num_angles}) disagrees with the {measured} measured angles of `angles` "
                f"({len(self.angles)} angles, angle_step {self.angle_step}); leave num_angles out to use their count"
            )

    def replace(self, **changes: Any):
        """A copy with ``changes``. With explicit ``angles``, ``num_angles`` follows a change of
        ``angles`` or ``angle_step`` unless it is changed too; a default detector
        (``num_detector_pixels`` equal to the default count) follows a change of the image or of the
        source and detector distances unless it is changed too."""
        if ("angles" in changes or "angle_step" in changes) and "num_angles" not in changes:
            if changes.get("angles", self.angles) is not None:
                changes["num_angles"] = None
        shaping = {"image_shape", "image_extent", "source_radius", "detector_radius"}
        if shaping & set(changes) and "num_detector_pixels" not in changes:
            if self.num_detector_pixels == self._default_detector()[0]:
                changes["num_detector_pixels"] = None
        return dataclasses.replace(self, **changes)

    # -- validation -------------------------------------------------------------------------
    def _validate(self) -> None:
        if len(self.image_shape) != 2 or min(self.image_shape) < 2:
            raise ValueError(f"image_shape must be two sizes >= 2, got {self.image_shape}")
        for e in self.extent:
            _positive("image_extent entries", e)
        a0, a1 = self.angle_range
        if not (math.isfinite(a0) and math.isfinite(a1) and a1 > a0):
            raise ValueError(f"angle_range must be (start, stop) with stop > start, got {self.angle_range}")
        if self.angles is not None:
            arr = np.asarray(self.angles)
            if arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(np.diff(arr) <= 0):
                raise ValueError("angles must be a non-empty, finite, strictly increasing sequence (radians)")
        if self.angle_step < 1:
            raise ValueError(f"angle_step must be >= 1, got {self.angle_step}")
        if self.num_detector_pixels is not None and self.num_detector_pixels < 1:
            raise ValueError(f"num_detector_pixels must be >= 1, got {self.num_detector_pixels}")
        if self.detector_extent is not None:
            _positive("detector_extent", self.detector_extent)

    # -- derived numbers --------------------------------------------------------------------
    @property
    def extent(self) -> Tuple[float, float]:
        """Physical image side lengths (x, y); one unit per pixel by default."""
        return self.image_extent if self.image_extent is not None else tuple(float(s) for s in self.image_shape)

    @property
    def pixel_size(self) -> Tuple[float, float]:
        return tuple(e / s for e, s in zip(self.extent, self.image_shape))

    @property
    def full_angles(self) -> np.ndarray:
        """All angles before ``angle_step`` subsampling (radians): explicit ``angles``, or the cell
        midpoints of a uniform grid of ``num_angles * angle_step`` cells over ``angle_range``."""
        if self.angles is not None:
            return np.asarray(self.angles, dtype=np.float64)
        a0, a1 = self.angle_range
        cells = self.num_angles * self.angle_step
        step = (a1 - a0) / cells
        return a0 + step * (np.arange(cells) + 0.5)  # cell midpoints, as ODL

    @property
    def angle_array(self) -> np.ndarray:
        """The angles actually measured, shape ``(n_angles,)``, radians."""
        return self.full_angles[:: self.angle_step]

    def _default_detector(self) -> Tuple[int, float]:
        raise NotImplementedError

    @property
    def detector_length(self) -> float:
        return self.detector_extent if self.detector_extent is not None else self._default_detector()[1]

    @property
    def detector_pixel_size(self) -> float:
        return self.detector_length / self.num_detector_pixels

    @property
    def sinogram_shape(self) -> Tuple[int, int]:
        return (self.num_angles, self.num_detector_pixels)

    @property
    def angle_weights(self) -> np.ndarray:
        """Angular quadrature weight of each measured angle (radians), shape ``(n_angles,)``.

        A uniform grid (or every ``angle_step``-th angle of it) has equal weights summing to the
        angle range. Explicit ``angles`` get the widths of their cells, bounded by the midpoints
        between neighbours and by ``angle_range``.
        """
        ang = self.angle_array
        if self.angles is None:
            lo, hi = self.angle_range
            return np.full(ang.size, (hi - lo) / ang.size)
        lo, hi = min(self.angle_range[0], ang[0]), max(self.angle_range[1], ang[-1])
        bounds = np.concatenate([[lo], (ang[1:] + ang[:-1]) / 2, [hi]])
        return np.diff(bounds)

    @property
    def domain_shape(self) -> Tuple[int, int]:
        return self.image_shape

    # -- conversions ------------------------------------------------------------------------
    def _odl_partitions(self):
        odl = _odl()
        lo, hi = self.angle_range
        if self.angles is None and self.angle_step == 1:
            apart = odl.uniform_partition(lo, hi, self.num_angles)
        else:
            ang = self.angle_array
            apart = odl.nonuniform_partition(ang, min_pt=min(lo, ang[0]), max_pt=max(hi, ang[-1]))
        half = self.detector_length / 2
        dpart = odl.uniform_partition(self.detector_offset - half, self.detector_offset + half, self.num_detector_pixels)
        return apart, dpart

    def odl_geometry(self):
        raise NotImplementedError

    def odl_ray_transform(self, impl: Optional[str] = None):
        """ODL's ``RayTransform`` for this geometry (ASTRA CPU in 2D unless ``impl`` says otherwise)."""
        from odl.applications.tomo import RayTransform

        if impl is None:
            impl = "astra_cpu"
        return RayTransform(self.odl_space(), self.odl_geometry(), impl=impl)


@dataclass(frozen=True)
class ParallelBeam2D(Geometry2D):
    """2D parallel beam with a flat detector.

    Defaults reproduce ``odl.applications.tomo.parallel_beam_geometry``: angles at the cell
    midpoints of ``angle_range``; the detector spans the image's circumscribed circle with
    ``2 * ceil(r / pixel) + 1`` pixels (183 pixels for 128², 513 for 362²).

    Example: ``ParallelBeam2D((128, 128), num_angles=30)`` is ellipses-30's geometry;
    ``num_angles=30, angle_step=6`` measures 30 angles, every 6th of a 180-angle grid (sparse
    view); ``angle_range=(0, 2 * pi / 3)`` is a limited-angle scan.
    """

    def _default_detector(self) -> Tuple[int, float]:
        rho = math.hypot(*(e / 2 for e in self.extent))
        n = 2 * int(math.ceil(rho / min(self.pixel_size))) + 1
        return n, 2 * rho

    def odl_geometry(self):
        from odl.applications.tomo import Parallel2dGeometry

        apart, dpart = self._odl_partitions()
        return Parallel2dGeometry(apart, dpart)


@dataclass(frozen=True)
class FanBeam2D(Geometry2D):
    """2D fan beam with a flat detector, source at ``source_radius`` and detector at
    ``detector_radius`` from the rotation centre. Angles default to a full turn [0, 2π)."""

    angle_range: Tuple[float, float] = (0.0, 2 * math.pi)
    source_radius: float = 500.0
    detector_radius: float = 500.0

    def _validate(self) -> None:
        super()._validate()
        _positive("source_radius", self.source_radius)
        _positive("detector_radius", self.detector_radius)
        rho = math.hypot(*(e / 2 for e in self.extent))
        if self.source_radius <= rho:
            raise ValueError(
                f"source_radius ({self.source_radius}) must exceed the image's half-diagonal ({rho:.2f}): "
                "the source would sit inside the object"
            )

    @property
    def magnification(self) -> float:
        return (self.source_radius + self.detector_radius) / self.source_radius

    def _default_detector(self) -> Tuple[int, float]:
        rho = math.hypot(*(e / 2 for e in self.extent))
        half_fan = math.asin(rho / self.source_radius)
        length = 2 * (self.source_radius + self.detector_radius) * math.tan(half_fan)
        n = 2 * int(math.ceil(length / 2 / (min(self.pixel_size) * self.magnification))) + 1
        return n, length

    def odl_geometry(self):
        from odl.applications.tomo import FanBeamGeometry

        apart, dpart = self._odl_partitions()
        return FanBeamGeometry(apart, dpart, src_radius=self.source_radius, det_radius=self.detector_radius)


@dataclass(frozen=True)
class ConeBeam3D(_PlainNumbers):
    """3D circular cone beam with a flat detector (``astra_cuda`` or ODL's CUDA backend only).

    Volume ``(X, Y, Z)``; projections ``(num_angles, detector_rows, detector_cols)``.
    """

    volume_shape: Tuple[int, int, int] = (64, 64, 64)
    volume_extent: Optional[Tuple[float, float, float]] = None
    num_angles: int = 90
    angle_range: Tuple[float, float] = (0.0, 2 * math.pi)
    detector_shape: Tuple[int, int] = (96, 96)
    detector_extent: Optional[Tuple[float, float]] = None
    source_radius: float = 300.0
    detector_radius: float = 300.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "volume_shape", tuple(int(s) for s in self.volume_shape))
        object.__setattr__(self, "detector_shape", tuple(int(s) for s in self.detector_shape))
        object.__setattr__(self, "angle_range", tuple(float(a) for a in self.angle_range))
        if len(self.volume_shape) != 3 or len(self.detector_shape) != 2:
            raise ValueError(
                f"volume_shape needs 3 sizes and detector_shape 2, got {self.volume_shape} and {self.detector_shape}"
            )
        _positive("source_radius", self.source_radius)
        _positive("detector_radius", self.detector_radius)

    @property
    def extent(self) -> Tuple[float, float, float]:
        return self.volume_extent if self.volume_extent is not None else tuple(float(s) for s in self.volume_shape)

    @property
    def sinogram_shape(self) -> Tuple[int, int, int]:
        return (self.num_angles, *self.detector_shape)

    @property
    def domain_shape(self) -> Tuple[int, int, int]:
        return self.volume_shape

    def odl_geometry(self):
        odl = _odl()
        from odl.applications.tomo import ConeBeamGeometry

        apart = odl.uniform_partition(*self.angle_range, self.num_angles)
        mag = (self.source_radius + self.detector_radius) / self.source_radius
        ext = self.detector_extent or (self.extent[0] * mag * 1.5, self.extent[2] * mag * 1.5)
        dpart = odl.uniform_partition([-e / 2 for e in ext], [e / 2 for e in ext], self.detector_shape)
        return ConeBeamGeometry(apart, dpart, src_radius=self.source_radius, det_radius=self.detector_radius)

    def odl_ray_transform(self, impl: Optional[str] = "astra_cuda"):
        from odl.applications.tomo import RayTransform

        return RayTransform(self.odl_space(), self.odl_geometry(), impl=impl)


Geometry = Union[ParallelBeam2D, FanBeam2D, ConeBeam3D]
GEOMETRY_TYPES = (ParallelBeam2D, FanBeam2D, ConeBeam3D)


def geometry_from_dict(spec: Union[dict, "Geometry"]) -> "Geometry":
    """A CT geometry from its ``to_dict()`` (or the geometry itself), through the one registry of
    forward-model descriptions (``physics.operator.spec_from_dict``: ``type`` required)."""
    if isinstance(spec, GEOMETRY_TYPES):
        return spec
    if not isinstance(spec, dict):
        raise ValueError(f"a geometry must be a dict of numbers or a geometry object, got {type(spec).__name__}")
    geometry = spec_from_dict(spec)
    if not isinstance(geometry, GEOMETRY_TYPES):
        raise ValueError(f"expected a CT geometry ({', '.join(t.__name__ for t in GEOMETRY_TYPES)}), got a "
                         f"{type(geometry).__name__}")
    return geometry
