"""Classical baselines for the same results table: FBP and TV, parameters tuned on validation data.

Both have nothing to train: run them with ``train.py test`` (or ``trainer.test``); when
``tune=True`` they first pick their parameters by mean PSNR on the first ``tune_samples``
validation samples of the data module, and record the choice in their hyperparameters.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence

import torch
from lightning.pytorch.utilities import rank_zero_info

from ..metrics import psnr
from ..physics.fbp import FBP
from ..physics.geometry import Geometry2D
from ..solvers.tv import tune_alpha, tv_pdhg
from .base import ReconstructionModule, TunedOnValidation

__all__ = ["FBPBaseline", "TVBaseline"]


class FBPBaseline(TunedOnValidation, ReconstructionModule):
    """Filtered back-projection; with ``tune=True`` the filter and frequency scaling maximise the
    validation PSNR over ``filters`` × ``frequency_scalings``."""

    def __init__(self, tune: bool = True, filters: Sequence[str] = ("Ram-Lak", "Shepp-Logan", "Cosine", "Hamming", "Hann"),
                 frequency_scalings: Sequence[float] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
                 tune_samples: int = 50, method_name: str = "FBP", **kwargs):
        super().__init__(method_name=method_name, **kwargs)

    def tune_on(self, measurement: torch.Tensor, truth: torch.Tensor) -> None:
        scores = {}
        for filter_type in self.hparams.filters:
            for scaling in self.hparams.frequency_scalings:
                fbp = FBP(self.forward_model, filter_type, scaling, ray_transform=self.operator).to(self.device)
                scores[(filter_type, scaling)] = float(psnr(fbp(measurement), truth).mean())
        (filter_type, scaling), best = max(scores.items(), key=lambda item: item[1])
        self.fbp = FBP(self.forward_model, filter_type, scaling, ray_transform=self.operator).to(self.device)
        self.hparams.update(fbp_filter=filter_type, fbp_frequency_scaling=scaling)
        rank_zero_info(f"FBP tuned on {len(truth)} validation samples: {filter_type}, frequency scaling {scaling} "
                       f"({best:.2f} dB)")

    def reconstruct(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        return self.fbp(batch["measurement"])


class TVBaseline(TunedOnValidation, ReconstructionModule):
    """``argmin_x ½‖Ax − y‖² + α TV(x)``, x ≥ 0, by PDHG; ``tune=True`` picks α from ``alphas``
    by validation PSNR.

    α is stated in pixel units, whatever the geometry's length unit: with pixels of side ``p``
    (metres for LoDoPaB) ``A`` and ``y`` are ``p`` times their pixel-unit values, so the solver
    uses ``α p²`` and the same α gives the same reconstruction in any unit."""

    def __init__(self, alpha: float = 1.0, iterations: int = 500, nonnegative: bool = True, tune: bool = True,
                 alphas: Sequence[float] = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0), tune_samples: int = 20,
                 method_name: str = "TV", **kwargs):
        super().__init__(method_name=method_name, **kwargs)

    @property
    def unit_scale(self) -> float:
        """``p²``, the pixel area in the geometry's length unit (1 for other operators)."""
        return float(math.prod(self.forward_model.pixel_size)) if isinstance(self.forward_model, Geometry2D) else 1.0

    def tune_on(self, measurement: torch.Tensor, truth: torch.Tensor) -> None:
        scaled = [a * self.unit_scale for a in self.hparams.alphas]
        best, _ = tune_alpha(measurement, truth, self.operator, alphas=scaled, iterations=self.hparams.iterations)
        chosen = min(range(len(scaled)), key=lambda i: abs(scaled[i] - best))
        self.hparams.update(alpha=float(self.hparams.alphas[chosen]))
        rank_zero_info(f"TV tuned on {len(truth)} validation samples: alpha {self.hparams.alpha:g} (pixel units)")

    def reconstruct(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        return tv_pdhg(batch["measurement"], self.operator, self.hparams.alpha * self.unit_scale,
                       iterations=self.hparams.iterations, nonnegative=self.hparams.nonnegative)
