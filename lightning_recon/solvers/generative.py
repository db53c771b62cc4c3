"""Generative-regularised reconstruction (Duff, Campbell & Ehrhardt, arXiv 2107.11191) with a
trained generator ``G: z -> x`` as the regulariser, for any operator ``A``:

- **range** (the image lies in the generator's range)::

      x = G(ẑ),   ẑ = argmin_z ‖A G(z) − y‖² + μ‖z‖²

- **soft** (the image lies close to, not in, the range)::

      (x̂, ẑ) = argmin_{x, z} ‖A x − y‖² + λ (‖G(z) − x‖² + μ‖z‖²)

How the optimisation runs (:func:`generative_reconstruction`):

- **range**: Adam on ``z`` with a cosine-annealed step, gradients through ``G`` and ``A``.
- **soft**: the objective is quadratic in ``x``: for fixed ``z`` the minimiser solves
  ``(AᵀA + λI) x = Aᵀy + λ G(z)``. Each iteration updates ``x`` by ``cg_iterations`` steps of
  conjugate gradients (warm-started from the previous ``x``), then ``z`` by one Adam step on
  ``λ(‖G(z) − x‖² + μ‖z‖²)`` with ``x`` fixed (the gradient of the reduced objective
  ``min_x Φ(x, z)`` at the inner solution). This is well posed for any λ: for large λ,
  ``x ≈ G(z)`` and the z-step is the range gradient with μ_eff = λμ. So soft with λ → ∞ and μ = μ_range / λ
  tends to range with μ_range (tested); with μ fixed it tends to range with μ → ∞, i.e. ``G(0)``.
  Joint Adam on ``(x, z)`` does not have this limit: for large λ both chase each other and the data
  barely move them.
- ``restarts`` initial codes per measurement (restart 0: ``z_init``, e.g. the encoder's mean of the
  FBP for a VAE prior, else ``z = 0``; the others ``z ~ N(0, I)``, seeded); per measurement the
  restart with the lowest final objective is kept.
- ``nonnegative``: range reconstructs ``max(G(z), 0)``; soft clips ``x`` at 0 after each inner
  solve (a projection of the CG iterate, not the exact constrained minimiser).

Units: μ and λ are in the units of the formulas above (sums of squares over measurement pixels,
image pixels and latent entries), so the best values depend on the geometry and noise level (as TV's
α does). As a MAP estimate with noise std σ (per measurement pixel) and a residual std τ of the
images about the range, ``μ_range ≈ σ²``, ``λ ≈ σ²/τ²`` and ``μ_soft ≈ τ²``.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch

from ..physics.operator import LinearOperator
from .conjugate_gradient import conjugate_gradients, sum_of_squares

__all__ = ["MODES", "RESTART_STD", "check_settings", "generative_reconstruction"]

MODES = ("range", "soft")
RESTART_STD = 1.0  # std of the random initial codes of restarts 1, 2, …


def check_settings(mode: str, mu: float, lam: float, iterations: int, restarts: int, lr: float,
                   cg_iterations: int) -> None:
    """A ``ValueError`` naming the first bad setting of :func:`generative_reconstruction`."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    for name, value in (("mu", mu), ("lam", lam), ("lr", lr)):
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if mu < 0:
        raise ValueError(f"mu must be >= 0, got {mu}")
    if mode == "soft" and lam <= 0:
        raise ValueError(f"lam must be > 0 for mode 'soft' (the weight of ‖G(z) − x‖²), got {lam}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    for name, value in (("iterations", iterations), ("restarts", restarts), ("cg_iterations", cg_iterations)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def generative_reconstruction(
    generator: torch.nn.Module,
    operator: LinearOperator,
    measurement: torch.Tensor,
    mode: str = "range",
    mu: float = 0.1,
    lam: float = 10.0,
    iterations: int = 200,
    restarts: int = 1,
    lr: float = 0.05,
    cg_iterations: int = 5,
    nonnegative: bool = False,
    z_init: Optional[torch.Tensor] = None,
    seed: int = 0,
) -> Dict[str, torch.Tensor]:
    """Range or soft generative-regularised reconstruction of a batch of measurements.

    Args:
        generator: ``G: (N, latent_dim) -> (N, *operator.domain_shape)``; its parameters are not
            changed (gradients are taken w.r.t. ``z`` only).
        operator: the forward model ``A``.
        measurement: ``y (B, *operator.range_shape)``.
        mode, mu, lam: the objective (module docstring); ``lam`` is unused by ``range``.
        iterations: Adam steps on ``z`` (cosine-annealed from ``lr`` to 0).
        restarts: initial codes per measurement; the one with the lowest final objective is kept.
        cg_iterations: conjugate-gradient steps on ``x`` per iteration (soft).
        nonnegative: ``x ≥ 0`` (module docstring).
        z_init: ``(B, latent_dim)`` code of restart 0 (default: 0); restarts ≥ 1 draw
            ``N(0, I)`` from a generator seeded with ``seed``.

    Returns:
        ``{"x": (B, *domain), "z": (B, latent_dim), "objective": (B,), "misfit": (B,)}`` of the kept
        restart; ``misfit`` is ``‖A x − y‖²``.

    Runs with gradients enabled even inside ``torch.no_grad``/``torch.inference_mode`` (validation
    and test loops); the returned tensors carry no graph.
    """
    check_settings(mode, mu, lam, iterations, restarts, lr, cg_iterations)
    latent_dim = int(getattr(generator, "latent_dim"))
    batch = measurement.shape[0]
    if tuple(measurement.shape[1:]) != tuple(operator.range_shape):
        raise ValueError(f"measurement must be (B, {', '.join(map(str, operator.range_shape))}), "
                         f"got {tuple(measurement.shape)}")
    if z_init is not None and tuple(z_init.shape) != (batch, latent_dim):
        raise ValueError(f"z_init must be ({batch}, {latent_dim}), got {tuple(z_init.shape)}")
    device, dtype = measurement.device, measurement.dtype
    with torch.inference_mode(False), torch.enable_grad():
        y = measurement.detach().clone().repeat(restarts, *([1] * (measurement.dim() - 1)))  # restart-major
        start = torch.zeros(restarts, batch, latent_dim, device=device, dtype=dtype)
        if z_init is not None:
            start[0] = z_init.detach().clone().to(device, dtype)
        if restarts > 1:
            draws = torch.randn(restarts - 1, batch, latent_dim, generator=torch.Generator().manual_seed(seed),
                                dtype=dtype)
            start[1:] = RESTART_STD * draws.to(device)
        z = start.reshape(restarts * batch, latent_dim).requires_grad_(True)
        optimizer = torch.optim.Adam([z], lr=lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, iterations) / iterations)))

        def image(code: torch.Tensor) -> torch.Tensor:
            out = generator(code)
            return out.clamp_min(0) if nonnegative else out

        def step_z(loss: torch.Tensor) -> None:
            """One Adam step on ``z`` down ``loss`` (gradients w.r.t. ``z`` only: ``G`` stays fixed)."""
            (z.grad,) = torch.autograd.grad(loss, z)
            optimizer.step()
            schedule.step()

        if mode == "range":
            for _ in range(iterations):
                step_z((sum_of_squares(operator(image(z)) - y) + mu * sum_of_squares(z)).sum())
            with torch.no_grad():
                x = image(z)
                misfit = sum_of_squares(operator(x) - y)
                objective = misfit + mu * sum_of_squares(z)
        else:
            back_projection = operator.apply_adjoint(y).detach()

            def normal(v: torch.Tensor) -> torch.Tensor:
                return operator.apply_adjoint(operator(v)) + lam * v

            def solve_x(x: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
                x = conjugate_gradients(normal, back_projection + lam * generated, x, cg_iterations)
                return x.clamp_min(0) if nonnegative else x

            with torch.no_grad():
                x = generator(z).detach()
            for _ in range(iterations):
                generated = generator(z)
                with torch.no_grad():
                    x = solve_x(x, generated.detach())
                step_z(lam * (sum_of_squares(generated - x) + mu * sum_of_squares(z)).sum())
            with torch.no_grad():
                generated = generator(z)
                x = solve_x(x, generated)
                misfit = sum_of_squares(operator(x) - y)
                objective = misfit + lam * (sum_of_squares(generated - x) + mu * sum_of_squares(z))
        best = objective.view(restarts, batch).argmin(dim=0)
        keep = best * batch + torch.arange(batch, device=device)
        return {"x": x[keep].detach(), "z": z[keep].detach(), "objective": objective[keep].detach(),
                "misfit": misfit[keep].detach()}
