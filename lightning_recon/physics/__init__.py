"""Physics layer: one operator contract (``operator.py``) and its forward models — CT ray transforms
with FBP, light-field microscopes, sparse-coding dictionaries — plus noise and phantoms."""
from .angle_splits import angle_splits, check_angle_splits, split_geometries, sub_geometry
from .fbp import FBP, FILTERS
from .geometry import ConeBeam3D, FanBeam2D, Geometry, Geometry2D, ParallelBeam2D, geometry_from_dict
from .lightfield import LightFieldGeometry, LightFieldModel
from .linear import ConvolutionalDictionary, MatrixOperator, SparseCodingProblem
from .noise import LODOPAB_MU_MAX, GaussianNoise, PoissonNoise
from .operator import AdjointOperator, LinearOperator, WeightedOperator, operator_from_dict, spec_from_dict
from .ray_transform import BACKENDS, RayTransform, astra_cuda_available

__all__ = [
    "BACKENDS",
    "FBP",
    "FILTERS",
    "LODOPAB_MU_MAX",
    "AdjointOperator",
    "ConvolutionalDictionary",
    "ConeBeam3D",
    "FanBeam2D",
    "GaussianNoise",
    "Geometry",
    "Geometry2D",
    "LightFieldGeometry",
    "LightFieldModel",
    "LinearOperator",
    "MatrixOperator",
    "ParallelBeam2D",
    "PoissonNoise",
    "RayTransform",
    "SparseCodingProblem",
    "WeightedOperator",
    "angle_splits",
    "astra_cuda_available",
    "check_angle_splits",
    "geometry_from_dict",
    "operator_from_dict",
    "spec_from_dict",
    "split_geometries",
    "sub_geometry",
]
