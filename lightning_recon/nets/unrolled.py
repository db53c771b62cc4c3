"""Unrolled networks with the forward operator inside: learned gradient descent (Adler & Öktem
2017) and learned primal-dual (Adler & Öktem 2018).

The operator ``A`` comes in as an object of the physics contract
(:class:`~lightning_recon.physics.operator.LinearOperator`: ``A(x)``, ``A.adjoint(y)``), images
``(B, 1, H, W)`` to measurements ``(B, 1, A, D)``. It is kept out of the module tree (stored in
``self.__dict__``), so ``state_dict()`` holds only learned weights, ``.to(device)`` leaves it alone,
and the network pickles whenever the operator does (its backend state is rebuilt, never pickled).

Operator normalisation: both networks use ``A / op_norm`` and ``Aᵀ / op_norm`` and the measurement
``y / op_norm`` (set ``op_norm`` to ‖A‖₂, a plain attribute that may be changed after construction,
e.g. once the norm is known). The normalised data term ``‖A x / op_norm − y / op_norm‖²`` has the
same minimisers as ``‖A x − y‖²``, so images stay in their own units while every operator input of
the convolutions is of order one.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["LearnedGradientDescent", "LearnedPrimalDual"]


def _update_block(c_in: int, c_out: int, hidden: int) -> nn.Sequential:
    """3 × 3 conv → PReLU → 3 × 3 conv → PReLU → 3 × 3 conv: one learned update, ``c_in -> c_out``."""
    return nn.Sequential(
        nn.Conv2d(c_in, hidden, 3, padding=1),
        nn.PReLU(hidden),
        nn.Conv2d(hidden, hidden, 3, padding=1),
        nn.PReLU(hidden),
        nn.Conv2d(hidden, c_out, 3, padding=1),
    )


class _Unrolled(nn.Module):
    """Holds the (unregistered) operator, the normalisation and optional checkpointing."""

    def __init__(self, operator: nn.Module, op_norm: float, checkpointing: bool):
        super().__init__()
        if op_norm <= 0:
            raise ValueError(f"op_norm must be positive, got {op_norm}")
        if not (callable(operator) and hasattr(operator, "adjoint")):
            raise TypeError(f"operator must be a LinearOperator (A(x) and A.adjoint(y)), got {type(operator).__name__}")
        self.__dict__["operator"] = operator
        self.op_norm = float(op_norm)
        self.checkpointing = checkpointing

    def normalised_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``A x / op_norm``: ``(B, C, H, W) -> (B, C, A, D)``."""
        return self.operator(x) / self.op_norm

    def normalised_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``Aᵀ y / op_norm``: ``(B, C, A, D) -> (B, C, H, W)``."""
        return self.operator.adjoint(y) / self.op_norm

    def _run(self, step: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
        """``step(*inputs)``, recomputing its activations in the backward pass if checkpointing."""
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(step, *inputs, use_reentrant=False)
        return step(*inputs)


class _GradientStep(nn.Module):
    """``(x, s, ∇) -> (x + Δx − λ ∇, s')`` with ``[Δx, s'] = Γ(x, s, ∇)``; ``s`` has ``n_memory`` channels."""

    def __init__(self, n_memory: int, hidden: int, step_init: Optional[float]):
        super().__init__()
        self.update = _update_block(2 + n_memory, 1 + n_memory, hidden)
        self.step_size = None if step_init is None else nn.Parameter(torch.tensor(float(step_init)))

    def forward(self, x: torch.Tensor, memory: torch.Tensor, gradient: torch.Tensor):
        update = self.update(torch.cat([x, memory, gradient], dim=1))
        x = x + update[:, :1]
        if self.step_size is not None:
            x = x - self.step_size * gradient
        return x, update[:, 1:]


class LearnedGradientDescent(_Unrolled):
    """Learned gradient descent: ``x_{k+1} = x_k + Γ_θk(x_k, Aᵀ(A x_k − y))``, k = 0…``n_iter``−1.

    Every iteration has its own weights (untied); each ``Γ`` is three 3 × 3 convolutions with
    ``hidden_channels`` channels and PReLU. ``A``, ``Aᵀ`` and ``y`` are normalised by ``op_norm``
    (module docstring).

    Args:
        operator: ``A``, ``(B, 1, H, W) -> (B, 1, n_angles, n_det)``, with ``A.adjoint``.
        n_iter: unrolled iterations.
        hidden_channels: width of each update network.
        n_memory: extra state channels ``s`` carried from one iteration to the next (Adler & Öktem
            2017 use 5); 0 gives exactly the update above.
        step_init: if given, each iteration also takes a gradient step ``− λ_k Aᵀ(A x_k − y)`` with a
            learned ``λ_k`` starting at this value; ``None``: no explicit step.
        op_norm: ‖A‖₂ (or any positive scale) dividing ``A``, ``Aᵀ`` and ``y``.
        checkpointing: recompute each iteration's activations in the backward pass (saves memory).
    """

    def __init__(
        self,
        operator: nn.Module,
        n_iter: int = 10,
        hidden_channels: int = 32,
        n_memory: int = 0,
        step_init: Optional[float] = None,
        op_norm: float = 1.0,
        checkpointing: bool = False,
    ):
        super().__init__(operator, op_norm, checkpointing)
        if n_iter < 1 or n_memory < 0:
            raise ValueError(f"need n_iter >= 1 and n_memory >= 0; got {n_iter}, {n_memory}")
        self.n_memory = n_memory
        self.steps = nn.ModuleList(_GradientStep(n_memory, hidden_channels, step_init) for _ in range(n_iter))

    def forward(self, y: torch.Tensor, x0: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``y (B, 1, n_angles, n_det)`` -> ``(B, 1, H, W)``, starting from ``x0 (B, 1, H, W)`` or zero."""
        y = y / self.op_norm
        x = x0
        memory = None
        for step in self.steps:
            residual = -y if x is None else self.normalised_forward(x) - y  # A·0 = 0: skip one projection
            gradient = self.normalised_adjoint(residual)
            if x is None:
                x = torch.zeros_like(gradient)
            if memory is None:
                memory = x.new_zeros(x.shape[0], self.n_memory, *x.shape[-2:])
            x, memory = self._run(step, x, memory, gradient)
        return x


class _DualStep(nn.Module):
    """``h + Γ(h, A f⁽¹⁾, y)``: ``n_dual + 2 -> n_dual`` channels in sinogram space."""

    def __init__(self, n_dual: int, hidden: int):
        super().__init__()
        self.update = _update_block(n_dual + 2, n_dual, hidden)

    def forward(self, h: torch.Tensor, projected: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return h + self.update(torch.cat([h, projected, y], dim=1))


class _PrimalStep(nn.Module):
    """``f + Λ(f, Aᵀ h⁽⁰⁾)``: ``n_primal + 1 -> n_primal`` channels in image space."""

    def __init__(self, n_primal: int, hidden: int):
        super().__init__()
        self.update = _update_block(n_primal + 1, n_primal, hidden)

    def forward(self, f: torch.Tensor, backprojected: torch.Tensor) -> torch.Tensor:
        return f + self.update(torch.cat([f, backprojected], dim=1))


class LearnedPrimalDual(_Unrolled):
    """Learned primal-dual (Adler & Öktem 2018), ``n_iter`` iterations with untied weights:

    dual ``h_{k+1} = h_k + Γ_k(h_k, A f_k⁽¹⁾, y)``, primal ``f_{k+1} = f_k + Λ_k(f_k, Aᵀ h_{k+1}⁽⁰⁾)``,

    with ``n_dual`` sinogram channels ``h``, ``n_primal`` image channels ``f`` (superscripts index
    channels from 0), each ``Γ``/``Λ`` three 3 × 3 convolutions (``hidden_channels``, PReLU,
    ``hidden_channels``, PReLU, ``n_dual``/``n_primal``). ``A``, ``Aᵀ`` and ``y`` are normalised by
    ``op_norm`` (module docstring). The output is the primal channel 0.

    Args:
        operator: ``A``, ``(B, 1, H, W) -> (B, 1, n_angles, n_det)``, with ``A.adjoint``.
        n_iter: unrolled iterations.
        n_primal, n_dual: primal (≥ 2) and dual (≥ 1) memory channels.
        hidden_channels: width of each update network.
        op_norm: ‖A‖₂ (or any positive scale) dividing ``A``, ``Aᵀ`` and ``y``.
        checkpointing: recompute each iteration's activations in the backward pass (saves memory).
    """

    def __init__(
        self,
        operator: nn.Module,
        n_iter: int = 10,
        n_primal: int = 5,
        n_dual: int = 5,
        hidden_channels: int = 32,
        op_norm: float = 1.0,
        checkpointing: bool = False,
    ):
        super().__init__(operator, op_norm, checkpointing)
        if n_iter < 1 or n_primal < 2 or n_dual < 1:
            raise ValueError(f"need n_iter >= 1, n_primal >= 2, n_dual >= 1; got {n_iter}, {n_primal}, {n_dual}")
        self.n_primal, self.n_dual = n_primal, n_dual
        self.dual_steps = nn.ModuleList(_DualStep(n_dual, hidden_channels) for _ in range(n_iter))
        self.primal_steps = nn.ModuleList(_PrimalStep(n_primal, hidden_channels) for _ in range(n_iter))

    def forward(self, y: torch.Tensor, x0: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``y (B, 1, n_angles, n_det)`` -> ``(B, 1, H, W)``.

        Primal and dual start at zero; ``x0 (B, 1, H, W)``, if given, initialises every primal channel.
        """
        y = y / self.op_norm
        h = y.new_zeros(y.shape[0], self.n_dual, *y.shape[-2:])
        f = None if x0 is None else x0.expand(-1, self.n_primal, -1, -1).contiguous()
        for dual_step, primal_step in zip(self.dual_steps, self.primal_steps):
            projected = torch.zeros_like(y) if f is None else self.normalised_forward(f[:, 1:2])  # A·0 = 0
            h = self._run(dual_step, h, projected, y)
            backprojected = self.normalised_adjoint(h[:, :1])
            if f is None:
                f = backprojected.new_zeros(backprojected.shape[0], self.n_primal, *backprojected.shape[-2:])
            f = self._run(primal_step, f, backprojected)
        return f[:, :1]
