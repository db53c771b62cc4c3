"""Total-variation regularised reconstruction by PDHG (Chambolle & Pock 2011), batched in torch.

Solves ``argmin_x ½‖Ax − y‖² + α TV(x)`` (optionally ``x ≥ 0``) with isotropic TV on forward
differences, for a whole batch at once on the tensor's device.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple, Union

import torch
from tqdm import tqdm

from ..metrics import psnr

__all__ = ["gradient", "divergence", "total_variation", "tv_pdhg", "tune_alpha"]


def gradient(x: torch.Tensor) -> torch.Tensor:
    """Forward differences with zero flux at the border: ``(B, 1, H, W) -> (B, 2, H, W)``."""
    dx = torch.zeros_like(x)
    dy = torch.zeros_like(x)
    dx[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    dy[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    return torch.cat([dx, dy], dim=1)


def divergence(p: torch.Tensor) -> torch.Tensor:
    """Negative adjoint of :func:`gradient`: ``(B, 2, H, W) -> (B, 1, H, W)``."""
    px, py = p[:, :1], p[:, 1:2]
    div = torch.zeros_like(px)
    div[..., :-1, :] += px[..., :-1, :]
    div[..., 1:, :] -= px[..., :-1, :]
    div[..., :, :-1] += py[..., :, :-1]
    div[..., :, 1:] -= py[..., :, :-1]
    return div


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Isotropic TV per image, ``Σ √(dx² + dy²)``: ``(B, 1, H, W) -> (B,)``."""
    return gradient(x).pow(2).sum(1).sqrt().flatten(1).sum(1)


@torch.no_grad()
def tv_pdhg(
    y: torch.Tensor,
    ray_transform,
    alpha: Union[float, torch.Tensor],
    iterations: int = 500,
    nonnegative: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """TV-regularised reconstruction of sinograms ``y (B, 1, A, D)`` → images ``(B, 1, H, W)``.

    Args:
        ray_transform: the :class:`~lightning_recon.physics.RayTransform` ``A``.
        alpha: TV weight, a float or one per sample ``(B,)``; in the units of ``½‖Ax − y‖²``.
        iterations: PDHG iterations on the normalised operator ``K = [A / ‖A‖; ∇]`` with
            ``σ = τ = 0.99 / 3`` (‖K‖² ≤ 1 + 8).
        nonnegative: project onto ``x ≥ 0``.
    """
    if y.dim() != 4 or y.shape[1] != 1:
        raise ValueError(f"y must be sinograms (B, 1, A, D), got shape {tuple(y.shape)}")
    alpha = torch.as_tensor(alpha, dtype=y.dtype, device=y.device)
    if alpha.dim() == 0:
        alpha = alpha.expand(y.shape[0])
    if alpha.shape != (y.shape[0],) or not torch.isfinite(alpha).all() or (alpha < 0).any():
        raise ValueError(f"alpha must be a finite number >= 0 or one per sample, got {alpha.tolist()}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    # same minimiser with A / ‖A‖, y / ‖A‖ and α / ‖A‖²: balances the data and TV blocks of K
    norm = ray_transform.operator_norm()
    y = y / norm
    alpha = alpha.view(-1, 1, 1, 1) / norm**2
    step = 0.99 / math.sqrt(1.0 + 8.0)
    x = torch.zeros_like(ray_transform.adjoint(y))
    x_bar = x.clone()
    dual_data = torch.zeros_like(y)
    dual_tv = torch.zeros_like(gradient(x))
    for _ in tqdm(range(iterations), desc="TV-PDHG", disable=not progress, leave=False):
        # dual of ½‖· − y‖²: prox is (v − σ y) / (1 + σ)
        dual_data = (dual_data + step * (ray_transform(x_bar) / norm - y)) / (1 + step)
        # dual of α‖·‖_{2,1}: projection onto pointwise balls of radius α
        dual_tv = dual_tv + step * gradient(x_bar)
        dual_tv = dual_tv / torch.clamp(dual_tv.pow(2).sum(1, keepdim=True).sqrt() / alpha.clamp_min(1e-12), min=1.0)
        x_new = x - step * (ray_transform.adjoint(dual_data) / norm - divergence(dual_tv))
        if nonnegative:
            x_new = x_new.clamp_min(0)
        x_bar = 2 * x_new - x
        x = x_new
    return x


def tune_alpha(
    measurements: torch.Tensor,
    truths: torch.Tensor,
    ray_transform,
    alphas: Sequence[float],
    iterations: int = 500,
) -> Tuple[float, Dict[float, float]]:
    """The α of ``alphas`` with the best mean PSNR (per-image range) on validation pairs.

    All α run as one batch. Returns ``(best_alpha, {alpha: mean PSNR})``.
    """
    if len(alphas) == 0:
        raise ValueError("alphas must not be empty")
    n = len(measurements)
    stacked = measurements.repeat(len(alphas), 1, 1, 1)
    weights = torch.tensor([float(a) for a in alphas], device=measurements.device).repeat_interleave(n)
    recon = tv_pdhg(stacked, ray_transform, weights, iterations=iterations)
    scores = psnr(recon, truths.repeat(len(alphas), 1, 1, 1)).view(len(alphas), n).mean(1)
    table = {float(a): float(s) for a, s in zip(alphas, scores)}
    return max(table, key=table.get), table
