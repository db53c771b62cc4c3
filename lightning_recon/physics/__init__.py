"""Physics layer: geometries, ray transforms, FBP, noise models and phantoms (imports nothing above it)."""
from .fbp import FBP, FILTERS
from .geometry import ConeBeam3D, FanBeam2D, Geometry, Geometry2D, ParallelBeam2D, geometry_from_dict
from .noise import LODOPAB_MU_MAX, GaussianNoise, PoissonNoise
from .ray_transform import BACKENDS, Backprojection, RayTransform, astra_cuda_available

__all__ = [
    "BACKENDS",
    "FBP",
    "FILTERS",
    "LODOPAB_MU_MAX",
    "Backprojection",
    "ConeBeam3D",
    "FanBeam2D",
    "GaussianNoise",
    "Geometry",
    "Geometry2D",
    "ParallelBeam2D",
    "PoissonNoise",
    "RayTransform",
    "astra_cuda_available",
    "geometry_from_dict",
]
