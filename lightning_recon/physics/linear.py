"""Linear forward operators for sparse recovery: a shared interface, dense and convolutional dictionaries.

Every operator is an ``nn.Module`` with a fixed ``weight`` buffer, ``forward(x) = A x``, the exact
``adjoint(y) = Aᵀ y`` and ``adjoint_with(weight, y)``: the adjoint's computation with another
weight of the same shape. Unrolled networks (LISTA) start their learned back-projections from
``weight`` and train copies of it. ``domain_shape`` and ``range_shape`` exclude the batch axis.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvolutionalDictionary", "LinearOperator", "MatrixOperator", "SparseCodingProblem", "power_method_norm"]


@torch.no_grad()
def power_method_norm(operator: "LinearOperator", iterations: int = 100, seed: int = 0) -> float:
    """‖A‖₂ by the power method on ``AᵀA`` from a seeded random start."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((1, *operator.domain_shape), generator=gen).to(operator.weight)
    for _ in range(iterations):
        x = operator.adjoint(operator(x))
        x = x / x.norm()
    return float(operator(x).norm())


class LinearOperator(nn.Module):
    """Base class: ``weight`` buffer, ``forward``, ``adjoint`` via ``adjoint_with(weight, ·)``, cached norm."""

    domain_shape: Tuple[int, ...]
    range_shape: Tuple[int, ...]

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        if not torch.isfinite(weight).all():
            raise ValueError("operator weight contains non-finite values")
        # not persistent: rebuilt from plain hyperparameters, so checkpoints stay small
        self.register_buffer("weight", weight.float().contiguous(), persistent=False)
        self._norm = None

    def adjoint_with(self, weight: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.adjoint_with(self.weight, y)

    def operator_norm(self) -> float:
        """‖A‖₂ (power method, cached)."""
        if self._norm is None:
            self._norm = power_method_norm(self)
        return self._norm

    def _check(self, x: torch.Tensor, shape: Tuple[int, ...], what: str) -> None:
        if tuple(x.shape[1:]) != tuple(shape):
            raise ValueError(f"{type(self).__name__} expects {what} of shape (B, {', '.join(map(str, shape))}), "
                             f"got {tuple(x.shape)}")


class MatrixOperator(LinearOperator):
    """Dense ``A (m, n)``: ``x (B, n) -> y (B, m)``."""

    def __init__(self, matrix: torch.Tensor):
        if matrix.dim() != 2:
            raise ValueError(f"matrix must be 2-D (m, n), got shape {tuple(matrix.shape)}")
        super().__init__(matrix)
        self.range_shape, self.domain_shape = (matrix.shape[0],), (matrix.shape[1],)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, self.domain_shape, "x")
        return x @ self.weight.T

    def adjoint_with(self, weight: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._check(y, self.range_shape, "y")
        return y @ weight


class ConvolutionalDictionary(LinearOperator):
    """Convolutional synthesis ``y = Σ_c d_c ⊛ x_c``: codes ``(B, C, H, W)`` -> image ``(B, 1, H, W)``.

    ``filters (C, k, k)`` with odd ``k``; zero padding keeps the image size.
    """

    def __init__(self, filters: torch.Tensor, image_size: int):
        if filters.dim() != 3 or filters.shape[-1] != filters.shape[-2] or filters.shape[-1] % 2 == 0:
            raise ValueError(f"filters must be (C, k, k) with odd k, got shape {tuple(filters.shape)}")
        super().__init__(filters.unsqueeze(1))  # (C, 1, k, k)
        self.padding = filters.shape[-1] // 2
        self.domain_shape = (filters.shape[0], image_size, image_size)
        self.range_shape = (1, image_size, image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, self.domain_shape, "codes")
        return F.conv_transpose2d(x, self.weight, padding=self.padding)

    def adjoint_with(self, weight: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._check(y, self.range_shape, "image")
        return F.conv2d(y, weight, padding=self.padding)


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

    def build_operator(self) -> LinearOperator:
        rng = np.random.default_rng(self.seed)
        if self.dictionary == "gaussian":
            matrix = rng.standard_normal((self.m, self.n)) / math.sqrt(self.m)
            return MatrixOperator(torch.from_numpy(matrix).float())
        filters = rng.standard_normal((self.num_filters, self.filter_size, self.filter_size))
        filters /= np.linalg.norm(filters.reshape(self.num_filters, -1), axis=1)[:, None, None]
        return ConvolutionalDictionary(torch.from_numpy(filters).float(), self.image_size)
