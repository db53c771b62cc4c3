"""Batched conjugate gradients for symmetric positive definite systems (one system per sample)."""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["conjugate_gradients", "sum_of_squares"]


def sum_of_squares(t: torch.Tensor) -> torch.Tensor:
    """``‖t_b‖²`` per sample: ``(B, ...) -> (B,)``."""
    return t.flatten(1).pow(2).sum(1)


def conjugate_gradients(normal: Callable[[torch.Tensor], torch.Tensor], rhs: torch.Tensor, x: torch.Tensor,
                        iterations: int) -> torch.Tensor:
    """``iterations`` CG steps on ``normal(x) = rhs`` from ``x``, per sample (batched dot products).
    ``normal`` must be symmetric positive definite."""
    residual = rhs - normal(x)
    direction = residual.clone()
    rho = sum_of_squares(residual)
    shape = (-1,) + (1,) * (x.dim() - 1)
    for _ in range(iterations):
        image = normal(direction)
        curvature = (direction * image).flatten(1).sum(1)
        alpha = torch.where(curvature > 0, rho / curvature.clamp_min(1e-30), torch.zeros_like(rho))
        x = x + alpha.view(shape) * direction
        residual = residual - alpha.view(shape) * image
        rho_next = sum_of_squares(residual)
        beta = torch.where(rho > 0, rho_next / rho.clamp_min(1e-30), torch.zeros_like(rho))
        direction = residual + beta.view(shape) * direction
        rho = rho_next
    return x
