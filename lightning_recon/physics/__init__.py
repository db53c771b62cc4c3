"""Physics layer: CT geometries, ray transforms, FBP, noise, phantoms; light-field and dictionary operators."""
from .fbp import FBP, FILTERS
from .lightfield import LightFieldGeometry, LightFieldModel, sparse_operator_from_dict
from .linear import ConvolutionalDictionary, LinearOperator, MatrixOperator, SparseCodingProblem
from .geometry import ConeBeam3D, FanBeam2D, Geometry, Geometry2D, ParallelBeam2D, geometry_from_dict
from .noise import LODOPAB_MU_MAX, GaussianNoise, PoissonNoise
from .ray_transform import BACKENDS, Backprojection, RayTransform, astra_cuda_available

__all__ = [
    "BACKENDS",
    "FBP",
    "FILTERS",
    "LODOPAB_MU_MAX",
    "Backprojection",
    "ConvolutionalDictionary",
    "ConeBeam3D",
    "FanBeam2D",
    "GaussianNoise",
    "LightFieldGeometry",
    "LightFieldModel",
    "LinearOperator",
    "MatrixOperator",
    "Geometry",
    "Geometry2D",
    "ParallelBeam2D",
    "PoissonNoise",
    "RayTransform",
    "SparseCodingProblem",
    "astra_cuda_available",
    "geometry_from_dict",
    "sparse_operator_from_dict",
]
