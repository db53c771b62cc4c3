"""The one base of every method: :class:`ReconstructionModule`.

A method subclasses it and implements ``reconstruct(batch)``, mapping a batch dict
(``measurement (B, *range_shape)``, for CT also ``fbp (B, 1, H, W)``; ``ground_truth``) to
reconstructions ``(B, *domain_shape)``. The forward model is any operator of the physics contract,
built from the ``forward_model`` dict by ``operator_from_dict`` (a CT geometry, a light-field geometry, a
sparse-coding problem); for CT the module also holds an FBP, the optional initial reconstruction.

The base provides the supervised MSE loss, ``train/loss``, ``val/psnr`` (and ``val/ssim`` for
images) with a fixed data range, the timed test with one row per method in ``results.csv`` /
``results.md`` (:mod:`lightning_recon.results`), and AdamW with a cosine schedule
(:func:`~.schedules.with_schedule`, for any number of optimisers). Subclasses change what they need:
``training_step`` (unsupervised or adversarial losses), ``test_scores``/``summarise_test``
(other per-sample scores), ``validation_extras``. Operators hold no state in checkpoints: they are
rebuilt lazily per process and device, so checkpoints hold only weights and plain hyperparameters.
"""
from __future__ import annotations

import io
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torchmetrics import MeanMetric
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from ..checkpointing import RENAMED_HYPERPARAMETERS, read_lightning_checkpoint, upgrade_hyperparameters
from ..metrics import image_metrics, psnr, ssim
from ..physics.fbp import DEFAULT_FBP_FILTER, DEFAULT_FBP_FREQUENCY_SCALING, FBP
from ..physics.geometry import Geometry2D
from ..physics.operator import operator_from_dict, spec_from_dict
from ..pretrained import resolve_checkpoint
from ..results import write_results_table
from .schedules import SCHEDULERS, with_schedule

__all__ = ["ReconstructionModule", "TunedOnValidation", "validation_samples"]

COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# Lightning warns whenever a module defines on_after_batch_transfer and a data module is used; ours
# adds the FBP to batches without one, and no data module of the project defines that hook.
warnings.filterwarnings("ignore", message="You have overridden `on_after_batch_transfer` in `LightningModule`")


def cpu_compiler() -> Optional[str]:
    """The C++ compiler ``torch.compile`` (inductor) would build CPU kernels with: ``$CXX``, ``g++`` or
    ``clang++`` on the PATH; None when there is none."""
    found = (shutil.which(name) for name in (os.environ.get("CXX"), "g++", "clang++") if name)
    return next((path for path in found if path), None)


class ReconstructionModule(L.LightningModule):
    """Base LightningModule of every reconstruction method.

    Args:
        forward_model: the forward model as a dict of numbers with its ``type`` (the CLI links it
            from the data): a CT geometry, ``LightFieldGeometry`` or ``SparseCodingProblem``.
        lr, betas, weight_decay: AdamW settings.
        scheduler: ``"cosine"`` (annealed to 0 over ``max_steps``), ``"cosine-time"`` (annealed to 0
            over the trainer's ``max_time`` of training: a fixed time budget, any speed) or ``"none"``.
        data_range: fixed data range for ``val/psnr``/``val/ssim`` and the "fixed" test columns;
            ``None``: each image's own ``max − min`` there too (the CLI links the data module's choice).
        fbp_filter, fbp_frequency_scaling: the FBP of CT methods (their initial reconstruction; the
            CLI links it from the data module, so it is the one the training inputs were made with).
        ray_transform_backend: ``auto``, ``matrix``, ``astra_cuda`` or ``odl`` (CT only).
        results_dir: where ``test`` writes ``results.csv`` / ``results.md`` (one row per method);
            ``None``: no table.
        method_name: the row name in the results table (default: the class name).
        channels_last: keep convolution weights and activations in channels-last memory layout
            (faster cuDNN kernels under bf16 on recent GPUs; see docs/benchmarks.md).
        compile_mode: ``torch.compile`` the trained networks (``compiled_modules``) in place when
            training starts, with this mode (``"default"``, ``"reduce-overhead"``, ``"max-autotune"``);
            ``None``: eager. The operators inside compile without graph breaks (one custom op).
        fused_optimizer: AdamW as one fused kernel (CPU or GPU) instead of a loop over the parameter
            tensors (learned PD has 160 small ones): 3–4× faster updates on one CPU thread,
            2.2 against 9.6 ms for learned PD (``bench/adamw_update.py``, docs/benchmarks.md). Off where
            the precision scales gradients (``16-mixed``): its scaler cannot unscale a fused step's
            gradients before clipping.
        init_from: a ``train.py`` checkpoint (or a shipped one's name, ``lightning_recon.pretrained``)
            of the same method and architecture whose weights start
            this run (a new run: fresh optimiser and schedule, step 0): from ellipses to your data, or
            to another geometry. ``--ckpt_path`` resumes a run instead (and wins over this).

    The operator inside the networks skips its NaN check (a host synchronisation per call, some
    20 per unrolled step); measurements are checked once where they enter, in ``forward``.
    """

    # Settings that matter only while training: outside ``fit`` the CLI keeps a checkpoint's values
    # of these without comparing them with the config's. A subclass (or mixin) adds its own in the
    # same attribute; ``cli.py`` collects them over the class's MRO.
    training_only_settings: Tuple[str, ...] = ("lr", "betas", "weight_decay", "scheduler", "channels_last",
                                               "compile_mode", "fused_optimizer", "init_from")
    # The networks ``compile_mode`` compiles (attributes that exist; state_dict keys do not change).
    compiled_modules: Tuple[str, ...] = ("net",)
    # State that belongs to the geometry, not to what was learned: kept when ``init_from`` loads weights.
    weights_not_transferred: Tuple[str, ...] = ()

    def __init__(
        self,
        forward_model: Union[Dict[str, Any], Any],
        lr: float = 1e-3,
        betas: Tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        scheduler: str = "cosine",
        data_range: Optional[float] = 1.0,
        fbp_filter: str = DEFAULT_FBP_FILTER,
        fbp_frequency_scaling: float = DEFAULT_FBP_FREQUENCY_SCALING,
        ray_transform_backend: str = "auto",
        results_dir: Optional[str] = "outputs/results",
        method_name: Optional[str] = None,
        channels_last: bool = False,
        compile_mode: Optional[str] = None,
        fused_optimizer: bool = True,
        init_from: Optional[str] = None,
    ):
        super().__init__()
        forward_model = spec_from_dict(forward_model)
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {compile_mode!r}")
        self.save_hyperparameters()  # collects the subclasses' arguments too
        # the forward model as plain numbers: weights_only-safe checkpoints, equal to the data module's record
        self.save_hyperparameters(dict(self.hparams, forward_model=forward_model.to_dict()))
        self.forward_model = forward_model
        self.operator = operator_from_dict(forward_model, backend=ray_transform_backend, check_finite=False)
        self.fbp = (FBP(forward_model, fbp_filter, fbp_frequency_scaling, ray_transform=self.operator)
                    if isinstance(forward_model, Geometry2D) else None)
        domain = self.operator.domain_shape
        if data_range is None:  # per-image ranges: the mean of per-image scores
            self.val_psnr, self.val_ssim = MeanMetric(), MeanMetric() if self.is_image_problem else None
        else:
            self.val_psnr = PeakSignalNoiseRatio(data_range=data_range, reduction="elementwise_mean",
                                                 dim=tuple(range(1, 1 + len(domain))))
            # SSIM for images (B, 1, H, W) only; volumes and codes have their own scores
            self.val_ssim = StructuralSimilarityIndexMeasure(data_range=data_range) if self.is_image_problem else None
        self._test_rows: List[Dict[str, torch.Tensor]] = []

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args: Any, **kwargs: Any):
        """Lightning's ``load_from_checkpoint``, for checkpoints of earlier versions too: a file whose
        hyperparameters use an old name (``geometry``) is read once more, renamed
        (:func:`~lightning_recon.checkpointing.upgrade_hyperparameters`) and loaded from memory."""
        if isinstance(checkpoint_path, (str, Path)) and Path(checkpoint_path).is_file():
            saved = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
            hparams = saved.get("hyper_parameters") if isinstance(saved, dict) else None
            if isinstance(hparams, dict) and any(old in hparams for old in RENAMED_HYPERPARAMETERS):
                saved["hyper_parameters"] = upgrade_hyperparameters(hparams)
                buffer = io.BytesIO()
                torch.save(saved, buffer)
                buffer.seek(0)
                checkpoint_path = buffer
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    @property
    def method_name(self) -> str:
        return self.hparams.get("method_name") or type(self).__name__

    @property
    def is_image_problem(self) -> bool:
        """Reconstructions are single-channel images ``(B, 1, H, W)`` (PSNR and SSIM apply)."""
        domain = self.operator.domain_shape
        return len(domain) == 3 and domain[0] == 1

    # -- to implement ----------------------------------------------------------------------
    def reconstruct(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Reconstructions ``(B, *domain_shape)`` from a batch dict."""
        raise NotImplementedError

    def measurement_batch(self, measurement: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The batch dict ``reconstruct`` needs, from measurements alone (adds the FBP for CT)."""
        batch = {"measurement": measurement}
        if self.fbp is not None:
            batch["fbp"] = self.fbp(measurement)
        return batch

    def forward(self, measurement: torch.Tensor) -> torch.Tensor:
        """Reconstruct from measurements ``(B, *range_shape)`` alone (FBP computed here when needed)."""
        if not bool(torch.isfinite(measurement).all()):
            raise ValueError("measurement contains NaN or inf values")
        return self.reconstruct(self.measurement_batch(measurement))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """A CT batch without ``fbp`` (stored or measured data) gets this module's FBP, on its device."""
        if isinstance(batch, dict) and self.fbp is not None and "fbp" not in batch and "measurement" in batch:
            with torch.no_grad():
                batch["fbp"] = self.fbp(batch["measurement"].float())
        return batch

    def load_initial_weights(self) -> None:
        """Copy ``init_from``'s weights into this module, once; ``ValueError`` (one line) for a
        missing or unreadable file, a file without ``state_dict``, or the first tensor that is
        missing, extra or of another shape (another architecture)."""
        asked = self.hparams.get("init_from")
        if not asked or self.__dict__.get("_initialised_from") == asked:
            return
        path = resolve_checkpoint(asked)  # a shipped checkpoint's name, or a path
        try:
            checkpoint = read_lightning_checkpoint(path)
        except ValueError as error:
            raise ValueError(f"init_from {error}") from None
        saved = checkpoint["state_dict"]
        holds = str(checkpoint.get("hyper_parameters", {}).get("_class_path", "a model")).rsplit(".", 1)[-1]
        own = self.state_dict()
        for key, value in own.items():
            if key in self.weights_not_transferred:
                continue
            if key not in saved:
                raise ValueError(f"init_from {path} holds {holds} without {key} {tuple(value.shape)}: another "
                                 f"architecture than this {type(self).__name__}")
            if tuple(saved[key].shape) != tuple(value.shape):
                raise ValueError(f"init_from {path}: {key} has shape {tuple(saved[key].shape)} there, "
                                 f"{tuple(value.shape)} here (another architecture)")
        extra = [key for key in saved if key not in own]
        if extra:
            raise ValueError(f"init_from {path} holds {holds} with {extra[0]}, which this {type(self).__name__} lacks")
        self.load_state_dict({key: (own[key] if key in self.weights_not_transferred else saved[key]) for key in own})
        self.__dict__["_initialised_from"] = asked

    def setup(self, stage: str) -> None:
        if stage == "fit":  # before a resumed run's checkpoint is restored, which then wins
            self.load_initial_weights()

    def on_fit_start(self) -> None:
        if self.hparams.get("channels_last"):
            self.to(memory_format=torch.channels_last)
        mode = self.hparams.get("compile_mode")
        if mode and self.device.type == "cpu" and not cpu_compiler():
            rank_zero_warn("compile_mode: torch.compile on the CPU needs a C++ compiler (g++, clang++ or $CXX) and "
                           "none was found; the networks run eagerly")
            mode = None
        if mode:
            networks = [getattr(self, name) for name in self.compiled_modules
                        if isinstance(getattr(self, name, None), torch.nn.Module)]
            if not networks:
                rank_zero_warn(f"compile_mode: {type(self).__name__} names no network to compile; it runs eagerly")
            for network in networks:
                network.compile(mode=mode)  # in place: parameters and state_dict keys unchanged

    # -- steps ------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        loss = self.training_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["measurement"]))
        return loss

    def training_loss(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss of one training batch: the MSE against ``ground_truth``. The hook of a selectable
        loss (``methods/self_supervised.py``: ``noise2inverse``, ``equivariant``)."""
        if "ground_truth" not in batch:
            raise ValueError(f"{self.method_name} trains supervised and needs ground_truth in the training batches, "
                             "which this data module leaves out (train_ground_truth: false); FBPUNet, LearnedGD and "
                             "LearnedPD train without it with loss noise2inverse or equivariant")
        return torch.nn.functional.mse_loss(self.reconstruct(batch), batch["ground_truth"])

    def validation_step(self, batch, batch_idx):
        pred = self.reconstruct(batch).float()
        truth = batch["ground_truth"]
        with torch.autocast(self.device.type, enabled=False):  # SSIM's convolutions in bf16 are wrong
            if self.hparams.data_range is None:
                self.val_psnr.update(psnr(pred, truth))
                if self.val_ssim is not None:
                    self.val_ssim.update(ssim(pred, truth))
            else:
                self.val_psnr(pred, truth)
                if self.val_ssim is not None:
                    self.val_ssim(pred, truth)
        self.log("val/loss", torch.nn.functional.mse_loss(pred, truth), sync_dist=True, batch_size=len(truth))
        self.log("val/psnr", self.val_psnr, prog_bar=True, batch_size=len(truth))
        if self.val_ssim is not None:
            self.log("val/ssim", self.val_ssim, batch_size=len(truth))
        self.validation_extras(pred, batch)
        return pred

    def validation_extras(self, pred: torch.Tensor, batch: Dict[str, torch.Tensor]) -> None:
        """Further validation logs of a method family (none here)."""

    def test_scores(self, pred: torch.Tensor, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Per-sample scores ``{name: (B,)}``: PSNR/SSIM with per-image and with the fixed data range."""
        return image_metrics(pred, batch["ground_truth"], fixed_range=self.hparams.data_range)

    def summarise_test(self, scores: Dict[str, torch.Tensor]) -> Dict[str, Any]:
        """The results-table row from all test samples' scores (mean and std of each)."""
        row = {"method": self.method_name}
        for key in ("psnr", "ssim", "psnr_fixed", "ssim_fixed"):
            row[key], row[f"{key}_std"] = float(scores[key].mean()), float(scores[key].std())
        row["seconds_per_image"] = float(scores["seconds"].mean())
        row["images"] = len(scores["seconds"])
        return row

    def test_step(self, batch, batch_idx):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        pred = self.reconstruct(batch).float()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = torch.full((len(pred),), (time.perf_counter() - start) / len(pred), device=self.device)
        self._test_rows.append(dict(self.test_scores(pred, batch), seconds=seconds))
        return pred

    def on_test_start(self) -> None:
        self.build_before_test()

    def build_before_test(self) -> None:
        """Build operators (matrix, ‖A‖) before the timed test steps: one reconstruction of zeros."""
        with torch.no_grad():
            zeros = torch.zeros(1, *self.operator.range_shape, device=self.device)
            self.reconstruct(self.measurement_batch(zeros))

    def on_test_epoch_start(self) -> None:
        self._test_rows = []

    def on_test_epoch_end(self) -> None:
        per_sample = {k: torch.cat([row[k] for row in self._test_rows]) for k in self._test_rows[0]}
        gathered = {k: self.all_gather(v).reshape(-1).cpu() for k, v in per_sample.items()}
        row = dict(self.summarise_test(gathered), **self.provenance())
        self.test_results = row
        for name, value in row.items():  # equal on every rank after the gather
            if isinstance(value, float) and not name.endswith("_std"):
                self.log(f"test/{name}", value)
        rank_zero_info(f"{row['method']}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                       for k, v in row.items() if k != "method"))
        if self.trainer.is_global_zero and self.hparams.results_dir:
            write_results_table(Path(self.hparams.results_dir), row)

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        self.__dict__["_checkpoint_step"] = checkpoint.get("global_step")

    def provenance(self) -> Dict[str, Any]:
        """Where a results row comes from: the data (the data module's ``description``), the
        checkpoint file tested (empty without one) and the training step it was saved at."""
        data_module = self.trainer.datamodule
        description = getattr(data_module, "description", None) or type(data_module).__name__
        checkpoint = self.trainer.ckpt_path
        step = self.__dict__.get("_checkpoint_step") if checkpoint else None
        return {"data": description, "checkpoint": Path(checkpoint).name if checkpoint else "",
                "step": int(step if step is not None else self.global_step)}

    def predict_step(self, batch, batch_idx):
        return self.reconstruct(batch)

    # -- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self):
        fused = (bool(self.hparams.get("fused_optimizer")) and self.device.type in ("cpu", "cuda")
                 and self._gradient_scaler() is None)
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, betas=tuple(self.hparams.betas),
                                      weight_decay=self.hparams.weight_decay, fused=fused or None)
        return with_schedule(optimizer, self.hparams.scheduler, self.trainer)

    def _gradient_scaler(self):
        """The precision plugin's gradient scaler (``16-mixed``), else None (float32, bf16)."""
        return getattr(self.trainer.precision_plugin, "scaler", None)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Lightning refuses to clip for a fused optimizer under any mixed precision (a gradient scaler
        could not unscale first); without a scaler (float32, bf16) the gradients are the true ones and
        are clipped here as Lightning would."""
        if not gradient_clip_val or not optimizer.defaults.get("fused") or self._gradient_scaler() is not None:
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(parameters, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(parameters, gradient_clip_val)


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


class TunedOnValidation:
    """Mixin of methods with parameters tuned on validation data before testing (the classical
    baselines, the generative regulariser, ISTA): with the hyperparameter ``tune``, ``on_test_start``
    passes the first ``tune_samples`` validation pairs, on the module's device, to ``tune_on``,
    which records its choice in the hyperparameters. List it before :class:`ReconstructionModule`."""

    def on_test_start(self) -> None:
        super().on_test_start()
        if self.hparams.tune:
            measurement, truth = validation_samples(self.trainer, self.hparams.tune_samples)
            self.tune_on(measurement.to(self.device), truth.to(self.device))

    def tune_on(self, measurement: torch.Tensor, truth: torch.Tensor) -> Any:
        """Choose the parameters from validation measurements ``(N, *range)`` and truths ``(N, *domain)``."""
        raise NotImplementedError
