"""LISTA: ISTA unfolded into a network with learned back-projections and thresholds."""
from __future__ import annotations

from typing import List, Optional, Union

import torch
from torch import nn

from ..solvers.ista import shrink

__all__ = ["LISTA"]


class LISTA(nn.Module):
    """Learned ISTA in the coupled form of Chen et al. (2018), for any linear operator ``A``.

    ``x_0 = 0``, ``x_{k+1} = shrink(x_k − W_k(A x_k − y), θ_k)``, ``k = 0 … K−1``, where ``W_k`` is
    the operator's adjoint computed with a learned weight (a learned filter bank for a light-field
    model or a convolutional dictionary, a learned matrix for a dense one) and ``θ_k`` learned
    thresholds, one per channel (per depth of a volume). ``A`` itself stays the physics. With its
    initial weights, ``W_k = η Aᵀ`` and ``θ_k = η λ``, the network *is* ``K`` iterations of ISTA
    with step ``η = 1/‖A‖²`` (:func:`~lightning_recon.solvers.ista`); training improves on that (Gregor & LeCun 2010).

    Args:
        operator: a :class:`~lightning_recon.physics.operator.WeightedOperator` (``weight``,
            ``adjoint_with``), e.g. a light-field model or a dictionary.
        num_layers: ``K``.
        tied: one ``W`` and one ``θ`` shared by all layers; ``False``: per layer.
        nonnegative: ReLU shrinkage (non-negative codes, e.g. fluorescence).
        sparsity_weight: ``λ`` of the ISTA problem the initial network solves.
        step: ``η``; default ``1/‖A‖²``.
    """

    def __init__(self, operator: nn.Module, num_layers: int = 10, tied: bool = False, nonnegative: bool = True,
                 sparsity_weight: float = 0.01, step: Optional[float] = None):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if sparsity_weight < 0:
            raise ValueError(f"sparsity_weight must be >= 0, got {sparsity_weight}")
        if not hasattr(operator, "adjoint_with") or not hasattr(operator, "weight"):
            raise TypeError(f"LISTA learns back-projections from an operator's weight: it needs a WeightedOperator "
                            f"(weight, adjoint_with), got {type(operator).__name__}")
        self.operator = operator
        self.num_layers, self.tied, self.nonnegative = int(num_layers), bool(tied), bool(nonnegative)
        step = float(step) if step is not None else 1.0 / operator.operator_norm() ** 2
        copies = 1 if tied else self.num_layers
        channels = operator.domain_shape[0] if len(operator.domain_shape) > 1 else 1
        self.back_projections = nn.ParameterList(
            [nn.Parameter(step * operator.weight.detach().clone()) for _ in range(copies)]
        )
        self.thresholds = nn.Parameter(torch.full((copies, channels), step * sparsity_weight))

    def _threshold(self, layer: int, like: torch.Tensor) -> torch.Tensor:
        theta = self.thresholds[0 if self.tied else layer].clamp_min(0)
        return theta.view(1, -1, *([1] * (like.dim() - 2))) if like.dim() > 2 else theta

    def forward(self, y: torch.Tensor, num_layers: Optional[int] = None,
                return_all: bool = False) -> Union[torch.Tensor, List[torch.Tensor]]:
        """``y`` (B, *range) -> ``x_K`` (B, *domain); ``return_all``: ``[x_1, …, x_K]``.

        ``num_layers`` < K runs only the first layers (the truncated network).
        """
        layers = self.num_layers if num_layers is None else int(num_layers)
        if not 1 <= layers <= self.num_layers:
            raise ValueError(f"num_layers must be in [1, {self.num_layers}], got {layers}")
        x = y.new_zeros((y.shape[0], *self.operator.domain_shape))
        iterates = []
        for k in range(layers):
            weight = self.back_projections[0 if self.tied else k]
            residual = self.operator(x) - y if k else -y
            x = shrink(x - self.operator.adjoint_with(weight, residual), self._threshold(k, x), self.nonnegative)
            iterates.append(x)
        return iterates if return_all else x
