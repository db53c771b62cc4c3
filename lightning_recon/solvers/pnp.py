"""Plug-and-play priors: a Gaussian denoiser ``denoise(x, σ)`` as the prior of an iterative solver,
for any :class:`~lightning_recon.physics.operator.LinearOperator` (no Lightning, no networks: the
denoiser comes in as a callable).

The problem is ``argmin_x ½‖Ax − y‖² + λ R(x)`` with ``R`` the regulariser a MAP denoiser of
Gaussian noise of std σ is the proximal map of: ``denoise(v, σ) ≈ argmin_x ½‖x − v‖² + σ² R(x)``.
``λ`` (``weight``) is in the units of ``½‖Ax − y‖²``, as TV's α in :func:`~.tv.tv_pdhg`: for white
measurement noise of variance ``σ_y²`` per measurement pixel the MAP choice is ``λ = σ_y²``. The
solvers work with the normalised operator ``Ã = A / ‖A‖`` and data ``ỹ = y / ‖A‖`` (``‖Ã‖ = 1``),
i.e. on ``½‖Ãx − ỹ‖² + λ̃ R(x)`` with ``λ̃ = λ / ‖A‖²``, so that steps mean the same for every
geometry. Every algorithm runs one iteration per entry of ``sigmas``, the denoiser's noise level at
that iteration (:func:`sigma_schedule`: DPIR's geometric decrease; a constant list for a fixed level).

- :func:`pnp_hqs` (half-quadratic splitting; Zhang et al., DPIR, TPAMI 2021): with the penalty
  ``α_k = λ̃ / σ_k²``, ``x_k = argmin_x ½‖Ãx − ỹ‖² + (α_k/2)‖x − z_{k−1}‖²`` (the least-squares
  step: ``(ÃᵀÃ + α_k I) x = Ãᵀỹ + α_k z_{k−1}`` by ``cg_iterations`` conjugate-gradient steps,
  warm-started from ``x_{k−1}``), then ``z_k = denoise(x_k, σ_k)``. Returns ``z_K``.
- :func:`pnp_admm` (Venkatakrishnan, Bouman & Wohlberg 2013): ``ρ_k = λ̃ / σ_k²``,
  ``x = argmin ½‖Ãx − ỹ‖² + (ρ_k/2)‖x − (z − u)‖²`` (CG, warm-started), ``z = denoise(x + u, σ_k)``,
  ``u ← u + x − z``. Returns ``z``.
- :func:`pnp_pgd` (proximal gradient): ``x ← denoise(x − η Ãᵀ(Ãx − ỹ), σ_k)``; ``η`` (``step``) is
  relative to ``1/‖A‖²`` (``η ≤ 1``: the usual bound); ``λ`` enters only through σ (``σ² = λ̃η``).
- :func:`red` (regularisation by denoising, gradient form; Romano, Elad & Milanfar 2017):
  ``x ← x − η_k (Ãᵀ(Ãx − ỹ) + (λ̃/σ_k²)(x − denoise(x, σ_k)))`` (``(x − denoise(x, σ))/σ²`` is
  ``∇R(x)`` for the denoiser above, so λ means what it means for HQS) with
  ``η_k = 1/(1 + λ̃/σ_k²)`` by default.

``λ`` (``weight``; for HQS and ADMM also a sequence, one per iteration), ``η`` (``step``) and the
σ entries are numbers, 0-d tensors or one per sample ``(B,)`` (tensors may carry gradients: the
solvers are plain differentiable torch, so an unrolled network trains through them; wrap a call in ``torch.no_grad()`` to reconstruct only). ``nonnegative``
clips each iterate at 0 (after the denoiser for HQS / ADMM / PGD, after the step for RED).
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, List, Optional, Sequence, Union

import torch

from ..physics.operator import LinearOperator
from .conjugate_gradient import conjugate_gradients

__all__ = ["ALGORITHMS", "Denoise", "pnp", "pnp_admm", "pnp_hqs", "pnp_pgd", "red", "sigma_schedule"]

ALGORITHMS = ("hqs", "admm", "pgd", "red")
Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Number = Union[float, torch.Tensor]


def sigma_schedule(start: float, end: float, iterations: int) -> List[float]:
    """``iterations`` noise levels decreasing geometrically from ``start`` to ``end`` (DPIR's
    schedule; ``start == end``: a constant level). Both must be > 0."""
    if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    for name, value in (("sigma start", start), ("sigma end", end)):
        if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if iterations == 1:
        return [float(end)]
    ratio = math.log(end / start) / (iterations - 1)
    return [float(start * math.exp(ratio * k)) for k in range(iterations)]


def _per_sample(value: Number, batch: int, like: torch.Tensor, name: str) -> torch.Tensor:
    """``value`` (a number, a 0-d tensor or ``(B,)``; finite, > 0) as a tensor ``(B,)`` with ``like``'s
    dtype and device (gradients kept)."""
    if isinstance(value, torch.Tensor):
        if value.dim() > 1 or (value.dim() == 1 and value.shape[0] not in (1, batch)):
            raise ValueError(f"{name} must be a number or a tensor of shape ({batch},), got shape {tuple(value.shape)}")
        values = value.to(device=like.device, dtype=like.dtype).reshape(-1).expand(batch)
        checked = values.detach()
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        values = torch.full((batch,), float(value), device=like.device, dtype=like.dtype)
        checked = values
    else:
        raise ValueError(f"{name} must be a number or a tensor of shape ({batch},), got {type(value).__name__}")
    if not bool(torch.isfinite(checked).all()) or bool((checked <= 0).any()):
        raise ValueError(f"{name} must be finite and > 0, got {checked.tolist()}")
    return values


def _over(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample ``values (B,)`` shaped to broadcast over ``x (B, …)``."""
    return values.view(-1, *([1] * (x.dim() - 1)))


class _Problem:
    """The normalised data term of one call: ``Ã``, ``Ãᵀ``, ``Ãᵀỹ`` and the checks of the inputs."""

    def __init__(self, y: torch.Tensor, operator: LinearOperator, sigmas: Sequence[Number],
                 x0: Optional[torch.Tensor]):
        if not isinstance(y, torch.Tensor) or not y.is_floating_point():
            raise ValueError(f"y must be a floating-point torch.Tensor, got {type(y).__name__}")
        if tuple(y.shape[1:]) != tuple(operator.range_shape):
            raise ValueError(f"y must be measurements (B, {', '.join(map(str, operator.range_shape))}) for this "
                             f"operator, got shape {tuple(y.shape)}")
        if not bool(torch.isfinite(y).all()):
            raise ValueError("y contains NaN or inf values")
        if isinstance(sigmas, (numbers.Real, torch.Tensor)) or len(sigmas) == 0:
            raise ValueError("sigmas must be a non-empty sequence, one noise level per iteration "
                             "(sigma_schedule(start, end, iterations))")
        self.operator = operator
        self.batch = y.shape[0]
        self.image_shape = (self.batch, *operator.domain_shape)
        if x0 is not None and (not isinstance(x0, torch.Tensor) or tuple(x0.shape) != self.image_shape):
            raise ValueError(f"x0 must be of shape {self.image_shape}, got "
                             f"{tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__}")
        self.norm = operator.operator_norm(device=y.device)
        self.y = y / self.norm
        self.back_projection = self.adjoint(self.y)
        self.sigmas = [_per_sample(s, self.batch, y, f"sigmas[{k}]") for k, s in enumerate(sigmas)]
        self.x0 = x0

    def weights(self, weight: Union[Number, Sequence[Number]]) -> List[torch.Tensor]:
        """``λ̃_k = λ_k / ‖A‖²`` per iteration, each ``(B,)``, from one weight or one per iteration."""
        if isinstance(weight, (numbers.Real, torch.Tensor)):
            return [_per_sample(weight, self.batch, self.y, "weight") / self.norm ** 2] * len(self.sigmas)
        if len(weight) != len(self.sigmas):
            raise ValueError(f"weight must be one number or one per iteration ({len(self.sigmas)}), got {len(weight)}")
        return [_per_sample(w, self.batch, self.y, f"weight[{k}]") / self.norm ** 2 for k, w in enumerate(weight)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.operator(x) / self.norm

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.operator.apply_adjoint(y) / self.norm

    def gradient(self, x: torch.Tensor) -> torch.Tensor:
        """``Ãᵀ(Ãx − ỹ)``."""
        return self.adjoint(self.forward(x) - self.y)

    def start(self) -> torch.Tensor:
        return self.back_projection.new_zeros(self.image_shape) if self.x0 is None else \
            self.x0.to(self.back_projection.dtype)

    def least_squares(self, x: torch.Tensor, target: torch.Tensor, penalty: torch.Tensor,
                      iterations: int) -> torch.Tensor:
        """``cg_iterations`` CG steps on ``(ÃᵀÃ + α I) v = Ãᵀỹ + α target`` from ``x``."""
        def normal(v: torch.Tensor) -> torch.Tensor:
            return self.adjoint(self.forward(v)) + penalty * v

        return conjugate_gradients(normal, self.back_projection + penalty * target, x, iterations)


def _check_cg(cg_iterations: int) -> None:
    if isinstance(cg_iterations, bool) or not isinstance(cg_iterations, numbers.Integral) or cg_iterations < 1:
        raise ValueError(f"cg_iterations must be an integer >= 1, got {cg_iterations!r}")


def _clip(x: torch.Tensor, nonnegative: bool) -> torch.Tensor:
    return x.clamp_min(0) if nonnegative else x


def pnp_hqs(y: torch.Tensor, operator: LinearOperator, denoise: Denoise, sigmas: Sequence[Number],
            weight: Union[Number, Sequence[Number]],
            cg_iterations: int = 5, x0: Optional[torch.Tensor] = None, nonnegative: bool = False) -> torch.Tensor:
    """Plug-and-play half-quadratic splitting (DPIR); module docstring.

    Args:
        y: measurements ``(B, *operator.range_shape)``.
        operator: ``A``.
        denoise: ``denoise(x (B, *domain), σ (B,)) -> (B, *domain)``.
        sigmas: the denoiser's level per iteration (:func:`sigma_schedule`).
        weight: ``λ`` in the units of ``½‖Ax − y‖²`` (the measurement noise variance per pixel is
            the MAP choice), or one per iteration; the penalty is ``α_k = λ_k / (‖A‖² σ_k²)``.
        cg_iterations: CG steps per least-squares step.
        x0: the start ``(B, *domain)`` (e.g. the FBP); zeros by default.
        nonnegative: clip the denoised iterate at 0.

    Returns:
        ``z_K``, ``(B, *operator.domain_shape)``.
    """
    _check_cg(cg_iterations)
    problem = _Problem(y, operator, sigmas, x0)
    weights = problem.weights(weight)
    x = z = problem.start()
    for sigma, weight in zip(problem.sigmas, weights):
        penalty = _over(weight / sigma.pow(2), x)
        x = problem.least_squares(x, z, penalty, cg_iterations)
        z = _clip(denoise(x, sigma), nonnegative)
    return z


def pnp_admm(y: torch.Tensor, operator: LinearOperator, denoise: Denoise, sigmas: Sequence[Number],
             weight: Union[Number, Sequence[Number]],
             cg_iterations: int = 5, x0: Optional[torch.Tensor] = None, nonnegative: bool = False) -> torch.Tensor:
    """Plug-and-play ADMM with the penalty ``ρ_k = λ̃ / σ_k²`` (module docstring); the arguments are
    those of :func:`pnp_hqs`. Returns ``z``, ``(B, *operator.domain_shape)``."""
    _check_cg(cg_iterations)
    problem = _Problem(y, operator, sigmas, x0)
    weights = problem.weights(weight)
    x = z = problem.start()
    u = torch.zeros_like(z)
    for sigma, weight in zip(problem.sigmas, weights):
        penalty = _over(weight / sigma.pow(2), x)
        x = problem.least_squares(x, z - u, penalty, cg_iterations)
        z = _clip(denoise(x + u, sigma), nonnegative)
        u = u + x - z
    return z


def pnp_pgd(y: torch.Tensor, operator: LinearOperator, denoise: Denoise, sigmas: Sequence[Number], step: Number = 1.0,
            x0: Optional[torch.Tensor] = None, nonnegative: bool = False) -> torch.Tensor:
    """Plug-and-play proximal gradient: ``x ← denoise(x − η Ãᵀ(Ãx − ỹ), σ_k)``; ``step`` is ``η``
    (``‖Ã‖ = 1``: ``η ≤ 1`` is the usual bound). Returns ``x``, ``(B, *operator.domain_shape)``."""
    problem = _Problem(y, operator, sigmas, x0)
    x = problem.start()
    step = _over(_per_sample(step, problem.batch, problem.y, "step"), x)
    for sigma in problem.sigmas:
        x = _clip(denoise(x - step * problem.gradient(x), sigma), nonnegative)
    return x


def red(y: torch.Tensor, operator: LinearOperator, denoise: Denoise, sigmas: Sequence[Number], weight: Number,
        step: Optional[Number] = None, x0: Optional[torch.Tensor] = None, nonnegative: bool = False) -> torch.Tensor:
    """Regularisation by denoising, gradient form:
    ``x ← x − η_k (Ãᵀ(Ãx − ỹ) + (λ̃/σ_k²)(x − denoise(x, σ_k)))`` with ``λ̃ = λ / ‖A‖²``; ``weight`` is
    ``λ`` (the units of :func:`pnp_hqs`), ``step`` ``η`` (default ``1 / (1 + λ̃/σ_k²)``, the inverse of
    the gradient's Lipschitz bound for a non-expansive denoiser). Returns ``x``."""
    problem = _Problem(y, operator, sigmas, x0)
    x = problem.start()
    weight = _over(_per_sample(weight, problem.batch, problem.y, "weight") / problem.norm ** 2, x)
    fixed_step = None if step is None else _over(_per_sample(step, problem.batch, problem.y, "step"), x)
    for sigma in problem.sigmas:
        strength = weight / _over(sigma, x).pow(2)
        eta = 1.0 / (1.0 + strength) if fixed_step is None else fixed_step
        x = _clip(x - eta * (problem.gradient(x) + strength * (x - denoise(x, sigma))), nonnegative)
    return x


def pnp(algorithm: str, y: torch.Tensor, operator: LinearOperator, denoise: Denoise, sigmas: Sequence[Number],
        weight: Number = 1.0, step: Optional[Number] = None, cg_iterations: int = 5,
        x0: Optional[torch.Tensor] = None, nonnegative: bool = False) -> torch.Tensor:
    """One entry for the four algorithms (``"hqs"``, ``"admm"``, ``"pgd"``, ``"red"``); each uses the
    arguments it has (``weight``: HQS, ADMM, RED; ``step``: PGD (default 1), RED; ``cg_iterations``:
    HQS, ADMM)."""
    if algorithm == "hqs":
        return pnp_hqs(y, operator, denoise, sigmas, weight, cg_iterations, x0, nonnegative)
    if algorithm == "admm":
        return pnp_admm(y, operator, denoise, sigmas, weight, cg_iterations, x0, nonnegative)
    if algorithm == "pgd":
        return pnp_pgd(y, operator, denoise, sigmas, 1.0 if step is None else step, x0, nonnegative)
    if algorithm == "red":
        return red(y, operator, denoise, sigmas, weight, step, x0, nonnegative)
    raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
