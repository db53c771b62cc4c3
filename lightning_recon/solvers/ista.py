"""ISTA / FISTA for ``argmin_x ½‖A x − y‖² + λ‖x‖₁`` (and ``x ≥ 0``), and its shrinkage."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..physics.operator import LinearOperator

__all__ = ["ista", "shrink"]


def shrink(x: torch.Tensor, threshold: torch.Tensor, nonnegative: bool) -> torch.Tensor:
    """Proximal map of ``θ‖x‖₁`` (soft thresholding), or of ``θ‖x‖₁ + ι(x ≥ 0)`` (``ReLU(x − θ)``)."""
    if nonnegative:
        return torch.relu(x - threshold)
    return torch.sign(x) * torch.relu(x.abs() - threshold)


@torch.no_grad()
def ista(operator: LinearOperator, y: torch.Tensor, sparsity_weight: float, iterations: int, nonnegative: bool = True,
         accelerated: bool = False, step: Optional[float] = None,
         callback: Optional[Callable[[int, torch.Tensor], None]] = None) -> torch.Tensor:
    """``argmin_x ½‖A x − y‖² + λ‖x‖₁`` (and ``x ≥ 0``) by ISTA, or FISTA with ``accelerated``.

    Step ``η = 1/‖A‖²`` by default; ``callback(k, x_k)`` runs after iteration ``k = 1 … iterations``.
    ``y (B, *range)`` -> ``x (B, *domain)``, starting from zero.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    step = step if step is not None else 1.0 / operator.operator_norm() ** 2
    x = y.new_zeros((y.shape[0], *operator.domain_shape))
    z, t = x, 1.0
    for k in range(1, iterations + 1):
        x_next = shrink(z - step * operator.adjoint(operator(z) - y), step * sparsity_weight, nonnegative)
        if accelerated:
            t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
            z = x_next + ((t - 1) / t_next) * (x_next - x)
            t = t_next
        else:
            z = x_next
        x = x_next
        if callback is not None:
            callback(k, x)
    return x
