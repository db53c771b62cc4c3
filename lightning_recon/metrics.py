"""Per-image PSNR and SSIM in the two data-range conventions of the benchmarks.

- ``data_range=None``: per image, ``max − min`` of its ground truth (dival's convention).
- ``data_range=<float>``: one fixed range for all images (e.g. the maximum over the training
  ground truths; 1.0 for the [0, 1]-normalised ellipses).

Values are averaged per image, never pooled over the batch. SSIM uses a 7×7 uniform window
(as scikit-image's ``structural_similarity``, which dival reports).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

__all__ = ["psnr", "ssim", "image_metrics"]


def _check(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(
            f"pred and target must both be (B, C, H, W) of the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )


def _ranges(target: torch.Tensor, data_range: Optional[float]) -> list:
    if data_range is not None:
        return [float(data_range)] * target.shape[0]
    flat = target.flatten(1)
    return (flat.amax(1) - flat.amin(1)).clamp_min(1e-12).tolist()


@torch.no_grad()
def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: Optional[float] = None) -> torch.Tensor:
    """PSNR in dB per image, shape ``(B,)``."""
    _check(pred, target)
    pred, target = pred.float(), target.float()
    return torch.stack([
        peak_signal_noise_ratio(p, t, data_range=r)
        for p, t, r in zip(pred, target, _ranges(target, data_range))
    ])


@torch.no_grad()
def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: Optional[float] = None) -> torch.Tensor:
    """SSIM per image (7×7 uniform window), shape ``(B,)``."""
    _check(pred, target)
    pred, target = pred.float(), target.float()
    with torch.autocast(pred.device.type, enabled=False):  # bf16 convolutions ruin σ² = E[x²] − μ²
        return torch.stack([
            structural_similarity_index_measure(p[None], t[None], data_range=r, gaussian_kernel=False, kernel_size=7)
            for p, t, r in zip(pred, target, _ranges(target, data_range))
        ])


def image_metrics(pred: torch.Tensor, target: torch.Tensor, fixed_range: float = 1.0) -> Dict[str, torch.Tensor]:
    """All four per-image numbers: ``psnr``, ``ssim`` (per-image range) and ``psnr_fixed``, ``ssim_fixed``."""
    return {
        "psnr": psnr(pred, target),
        "ssim": ssim(pred, target),
        "psnr_fixed": psnr(pred, target, fixed_range),
        "ssim_fixed": ssim(pred, target, fixed_range),
    }
