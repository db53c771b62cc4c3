"""Per-image PSNR and SSIM in the two data-range conventions of the benchmarks.

- ``data_range=None``: per image, ``max − min`` of its ground truth (dival's convention).
- ``data_range=<float>``: one fixed range for all images (e.g. the maximum over the training
  ground truths; 1.0 for the [0, 1]-normalised ellipses).

Values are averaged per image, never pooled over the batch. SSIM uses a 7×7 uniform window
(as scikit-image's ``structural_similarity``, which dival reports).

Posterior samplers are judged by the calibration of their samples: ``interval_coverage`` (the
central interval from the samples' empirical quantiles), ``spearman_std_error`` (does the
pixel-wise std point at the errors?) and ``mean_pairwise_distance`` (do the samples differ?).
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch
from scipy.stats import spearmanr
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

__all__ = ["psnr", "ssim", "image_metrics", "per_sample_nmse_db", "set_nmse_db", "interval_coverage", "mean_pairwise_distance", "spearman_std_error"]


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


@torch.no_grad()
def interval_coverage(samples: torch.Tensor, truth: torch.Tensor, level: float = 0.9) -> float:
    """Fraction of pixels whose true value lies in the central ``level`` interval of the samples.

    The interval per pixel runs from the ``(1 − level)/2`` to the ``(1 + level)/2`` empirical
    quantile of ``samples (S, *shape)`` (linear interpolation, as ``torch.quantile``); ``truth``
    has ``shape``. A calibrated sampler gives about ``level``.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if samples.dim() < 2 or samples.shape[1:] != truth.shape or samples.shape[0] < 2:
        raise ValueError(f"samples must be (S >= 2, *truth.shape) with truth {tuple(truth.shape)}, "
                         f"got {tuple(samples.shape)}")
    ordered = samples.float().sort(dim=0).values
    last = samples.shape[0] - 1

    def quantile(q: float) -> torch.Tensor:
        position = q * last
        below = int(position)
        above = min(below + 1, last)
        return torch.lerp(ordered[below], ordered[above], position - below)

    low, high = quantile((1 - level) / 2), quantile((1 + level) / 2)
    truth = truth.float()
    return float(((truth >= low) & (truth <= high)).float().mean())


@torch.no_grad()
def spearman_std_error(std: torch.Tensor, error: torch.Tensor) -> float:
    """Spearman rank correlation between pixel-wise std and absolute error, over all pixels."""
    if std.shape != error.shape:
        raise ValueError(f"std and error must have the same shape, got {tuple(std.shape)} and {tuple(error.shape)}")
    return float(spearmanr(std.flatten().double().cpu().numpy(), error.abs().flatten().double().cpu().numpy())[0])


@torch.no_grad()
def mean_pairwise_distance(samples: torch.Tensor) -> torch.Tensor:
    """RMS difference between two distinct samples, averaged over all pairs: ``(S, B, ...) -> (B,)``.

    Same units as the images; 0 means all samples of a measurement are identical.
    """
    if samples.dim() < 3 or samples.shape[0] < 2:
        raise ValueError(f"samples must be (S >= 2, B, ...) with at least one value per sample, got {tuple(samples.shape)}")
    flat = samples.float().flatten(2).transpose(0, 1)  # (B, S, P)
    distances = torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist")  # (B, S, S), zero diagonal
    distances = distances / flat.shape[-1] ** 0.5
    count = samples.shape[0]
    return distances.sum(dim=(1, 2)) / (count * (count - 1))


# -- sparse recovery (LISTA, light-field volumes) -------------------------------------------------
@torch.no_grad()
def per_sample_nmse_db(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Normalised MSE ``10 log10(‖pred − target‖² / ‖target‖²)`` in dB of each sample, shape ``(B,)``
    (the NMSE of a set is :func:`set_nmse_db`, not the mean of these)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    error = (pred - target).flatten(1).pow(2).sum(1)
    return 10 * torch.log10(error / target.flatten(1).pow(2).sum(1).clamp_min(1e-20))


def set_nmse_db(error: torch.Tensor, energy: torch.Tensor) -> float:
    """NMSE of a set in dB, ``10 log10(Σ error / Σ energy)`` (one number), from per-sample squared errors
    ‖x̂ − x‖² and energies ‖x‖² (the LISTA literature's average: an all-zero sample has no NMSE alone)."""
    return float(10 * torch.log10(error.sum() / energy.sum().clamp_min(1e-20)))


@torch.no_grad()
def find_peaks(volume: torch.Tensor, threshold: float, min_distance: int = 1) -> torch.Tensor:
    """Local maxima ``(n, 3)`` (depth, row, column) of a volume ``(D, H, W)`` that reach ``threshold``.

    A voxel is a peak when it is the maximum of its ``(2 min_distance + 1)³`` neighbourhood.
    """
    if volume.dim() != 3:
        raise ValueError(f"volume must be (D, H, W), got {tuple(volume.shape)}")
    size = 2 * min_distance + 1
    pooled = torch.nn.functional.max_pool3d(volume[None, None].float(), size, stride=1, padding=min_distance)[0, 0]
    return torch.nonzero((volume == pooled) & (volume >= threshold)).float()


def detection_scores(found: torch.Tensor, true: torch.Tensor, tolerance: float = 2.0) -> Dict[str, float]:
    """Precision, recall and F1 of detected positions ``(n, 3)`` against true ones ``(m, 3)``.

    One-to-one matching (Hungarian algorithm) that first maximises the number of pairs closer than
    ``tolerance`` (Euclidean, in planes and pixels), then minimises their total distance.
    """
    from scipy.optimize import linear_sum_assignment

    if len(found) == 0 or len(true) == 0:
        matched = 0
    else:
        distance = torch.cdist(found.double(), true.double()).cpu().numpy()
        # a pair beyond tolerance costs more than any set of admissible pairs
        rows, cols = linear_sum_assignment(np.where(distance <= tolerance, distance, tolerance * (distance.size + 1)))
        matched = int((distance[rows, cols] <= tolerance).sum())
    precision = matched / len(found) if len(found) else float(len(true) == 0)
    recall = matched / len(true) if len(true) else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}
