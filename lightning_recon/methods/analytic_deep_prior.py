"""Analytic deep prior (Dittmer, Kluth, Maass & Baguer 2019) for CT, on one measurement.

The network is an algorithm: ``φ_B(y)`` = ``L`` proximal-gradient iterations for
``½‖B x − y‖² + α R(x)`` from ``x₀ = 0``,

    x_{k+1} = prox_{η α R}(x_k − η Bᵀ(B x_k − y)),   η = 1 / (‖A‖ max|ĥ_θ|)² ≤ 1 / ‖B‖²,

with ``R`` the non-negativity indicator (prox: ReLU) or ``‖x‖₁`` plus non-negativity (prox:
``ReLU(x − η α)``). Its only trainable weights are those of the operator ``B``, initialised as ``A``
and trained on the single measurement by ``min_B ‖A φ_B(y) − y‖² / ‖y‖²`` (Adam). ``ĥ_θ`` is the
frequency response of ``I + K_θ`` (its largest magnitude bounds ``‖I + K_θ‖``). Here

    B = A (I + K_θ),   Bᵀ = (I + K_θ)ᵀ Aᵀ,

with ``K_θ`` one ``kernel_size``² convolution of the image (zero at the start, so ``φ_B`` starts as
the plain proximal-gradient reconstruction it is compared with): ``δ = A K_θ`` is a learned, local,
shift-invariant correction of the forward model with ``kernel_size²`` numbers, and the adjoint stays
exact. The result is ``φ_B(y)`` with the trained ``B`` (no early stopping: ``L`` fixed).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..solvers.proximal_gradient import REGULARISERS, proximal_gradient
from .single_measurement import SingleMeasurementModule

__all__ = ["AnalyticDeepPrior"]


class AnalyticDeepPrior(SingleMeasurementModule):
    """ADP on one sinogram ``(1, 1, A, D)``: fit with ``trainer.fit(model, RepeatedMeasurement(y[0], n).loader())``
    (one Adam step on ``K_θ`` per Lightning step); ``reconstruction`` is ``φ_B(y)``.

    Args:
        forward_model: the CT geometry (dict of numbers).
        iterations: ``L``, proximal-gradient iterations inside ``φ_B``.
        regulariser: ``"nonnegative"`` or ``"l1"`` (with non-negativity); ``alpha`` weights ``‖x‖₁``.
        kernel_size: side of the learned convolution ``K_θ`` (odd).
        lr: Adam learning rate of ``K_θ``.
        reference: optional image ``(H, W)`` for PSNR logging and ``psnr_curve`` (not used to fit).
    """

    logs_reference_ssim = False

    def __init__(self, forward_model: Dict[str, Any], iterations: int = 50, regulariser: str = "nonnegative",
                 alpha: float = 0.0, kernel_size: int = 5, lr: float = 1e-3, **kwargs):
        super().__init__(forward_model, lr=lr, **kwargs)
        if regulariser not in REGULARISERS:
            raise ValueError(f"regulariser must be one of {REGULARISERS}, got {regulariser!r}")
        if iterations < 1 or kernel_size < 1 or kernel_size % 2 == 0 or alpha < 0:
            raise ValueError(f"need iterations >= 1, an odd kernel_size >= 1 and alpha >= 0; got {iterations}, "
                             f"{kernel_size}, {alpha}")
        if self.fbp is None:
            raise ValueError("AnalyticDeepPrior is for 2D CT geometries")
        self.kernel = nn.Parameter(torch.zeros(1, 1, kernel_size, kernel_size))
        self.psnr_curve: List[float] = []
        self.reconstruction: Optional[torch.Tensor] = None

    def corrected_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x = A (x + K_θ x)``: ``(N, 1, H, W) -> (N, 1, A, D)``."""
        return self.operator(x + F.conv2d(x, self.kernel, padding=self.hparams.kernel_size // 2))

    def corrected_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``Bᵀ y = u + K_θᵀ u`` with ``u = Aᵀ y``: ``(N, 1, A, D) -> (N, 1, H, W)``."""
        u = self.operator.adjoint(y)
        return u + F.conv_transpose2d(u, self.kernel, padding=self.hparams.kernel_size // 2)

    def reconstruct(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """``φ_B(y)`` for measurements ``(N, 1, A, D)``."""
        # ‖I + K_θ‖ ≤ max |frequency response|: the step stays below 1/‖B‖², φ_B a convergent scheme
        size = self.hparams.kernel_size
        identity = F.pad(torch.ones(1, 1, 1, 1, device=self.kernel.device), (size // 2,) * 4)
        response = torch.fft.fft2(identity + self.kernel, s=(64, 64)).abs().max()
        step = 1.0 / (self.operator.operator_norm(device=batch["measurement"].device) * response) ** 2
        return proximal_gradient(self.corrected_forward, self.corrected_adjoint, batch["measurement"],
                                 self.forward_model.image_shape, self.hparams.iterations, step, self.hparams.alpha,
                                 self.hparams.regulariser)

    def training_step(self, y: torch.Tensor, batch_idx: int):
        x = self(y)
        loss = (self.operator(x) - y).pow(2).sum() / y.pow(2).sum()
        self.losses.append(float(loss.detach()))
        self.reconstruction = x.detach()
        self.log("train/loss", loss, prog_bar=True, batch_size=1)
        value = self.log_reference_scores(x)
        if value is not None:
            self.psnr_curve.append(float(value))
        return loss

    def on_train_end(self) -> None:
        """The result is ``φ_B(y)`` with the final ``B`` (the last step's image predates its update)."""
        y = self.trainer.train_dataloader.dataset.measurement[None].to(self.device)
        with torch.no_grad():
            self.reconstruction = self(y)

    def configure_optimizers(self):
        return torch.optim.Adam([self.kernel], lr=self.hparams.lr)
