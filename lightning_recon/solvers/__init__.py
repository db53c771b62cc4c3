"""Iterative solvers: plain functions on a :class:`~lightning_recon.physics.operator.LinearOperator`
(no Lightning, no networks), used by the methods, the unrolled networks and the benchmarks.

- :mod:`.tv`: total variation, its gradient/divergence, TV-regularised reconstruction by PDHG
  (``tv_pdhg``) and the choice of its weight on validation pairs (``tune_alpha``).
- :mod:`.ista`: ISTA / FISTA for ℓ¹-regularised least squares and its shrinkage (``shrink``).
- :mod:`.proximal_gradient`: proximal gradient with a non-negativity or ℓ¹ regulariser.
- :mod:`.conjugate_gradient`: batched conjugate gradients (one SPD system per sample).
- :mod:`.generative`: range / soft reconstruction with a generator as regulariser
  (``generative_reconstruction``).
- :mod:`.pnp`: plug-and-play priors with a denoiser callable ``denoise(x, σ)``: PnP-HQS with a
  decreasing σ schedule (DPIR), PnP-ADMM, PnP-PGD, RED (``pnp``, ``sigma_schedule``).
"""
from .conjugate_gradient import conjugate_gradients, sum_of_squares
from .generative import generative_reconstruction
from .ista import ista, shrink
from .pnp import pnp, pnp_admm, pnp_hqs, pnp_pgd, red, sigma_schedule
from .proximal_gradient import proximal_gradient
from .tv import divergence, gradient, total_variation, tune_alpha, tv_pdhg

__all__ = ["conjugate_gradients", "divergence", "generative_reconstruction", "gradient", "ista", "pnp", "pnp_admm",
           "pnp_hqs", "pnp_pgd", "proximal_gradient", "red", "shrink", "sigma_schedule", "sum_of_squares",
           "total_variation", "tune_alpha", "tv_pdhg"]
