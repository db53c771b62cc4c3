"""Physics layer: geometries, ray transforms, FBP, noise models and phantoms (imports nothing above it)."""
from .geometry import ConeBeam3D, FanBeam2D, Geometry, ParallelBeam2D, geometry_from_dict
from .ray_transform import BACKENDS, Backprojection, RayTransform, astra_cuda_available

__all__ = [
    "BACKENDS",
    "Backprojection",
    "ConeBeam3D",
    "FanBeam2D",
    "Geometry",
    "ParallelBeam2D",
    "RayTransform",
    "astra_cuda_available",
    "geometry_from_dict",
]
