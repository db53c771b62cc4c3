"""Sparse recovery: (F)ISTA baseline and learned ISTA for light-field volumes and sparse coding.

Both solve ``y = A x + e`` for sparse ``x`` (non-negative for fluorescence), with ``A`` a
light-field model or a dictionary given by plain numbers (``forward_model``: a ``LightFieldGeometry``
or ``SparseCodingProblem`` dict, linked from the data module by the CLI). Metrics: ``val/nmse``
(dB), ``val/psnr`` (fixed data range), and for volumes ``val/f1``, the F1 score of detected
neuron positions; the test table has NMSE, F1 and the time per sample.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence

import torch
from lightning.pytorch.utilities import rank_zero_info

from ..metrics import detection_scores, find_peaks, set_nmse_db
from ..nets.lista import LISTA
from ..solvers.ista import ista
from .base import ReconstructionModule, TunedOnValidation

__all__ = ["ISTABaseline", "LearnedISTA", "SparseRecoveryModule"]


class SparseRecoveryModule(ReconstructionModule):
    """The :class:`ReconstructionModule` of sparse recovery: NMSE and detection scores.

    Args:
        forward_model: ``LightFieldGeometry`` or ``SparseCodingProblem`` as a dict of numbers.
        peak_threshold: a reconstructed voxel counts as a neuron when it is a local maximum ≥ this.
        match_tolerance: detection distance (planes and pixels) for ``f1``.
        **kwargs: ``data_range`` (of ``val/psnr``; neuron peaks are ≤ 1), ``method_name``,
            ``results_dir``, optimisation settings: see :class:`ReconstructionModule`.
    """

    def __init__(self, forward_model: Dict[str, Any], peak_threshold: float = 0.2, match_tolerance: float = 2.0,
                 **kwargs):
        super().__init__(forward_model, **kwargs)

    def test_scores(self, pred: torch.Tensor, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """Per-sample squared ``error`` ‖x̂ − x‖² and ``energy`` ‖x‖² (NMSE = Σ error / Σ energy over
        a set, as in the LISTA literature: a single all-zero code has no NMSE of its own) and, for
        volumes with known centres, detection ``f1``."""
        truth = batch["ground_truth"]
        out = {"error": (pred - truth).flatten(1).pow(2).sum(1), "energy": truth.flatten(1).pow(2).sum(1)}
        if "centres" in batch:
            f1 = [detection_scores(find_peaks(p, self.hparams.peak_threshold), c[: int(n)],
                                   self.hparams.match_tolerance)["f1"]
                  for p, c, n in zip(pred.detach(), batch["centres"], batch["num_neurons"])]
            out["f1"] = torch.tensor(f1, device=pred.device)
        return out

    def validation_extras(self, pred: torch.Tensor, batch: Dict[str, Any]) -> None:
        scores = self.test_scores(pred, batch)
        size = len(pred)
        self.log("val/nmse", set_nmse_db(scores["error"], scores["energy"]), prog_bar=True, sync_dist=True,
                 batch_size=size)
        if "f1" in scores:
            self.log("val/f1", scores["f1"].mean(), sync_dist=True, batch_size=size)

    def summarise_test(self, scores: Dict[str, torch.Tensor]) -> Dict[str, Any]:
        row = {"method": self.method_name, "nmse": set_nmse_db(scores["error"], scores["energy"])}
        if "f1" in scores:
            row["f1"] = float(scores["f1"].mean())
        row["seconds_per_image"] = float(scores["seconds"].mean())
        row["images"] = len(scores["seconds"])
        return row


class LearnedISTA(SparseRecoveryModule):
    """LISTA (:class:`~lightning_recon.nets.LISTA`) trained on simulated pairs.

    Loss: ``supervised_weight · MSE(x̂, x)`` over the samples whose ground truth may be used
    (``labelled``) plus ``consistency_weight · MSE(A x̂, y)`` over all (self-supervised). Setting
    ``labelled_fraction`` < 1 in the data module gives the mixed "small ground-truth set +
    consistency" regime.

    Args:
        num_layers, tied, nonnegative, sparsity_weight: see :class:`~lightning_recon.nets.LISTA`.
        supervised_weight, consistency_weight: loss weights (at least one > 0).
        **kwargs: ``lr``, ``scheduler`` and the other settings of :class:`SparseRecoveryModule`.
    """

    def __init__(self, forward_model: Dict[str, Any], num_layers: int = 10, tied: bool = False, nonnegative: bool = True,
                 sparsity_weight: float = 0.01, supervised_weight: float = 1.0, consistency_weight: float = 0.0,
                 **kwargs):
        super().__init__(forward_model, **kwargs)
        if supervised_weight < 0 or consistency_weight < 0 or supervised_weight + consistency_weight == 0:
            raise ValueError("supervised_weight and consistency_weight must be >= 0 with at least one > 0, got "
                             f"{supervised_weight} and {consistency_weight}")
        self.net = LISTA(self.operator, num_layers=num_layers, tied=tied, nonnegative=nonnegative,
                         sparsity_weight=sparsity_weight)

    def reconstruct(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(batch["measurement"])

    def training_step(self, batch, batch_idx):
        measurement, truth = batch["measurement"], batch["ground_truth"]
        pred = self.net(measurement)
        loss = pred.new_zeros(())
        labelled = batch["labelled"].bool()
        if self.hparams.supervised_weight and labelled.any():
            supervised = torch.nn.functional.mse_loss(pred[labelled], truth[labelled])
            self.log("train/supervised", supervised, batch_size=int(labelled.sum()))
            loss = loss + self.hparams.supervised_weight * supervised
        if self.hparams.consistency_weight:
            consistency = torch.nn.functional.mse_loss(self.operator(pred), measurement)
            self.log("train/consistency", consistency, batch_size=len(pred))
            loss = loss + self.hparams.consistency_weight * consistency
        self.log("train/loss", loss, prog_bar=True, batch_size=len(pred))
        return loss


class ISTABaseline(TunedOnValidation, SparseRecoveryModule):
    """ISTA / FISTA (:func:`~lightning_recon.solvers.ista`) with ``iterations`` steps; nothing to
    train (run ``train.py test``).

    With ``tune=True`` the sparsity weight λ is chosen from ``sparsity_weights`` by mean
    validation NMSE on the first ``tune_samples`` samples before testing.
    """

    def __init__(self, forward_model: Dict[str, Any], iterations: int = 100, sparsity_weight: float = 0.01,
                 accelerated: bool = False, nonnegative: bool = True, tune: bool = True,
                 sparsity_weights: Sequence[float] = (0.001, 0.003, 0.01, 0.03, 0.1), tune_samples: int = 32,
                 **kwargs):
        super().__init__(forward_model, **kwargs)

    def solve(self, measurement: torch.Tensor, sparsity_weight: float) -> torch.Tensor:
        """(F)ISTA with weight λ = ``sparsity_weight``: ``(B, *range) -> (B, *domain)``."""
        return ista(self.operator, measurement, sparsity_weight, self.hparams.iterations,
                    nonnegative=self.hparams.nonnegative, accelerated=self.hparams.accelerated)

    def reconstruct(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        return self.solve(batch["measurement"], self.hparams.sparsity_weight)

    def tune_on(self, y: torch.Tensor, x: torch.Tensor) -> None:
        errors = {lam: set_nmse_db((self.solve(y, lam) - x).pow(2).sum(), x.pow(2).sum())
                  for lam in self.hparams.sparsity_weights}
        best = min(errors, key=errors.get)
        self.hparams.sparsity_weight = best
        rank_zero_info(f"ISTA tuned on {len(x)} validation samples: λ = {best} ({errors[best]:.2f} dB NMSE)")
