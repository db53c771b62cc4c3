"""Sparse recovery: (F)ISTA baseline and learned ISTA for light-field volumes and sparse coding.

Both solve ``y = A x + e`` for sparse ``x`` (non-negative for fluorescence), with ``A`` a
light-field model or a dictionary given by plain numbers (``geometry``: a ``LightFieldGeometry``
or ``SparseCodingProblem`` dict, linked from the data module by the CLI). Metrics: ``val/nmse``
(dB), ``val/psnr`` (fixed data range), and for volumes ``val/f1``, the F1 score of detected
neuron positions.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torchmetrics.image import PeakSignalNoiseRatio

from ..metrics import detection_scores, find_peaks
from ..nets.lista import LISTA, shrink
from ..physics.lightfield import sparse_operator_from_dict
from .base import validation_samples, with_schedule
from .callbacks import publish_panels

__all__ = ["ISTABaseline", "LearnedISTA", "SparseRecoveryModule", "VolumePanels", "ista"]


@torch.no_grad()
def ista(operator, y: torch.Tensor, sparsity_weight: float, iterations: int, nonnegative: bool = True,
         accelerated: bool = False, step: Optional[float] = None,
         callback: Optional[Callable[[int, torch.Tensor], None]] = None) -> torch.Tensor:
    """``argmin_x ½‖A x − y‖² + λ‖x‖₁`` (and ``x ≥ 0``) by ISTA, or FISTA with ``accelerated``.

    Step ``η = 1/‖A‖²`` by default; ``callback(k, x_k)`` runs after iteration ``k = 1 … iterations``.
    ``y (B, *range)`` -> ``x (B, *domain)``, starting from zero.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    step = step if step is not None else 1.0 / operator.operator_norm() ** 2
    x = y.new_zeros((y.shape[0], *operator.domain_shape))
    z, t = x, 1.0
    for k in range(1, iterations + 1):
        x_next = shrink(z - step * operator.adjoint(operator(z) - y), step * sparsity_weight, nonnegative)
        if accelerated:
            t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
            z = x_next + ((t - 1) / t_next) * (x_next - x)
            t = t_next
        else:
            z = x_next
        x = x_next
        if callback is not None:
            callback(k, x)
    return x


def _nmse(scores: Dict[str, torch.Tensor]) -> float:
    """NMSE in dB of a set: ``10 log10(Σ error / Σ energy)``."""
    return float(10 * torch.log10(scores["error"].sum() / scores["energy"].sum().clamp_min(1e-20)))


class SparseRecoveryModule(L.LightningModule):
    """Shared operator, metrics, timing and test numbers of the sparse recovery methods.

    Args:
        geometry: ``LightFieldGeometry`` or ``SparseCodingProblem`` as a dict of numbers.
        data_range: fixed range of ``val/psnr`` (neuron peaks are ≤ 1).
        peak_threshold: a reconstructed voxel counts as a neuron when it is a local maximum ≥ this.
        match_tolerance: detection distance (planes and pixels) for ``f1``.
        method_name: the name in test logs (default: the class name).
    """

    def __init__(self, geometry: Dict[str, Any], data_range: float = 1.0, peak_threshold: float = 0.2,
                 match_tolerance: float = 2.0, method_name: Optional[str] = None):
        super().__init__()
        self.save_hyperparameters()
        self.operator = sparse_operator_from_dict(geometry)  # cheap; weights are not saved (persistent=False)
        dims = tuple(range(1, 1 + len(self.operator.domain_shape)))
        self.val_psnr = PeakSignalNoiseRatio(data_range=data_range, reduction="elementwise_mean", dim=dims)
        self._test_rows = []

    @property
    def method_name(self) -> str:
        return self.hparams.get("method_name") or type(self).__name__

    def reconstruct(self, measurement: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """``(B, *range)`` -> ``(B, *domain)``."""
        raise NotImplementedError

    def forward(self, measurement: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(measurement)

    def scores(self, pred: torch.Tensor, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
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

    def validation_step(self, batch, batch_idx):
        pred = self.reconstruct(batch["measurement"]).float()
        truth = batch["ground_truth"]
        self.val_psnr(pred, truth)
        self.log("val/psnr", self.val_psnr, prog_bar=True, batch_size=len(truth))
        self.log("val/loss", torch.nn.functional.mse_loss(pred, truth), sync_dist=True, batch_size=len(truth))
        scores = self.scores(pred, batch)
        self.log("val/nmse", _nmse(scores), prog_bar=True, sync_dist=True, batch_size=len(truth))
        if "f1" in scores:
            self.log("val/f1", scores["f1"].mean(), sync_dist=True, batch_size=len(truth))
        return pred

    def on_test_epoch_start(self) -> None:
        self._test_rows = []

    def test_step(self, batch, batch_idx):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        pred = self.reconstruct(batch["measurement"]).float()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / len(pred)
        scores = self.scores(pred, batch)
        scores["seconds"] = torch.full((len(pred),), seconds, device=self.device)
        self._test_rows.append(scores)
        return pred

    def on_test_epoch_end(self) -> None:
        gathered = {k: self.all_gather(torch.cat([row[k] for row in self._test_rows])).reshape(-1).cpu()
                    for k in self._test_rows[0]}
        self.test_results = {"method": self.method_name, "samples": len(gathered["error"]), "nmse": _nmse(gathered),
                             "seconds": float(gathered["seconds"].mean())}
        if "f1" in gathered:
            self.test_results["f1"] = float(gathered["f1"].mean())
        for name, value in self.test_results.items():
            if name not in ("method", "samples"):
                self.log(f"test/{name}", value, rank_zero_only=True)
        rank_zero_info(f"{self.method_name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                          for k, v in self.test_results.items() if k != "method"))

    def predict_step(self, batch, batch_idx):
        return self.reconstruct(batch["measurement"])


class LearnedISTA(SparseRecoveryModule):
    """LISTA (:class:`~lightning_recon.nets.LISTA`) trained on simulated pairs.

    Loss: ``supervised_weight · MSE(x̂, x)`` over the samples whose ground truth may be used
    (``labelled``) plus ``consistency_weight · MSE(A x̂, y)`` over all (self-supervised). Setting
    ``labelled_fraction`` < 1 in the data module gives the mixed "small ground-truth set +
    consistency" regime.

    Args:
        num_layers, tied, nonnegative, sparsity_weight: see :class:`~lightning_recon.nets.LISTA`.
        supervised_weight, consistency_weight: loss weights (at least one > 0).
        lr, scheduler: Adam learning rate; ``"cosine"`` (annealed to 0 over the run) or ``"none"``.
    """

    def __init__(self, geometry: Dict[str, Any], num_layers: int = 10, tied: bool = False, nonnegative: bool = True,
                 sparsity_weight: float = 0.01, supervised_weight: float = 1.0, consistency_weight: float = 0.0,
                 lr: float = 1e-3, scheduler: str = "cosine", **kwargs):
        super().__init__(geometry, **kwargs)
        if supervised_weight < 0 or consistency_weight < 0 or supervised_weight + consistency_weight == 0:
            raise ValueError("supervised_weight and consistency_weight must be >= 0 with at least one > 0, got "
                             f"{supervised_weight} and {consistency_weight}")
        if scheduler not in ("cosine", "none"):
            raise ValueError(f"scheduler must be 'cosine' or 'none', got {scheduler!r}")
        self.save_hyperparameters()
        self.net = LISTA(self.operator, num_layers=num_layers, tied=tied, nonnegative=nonnegative,
                         sparsity_weight=sparsity_weight)

    def reconstruct(self, measurement: torch.Tensor) -> torch.Tensor:
        return self.net(measurement)

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

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr)
        return with_schedule(optimizer, self.hparams.scheduler, self.trainer)


class ISTABaseline(SparseRecoveryModule):
    """ISTA / FISTA with ``iterations`` steps; nothing to train (run ``train.py test``).

    With ``tune=True`` the sparsity weight λ is chosen from ``sparsity_weights`` by mean
    validation NMSE on the first ``tune_samples`` samples before testing.
    """

    def __init__(self, geometry: Dict[str, Any], iterations: int = 100, sparsity_weight: float = 0.01,
                 accelerated: bool = False, nonnegative: bool = True, tune: bool = True,
                 sparsity_weights: Sequence[float] = (0.001, 0.003, 0.01, 0.03, 0.1), tune_samples: int = 32,
                 **kwargs):
        super().__init__(geometry, **kwargs)
        self.save_hyperparameters()

    def reconstruct(self, measurement: torch.Tensor, sparsity_weight: Optional[float] = None) -> torch.Tensor:
        lam = self.hparams.sparsity_weight if sparsity_weight is None else sparsity_weight
        return ista(self.operator, measurement, lam,
                    self.hparams.iterations, nonnegative=self.hparams.nonnegative,
                    accelerated=self.hparams.accelerated)

    def on_test_start(self) -> None:
        self.operator.operator_norm()  # outside the timed steps
        if not self.hparams.tune:
            return
        y, x = (t.to(self.device) for t in validation_samples(self.trainer, self.hparams.tune_samples))
        errors = {lam: _nmse({"error": (self.reconstruct(y, lam) - x).pow(2).sum(), "energy": x.pow(2).sum()})
                  for lam in self.hparams.sparsity_weights}
        best = min(errors, key=errors.get)
        self.hparams.sparsity_weight = best
        rank_zero_info(f"ISTA tuned on {len(x)} validation samples: λ = {best} ({errors[best]:.2f} dB NMSE)")


def projection_panel(truth: torch.Tensor, recon: torch.Tensor, window=(0.0, 1.0), zoom: int = 3) -> torch.Tensor:
    """uint8 RGB ``(3, zoom (H + D'), 2 zoom W)``: max-intensity projections of a ground truth |
    reconstruction volume ``(D, H, W)``, along depth (top) and along rows (bottom, depth stretched
    to ``D'``), enlarged ``zoom`` times (nearest neighbour)."""
    low, high = window
    tiles = []
    for volume in (truth, recon):
        volume = ((volume.float() - low) / (high - low)).clamp(0, 1)
        stretch = max(1, volume.shape[1] // (4 * volume.shape[0]))
        side = volume.amax(dim=1).repeat_interleave(stretch, dim=0)  # (D', W): x–z projection
        tiles.append(torch.cat([volume.amax(dim=0), side], dim=0))
    gray = torch.cat(tiles, dim=1).repeat_interleave(zoom, dim=0).repeat_interleave(zoom, dim=1)
    return (gray.expand(3, *gray.shape) * 255).round().to(torch.uint8).cpu()


class VolumePanels(L.Callback):
    """Max-intensity projections (ground truth | reconstruction) of the first validation volumes.

    Fixed ``window`` in data units; rank zero only; W&B images ``val/projections`` or PNGs under
    ``<log_dir>/panels`` for other loggers.
    """

    def __init__(self, num_samples: int = 4, window=(0.0, 1.0)):
        self.num_samples, self.window = num_samples, tuple(window)
        self._panels = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and trainer.is_global_zero and isinstance(outputs, torch.Tensor) and outputs.dim() == 4:
            n = self.num_samples
            self._panels = [projection_panel(t, r, self.window)
                            for t, r in zip(batch["ground_truth"][:n], outputs[:n].detach())]

    @rank_zero_only
    def on_validation_epoch_end(self, trainer, pl_module):
        if not self._panels or trainer.sanity_checking:
            return
        caption = [f"sample {i}: truth | {pl_module.method_name} (top: along depth, bottom: along rows; "
                   f"window {self.window})" for i in range(len(self._panels))]
        publish_panels(trainer, self._panels, caption, key="val/projections", file_prefix="projections-")
        self._panels = None
