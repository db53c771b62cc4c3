"""Dictionaries for sparse recovery: dense (``MatrixOperator``) and convolutional, and the seeded
``SparseCodingProblem`` that describes one by plain numbers.

Both are :class:`~lightning_recon.physics.operator.WeightedOperator` subclasses: ``A(x)``, the exact adjoint,
and ``adjoint_with(weight, y)`` for the learned back-projections of LISTA.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .operator import WeightedOperator, description_from_dict, register_operator

__all__ = ["ConvolutionalDictionary", "MatrixOperator", "SparseCodingProblem"]


class MatrixOperator(WeightedOperator):
    """Dense ``A (m, n)``: ``x (B, n) -> y (B, m)``."""

    domain_name, range_name = "code", "measurement"

    def __init__(self, matrix: torch.Tensor):
        if matrix.dim() != 2:
            raise ValueError(f"matrix must be 2-D (m, n), got shape {tuple(matrix.shape)}")
        super().__init__(matrix, domain_shape=(matrix.shape[1],), range_shape=(matrix.shape[0],))

    def _compute(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.to(x.dtype).T

    def adjoint_with(self, weight: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._check(y, self.range_shape, self.range_name) @ weight.to(y.dtype)


class ConvolutionalDictionary(WeightedOperator):
    """Convolutional synthesis ``y = Σ_c d_c ⊛ x_c``: codes ``(B, C, H, W)`` -> image ``(B, 1, H, W)``.

    ``filters (C, k, k)`` with odd ``k``; zero padding keeps the image size.
    """

    domain_name, range_name = "codes", "image"

    def __init__(self, filters: torch.Tensor, image_size: int):
        if filters.dim() != 3 or filters.shape[-1] != filters.shape[-2] or filters.shape[-1] % 2 == 0:
            raise ValueError(f"filters must be (C, k, k) with odd k, got shape {tuple(filters.shape)}")
        super().__init__(filters.unsqueeze(1),  # (C, 1, k, k)
                         domain_shape=(filters.shape[0], image_size, image_size), range_shape=(1, image_size, image_size))
        self.padding = filters.shape[-1] // 2

    def _compute(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(x, self.weight.to(x.dtype), padding=self.padding)

    def adjoint_with(self, weight: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self._check(y, self.range_shape, self.range_name), weight.to(y.dtype), padding=self.padding)


@dataclass(frozen=True)
class SparseCodingProblem:
    """A seeded sparse-coding problem ``y = A x + e`` given by plain numbers (Gregor & LeCun 2010).

    Args:
        dictionary: ``"gaussian"``: ``A (m, n)`` with i.i.d. N(0, 1/m) entries (columns of unit
            expected norm, as in Chen et al. 2018); ``"convolutional"``: ``num_filters`` random
            ``filter_size``² filters of unit norm on ``image_size``² images.
        m, n: measurements and unknowns of the Gaussian dictionary.
        num_filters, filter_size, image_size: the convolutional dictionary.
        sparsity: probability that an entry of ``x`` is non-zero (Bernoulli–Gaussian codes).
        noise_std: std of the additive Gaussian noise ``e``, absolute.
        nonnegative: codes ``|N(0, 1)|`` instead of ``N(0, 1)`` on their support.
        seed: seed of the dictionary.
    """

    dictionary: str = "gaussian"
    m: int = 250
    n: int = 500
    num_filters: int = 8
    filter_size: int = 7
    image_size: int = 32
    sparsity: float = 0.1
    noise_std: float = 0.01
    nonnegative: bool = False
    seed: int = 0

    def __post_init__(self):
        if self.dictionary not in ("gaussian", "convolutional"):
            raise ValueError(f"dictionary must be 'gaussian' or 'convolutional', got {self.dictionary!r}")
        if not 0 < self.sparsity <= 1:
            raise ValueError(f"sparsity must be in (0, 1], got {self.sparsity}")
        if not (math.isfinite(self.noise_std) and self.noise_std >= 0):
            raise ValueError(f"noise_std must be finite and >= 0, got {self.noise_std}")

    def to_dict(self) -> dict:
        return {"type": "SparseCodingProblem", **asdict(self)}

    @classmethod
    def from_dict(cls, values: dict) -> "SparseCodingProblem":
        return description_from_dict(cls, values)

    def build_operator(self) -> WeightedOperator:
        rng = np.random.default_rng(self.seed)
        if self.dictionary == "gaussian":
            matrix = rng.standard_normal((self.m, self.n)) / math.sqrt(self.m)
            return MatrixOperator(torch.from_numpy(matrix).float())
        filters = rng.standard_normal((self.num_filters, self.filter_size, self.filter_size))
        filters /= np.linalg.norm(filters.reshape(self.num_filters, -1), axis=1)[:, None, None]
        return ConvolutionalDictionary(torch.from_numpy(filters).float(), self.image_size)


register_operator("SparseCodingProblem", SparseCodingProblem.from_dict,
                  lambda problem, **options: problem.build_operator())
