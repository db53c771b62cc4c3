"""Proximal gradient descent for ``½‖B x − y‖² + α R(x)`` with a non-negativity or ℓ¹ regulariser."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["REGULARISERS", "proximal_gradient"]

REGULARISERS = ("nonnegative", "l1")


def proximal_gradient(forward, adjoint, y: torch.Tensor, image_shape, iterations: int, step,
                      alpha: float = 0.0, regulariser: str = "nonnegative") -> torch.Tensor:
    """``iterations`` proximal-gradient steps for ``½‖B x − y‖² + α R(x)`` from zero; ``forward`` and
    ``adjoint`` are ``B`` and ``Bᵀ`` (callables); differentiable in whatever they and ``step`` (a
    float or a scalar tensor) depend on. ``R`` is the non-negativity indicator (``"nonnegative"``,
    prox: ReLU) or ``‖x‖₁`` plus non-negativity (``"l1"``, prox: ``ReLU(x − η α)``).
    ``y (N, 1, A, D) -> x (N, 1, *image_shape)``."""
    if regulariser not in REGULARISERS:
        raise ValueError(f"regulariser must be one of {REGULARISERS}, got {regulariser!r}")
    threshold = step * alpha if regulariser == "l1" else 0.0
    x = y.new_zeros((y.shape[0], 1, *image_shape))
    for k in range(iterations):
        residual = forward(x) - y if k else -y  # B·0 = 0
        x = F.relu(x - step * adjoint(residual) - threshold)
    return x
