"""Shared training, validation and test logic of the reconstruction methods.

A method subclasses :class:`ReconstructionModule` and implements ``reconstruct(batch)`` mapping a
batch dict (``measurement (B, 1, A, D)``, ``fbp (B, 1, H, W)``, ``ground_truth``) to images
``(B, 1, H, W)``. The base class provides the supervised MSE loss, ``train/loss``,
``val/psnr`` and ``val/ssim`` (torchmetrics, fixed data range), the per-image test table and the
optimiser with a cosine schedule. Operators are submodules without state: they are rebuilt
lazily per process and device, so checkpoints hold only weights and plain hyperparameters.
"""
from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from ..metrics import image_metrics
from ..physics.fbp import FBP
from ..physics.geometry import Geometry, geometry_from_dict
from ..physics.ray_transform import RayTransform

__all__ = ["ReconstructionModule", "validation_samples", "with_schedule", "write_results_table"]

SCHEDULERS = ("cosine", "cosine-time", "none")
TABLE_COLUMNS = ["method", "psnr", "psnr_std", "ssim", "ssim_std", "psnr_fixed", "psnr_fixed_std",
                 "ssim_fixed", "ssim_fixed_std", "seconds_per_image", "images"]


class ReconstructionModule(L.LightningModule):
    """Base LightningModule of every reconstruction method.

    Args:
        geometry: the measurement geometry as a dict of numbers (the CLI links it from the data).
        lr, betas, weight_decay: Adam(W) settings.
        scheduler: ``"cosine"`` (annealed to 0 over ``max_steps``), ``"cosine-time"`` (annealed to 0
            over the trainer's ``max_time`` of training: a fixed time budget, any speed) or ``"none"``.
        data_range: fixed data range for ``val/psnr``/``val/ssim`` and the "fixed" test columns.
        fbp_filter, fbp_frequency_scaling: the FBP used by methods that start from one.
        ray_transform_backend: ``auto``, ``matrix``, ``astra_cuda`` or ``odl``.
        results_dir: where ``test`` writes ``results.csv`` / ``results.md`` (one row per method).
        method_name: the row name in the results table (default: the class name).
        channels_last: keep convolution weights and activations in channels-last memory layout
            (faster cuDNN kernels under bf16 on recent GPUs; see docs/benchmarks.md).
        fused_optimizer: on a GPU, AdamW as one fused kernel instead of a loop over the parameter
            tensors (learned PD has ~120 small ones; the foreach update was 20 % of its step).

    The operator inside the networks skips its NaN check (a host synchronisation per call, some
    20 per unrolled step); measurements are checked once where they enter, in ``forward``.
    """

    def __init__(
        self,
        geometry: Union[Dict[str, Any], Geometry],
        lr: float = 1e-3,
        betas: Tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        scheduler: str = "cosine",
        data_range: float = 1.0,
        fbp_filter: str = "Hann",
        fbp_frequency_scaling: float = 0.5,
        ray_transform_backend: str = "auto",
        results_dir: Optional[str] = "outputs/results",
        method_name: Optional[str] = None,
        channels_last: bool = False,
        fused_optimizer: bool = False,
    ):
        super().__init__()
        geometry = geometry_from_dict(geometry)
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
        self.save_hyperparameters()  # collects the subclasses' arguments too
        # geometry as plain numbers: weights_only-safe checkpoints, equal to the data module's record
        self.save_hyperparameters(dict(self.hparams, geometry=geometry.to_dict()))
        self.geometry = geometry
        self.ray_transform = RayTransform(geometry, backend=ray_transform_backend, check_finite=False)
        self.fbp = FBP(geometry, fbp_filter, fbp_frequency_scaling, ray_transform=self.ray_transform)
        self.val_psnr = PeakSignalNoiseRatio(data_range=data_range, reduction="elementwise_mean", dim=(1, 2, 3))
        self.val_ssim = StructuralSimilarityIndexMeasure(data_range=data_range)
        self._test_rows: List[Dict[str, torch.Tensor]] = []

    @property
    def method_name(self) -> str:
        return self.hparams.get("method_name") or type(self).__name__

    # -- to implement ----------------------------------------------------------------------
    def reconstruct(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Images ``(B, 1, H, W)`` from a batch dict."""
        raise NotImplementedError

    def forward(self, measurement: torch.Tensor) -> torch.Tensor:
        """Reconstruct from sinograms ``(B, 1, A, D)`` alone (FBP computed here when needed)."""
        if not bool(torch.isfinite(measurement).all()):
            raise ValueError("measurement contains NaN or inf values")
        return self.reconstruct({"measurement": measurement, "fbp": self.fbp(measurement)})

    def on_fit_start(self) -> None:
        if self.hparams.get("channels_last"):
            self.to(memory_format=torch.channels_last)

    # -- steps ------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        loss = torch.nn.functional.mse_loss(self.reconstruct(batch), batch["ground_truth"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["ground_truth"]))
        return loss

    def validation_step(self, batch, batch_idx):
        pred = self.reconstruct(batch).float()
        truth = batch["ground_truth"]
        with torch.autocast(self.device.type, enabled=False):  # SSIM's convolutions in bf16 are wrong
            self.val_psnr(pred, truth)
            self.val_ssim(pred, truth)
        self.log("val/loss", torch.nn.functional.mse_loss(pred, truth), sync_dist=True, batch_size=len(truth))
        self.log("val/psnr", self.val_psnr, prog_bar=True, batch_size=len(truth))
        self.log("val/ssim", self.val_ssim, batch_size=len(truth))
        return pred

    def test_step(self, batch, batch_idx):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        pred = self.reconstruct(batch).float()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = torch.full((len(pred),), (time.perf_counter() - start) / len(pred), device=self.device)
        scores = image_metrics(pred, batch["ground_truth"], fixed_range=self.hparams.data_range)
        self._test_rows.append(dict(scores, seconds=seconds))
        self.log("test/psnr", scores["psnr"].mean(), batch_size=len(pred), sync_dist=True)
        self.log("test/ssim", scores["ssim"].mean(), batch_size=len(pred), sync_dist=True)
        return pred

    def on_test_start(self) -> None:
        """Build operators (matrix, ‖A‖) before the timed test steps."""
        with torch.no_grad():
            zeros = torch.zeros(1, 1, *self.geometry.sinogram_shape, device=self.device)
            self.reconstruct({"measurement": zeros, "fbp": self.fbp(zeros)})

    def on_test_epoch_start(self) -> None:
        self._test_rows = []

    def on_test_epoch_end(self) -> None:
        per_image = {k: torch.cat([row[k] for row in self._test_rows]) for k in self._test_rows[0]}
        gathered = {k: self.all_gather(v).reshape(-1).cpu() for k, v in per_image.items()}
        row = {"method": self.method_name, "images": len(gathered["psnr"]),
               "seconds_per_image": float(gathered["seconds"].mean())}
        for key in ("psnr", "ssim", "psnr_fixed", "ssim_fixed"):
            row[key], row[f"{key}_std"] = float(gathered[key].mean()), float(gathered[key].std())
        self.test_results = row
        if self.trainer.is_global_zero and self.hparams.results_dir:
            write_results_table(Path(self.hparams.results_dir), row)

    def predict_step(self, batch, batch_idx):
        return self.reconstruct(batch)

    # -- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self):
        fused = bool(self.hparams.get("fused_optimizer")) and self.device.type == "cuda"
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, betas=tuple(self.hparams.betas),
                                      weight_decay=self.hparams.weight_decay, fused=fused or None)
        return with_schedule(optimizer, self.hparams.scheduler, self.trainer)


def validation_samples(trainer, count: int):
    """The first ``count`` validation (measurement, ground truth) pairs, on the CPU."""
    measurements, truths, seen = [], [], 0
    for batch in trainer.datamodule.val_dataloader():
        measurements.append(batch["measurement"])
        truths.append(batch["ground_truth"])
        seen += len(batch["measurement"])
        if seen >= count:
            break
    return torch.cat(measurements)[:count], torch.cat(truths)[:count]


def with_schedule(optimizer: torch.optim.Optimizer, scheduler: str, trainer) -> Any:
    """``optimizer`` alone (``"none"``) or with a per-step cosine schedule annealed to 0 over the
    run's steps (``"cosine"``) or over its training-time budget ``max_time`` (``"cosine-time"``)."""
    if scheduler == "none":
        return optimizer
    if scheduler == "cosine-time":
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        if timer is None or timer.time_remaining("train") is None:
            raise ValueError("scheduler 'cosine-time' anneals over the time budget: set trainer.max_time")

        def factor(_step: int) -> float:
            elapsed, remaining = timer.time_elapsed("train"), timer.time_remaining("train")
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, elapsed / max(elapsed + remaining, 1e-9))))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, trainer.estimated_stepping_batches))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def write_results_table(directory: Path, row: Dict[str, Any]) -> Path:
    """Insert or replace ``row`` (by method name) in ``results.csv`` and rewrite ``results.md``."""
    directory.mkdir(parents=True, exist_ok=True)
    csv_path = directory / "results.csv"
    rows = []
    if csv_path.exists():
        with csv_path.open() as f:
            rows = [r for r in csv.DictReader(f) if r["method"] != row["method"]]
    rows.append({k: row[k] for k in TABLE_COLUMNS})
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=TABLE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| method | PSNR (dB) | SSIM | PSNR, fixed range | SSIM, fixed range | s/image | images |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        f = {k: float(r[k]) for k in TABLE_COLUMNS if k != "method"}
        lines.append(
            f"| {r['method']} | {f['psnr']:.2f} ± {f['psnr_std']:.2f} | {f['ssim']:.3f} ± {f['ssim_std']:.3f} | "
            f"{f['psnr_fixed']:.2f} ± {f['psnr_fixed_std']:.2f} | {f['ssim_fixed']:.3f} ± {f['ssim_fixed_std']:.3f} | "
            f"{f['seconds_per_image']:.4f} | {int(f['images'])} |"
        )
    (directory / "results.md").write_text("\n".join(lines) + "\n")
    return directory / "results.md"
