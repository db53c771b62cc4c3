"""Training without ground truth: the selectable loss of the learned methods (``FBPUNet``,
``LearnedGD``, ``LearnedPD``), ``loss: supervised | noise2inverse | equivariant``.

- ``supervised``: the MSE against ``ground_truth`` (the base's ``training_loss``).
- ``noise2inverse`` (Hendriksen, Pelt & Batenburg, *Noise2Inverse: self-supervised deep
  convolutional denoising for tomography*, IEEE TCI 6, 2020): the measured angles are split into
  ``n2i_splits`` = K interleaved subsets (``physics.angle_splits``) and each subset is reconstructed
  by FBP on the full image grid, with the subset's own geometry (its angles, the data module's FBP
  filter). For each of K index sets J the network maps the mean of the sub-reconstructions in J to
  the mean of the others: ``n2i_strategy: "X:1"`` (J holds K − 1 subsets, the target is the one
  left out; the paper's best) or ``"1:X"`` (J is one subset, the target the mean of the other K − 1).
  The loss is the mean over the K sets of the MSE; with ``n2i_augment`` each training batch's
  inputs and targets get the same random flip and quarter turn (one of the 8 symmetries of the
  square, drawn per step; for the networks on sub-reconstructions), which keeps each pair's noise
  independent and multiplies the data of a small scan. Inference, on the full measurement, averages the
  network's K outputs ``f(x_J)`` (the paper's ``x̂ = 1/|𝒥| Σ_J f(x_J)``): ``reconstruct`` does so
  for validation, test, ``predict`` and ``forward`` alike.

  *FBP + U-Net*: the network's input is ``x_J`` (as in the paper). *Learned GD / PD*, whose
  network takes a measurement: the input is the measurement restricted to the angles of J, with the
  operator ``A_J`` of J's angles inside the network (a sub-geometry from the geometry's numbers;
  ``A_J / (‖A‖ √(|J|/n))``, the full ‖A‖ scaled to the share of angles), learned GD starting from
  ``x_J`` (``init: fbp``); the target is the FBP ``x_{J^c}`` of the other subsets. Inference averages
  the K outputs as above. The network never sees the full measurement: training and inference see
  the same kind of input. The sub-sinogram of J keeps J's angles in their order: evenly spaced for
  1:X, every K-th angle missing for X:1 (learned PD's sinogram-space convolutions see that pattern).
- ``equivariant`` (Chen, Tachella & Davies, *Equivariant imaging: learning beyond the range space*,
  ICCV 2021): ``x1 = f(y)`` (the method's reconstruction from the batch), the measurement
  consistency ``‖A x1 − y‖²``, then ``x2 = T_g x1`` for ``ei_rotations`` rotations by distinct
  random whole degrees in [1°, 359°] (the paper's CT setting: 5 rotations, weight α = 100; each
  rotation applied to the whole batch), optionally followed by random circular shifts of up to
  ``ei_max_shift`` pixels, ``x3 = f(A x2)`` (the FBP of ``A x2`` where the method uses one), and
  the equivariance term ``‖x3 − x2‖²``: loss = MC + ``ei_weight`` · EI (mean squared errors;
  gradients through ``x1`` in both terms, as the paper's code). Rotations are bilinear about the
  image centre with zeros outside (``physics.resample.rotate_images``).

The training step reads ``measurement`` (and ``fbp`` where the network uses it) and never
``ground_truth``: a data module with ``train_ground_truth: false`` trains these losses, and refuses
``loss: supervised`` in one line. Validation logs the self-supervised loss on the validation
measurements (``val/noise2inverse_loss``, ``val/equivariant_loss``) and, where the validation batches
hold a ground truth, ``val/psnr`` / ``val/ssim`` against it, for monitoring only (a line at the start
of ``fit`` says so); results rows are named ``<class> (<loss>)`` unless ``method_name`` says otherwise.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from ..physics.angle_splits import angle_splits, check_angle_splits, sub_geometry
from ..physics.fbp import FBP
from ..physics.operator import operator_from_dict
from ..physics.resample import rotate_images, shift_images
from .base import ReconstructionModule

__all__ = ["LOSSES", "N2I_STRATEGIES", "LearnedReconstructionModule", "noise2inverse_sets"]

LOSSES = ("supervised", "noise2inverse", "equivariant")
N2I_STRATEGIES = ("X:1", "1:X")


def noise2inverse_sets(splits: int, strategy: str) -> List[Tuple[List[int], List[int]]]:
    """The K pairs (input subsets J, target subsets Jᶜ) of a strategy: ``"X:1"`` leaves one subset
    out of the input (it is the target), ``"1:X"`` takes one subset as the input."""
    if strategy not in N2I_STRATEGIES:
        raise ValueError(f"n2i_strategy must be one of {N2I_STRATEGIES}, got {strategy!r}")
    pairs = []
    for j in range(splits):
        others = [i for i in range(splits) if i != j]
        pairs.append((others, [j]) if strategy == "X:1" else ([j], others))
    return pairs


def _integer(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


class LearnedReconstructionModule(ReconstructionModule):
    """A learned method whose training loss is selectable (module docstring).

    A subclass implements ``apply_network(batch, operator=None, operator_scale=1.0)``: the network
    on a batch dict (``measurement``, ``fbp``); ``operator`` (with ``operator_scale``, the factor of
    its norm to the full operator's) is a Noise2Inverse subset's ``A_J``, which networks on the
    measurement use in place of the full operator. ``noise2inverse_input`` says what the network
    reads: ``"fbp"`` (the sub-reconstructions only) or ``"measurement"`` (the angles of J, with ``A_J``).

    Args:
        loss: ``"supervised"``, ``"noise2inverse"`` or ``"equivariant"``.
        n2i_splits: K, the number of angle subsets (2 and 4 in the paper); at most the number of angles.
        n2i_strategy: ``"X:1"`` or ``"1:X"``.
        n2i_augment: train on randomly flipped and quarter-turned pairs (module docstring; the
            networks on sub-reconstructions only, e.g. FBP + U-Net).
        ei_weight: α, the weight of the equivariance term (100 in the paper's CT runs).
        ei_rotations: rotations per batch (5 in the paper's CT runs).
        ei_max_shift: with a positive value, each rotated image is also shifted circularly by up to
            this many pixels along each axis (0: rotations only, the paper's CT setting).
        **kwargs: forward_model and optimisation settings of :class:`ReconstructionModule`.
    """

    training_only_settings = ("ei_weight", "ei_rotations", "ei_max_shift", "n2i_augment")
    noise2inverse_input = "fbp"

    def __init__(self, loss: str = "supervised", n2i_splits: int = 4, n2i_strategy: str = "X:1",
                 n2i_augment: bool = False, ei_weight: float = 100.0, ei_rotations: int = 5, ei_max_shift: int = 0,
                 **kwargs):
        super().__init__(**kwargs)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        _integer("n2i_splits", n2i_splits, 2)
        noise2inverse_sets(n2i_splits, n2i_strategy)  # checks the strategy
        if isinstance(ei_weight, bool) or not isinstance(ei_weight, (int, float)) or not math.isfinite(ei_weight) \
                or ei_weight < 0:
            raise ValueError(f"ei_weight must be a finite number >= 0, got {ei_weight!r}")
        _integer("ei_rotations", ei_rotations, 1)
        if ei_rotations > 359:
            raise ValueError(f"ei_rotations draws distinct whole degrees in [1, 359]: at most 359, got {ei_rotations}")
        _integer("ei_max_shift", ei_max_shift, 0)
        if not isinstance(n2i_augment, bool):
            raise ValueError(f"n2i_augment must be true or false, got {n2i_augment!r}")
        if n2i_augment and self.noise2inverse_input != "fbp":
            raise ValueError(f"n2i_augment flips sub-reconstructions; {type(self).__name__} reads the measured "
                             f"angles, which a flip of the image does not permute alike")
        if loss == "equivariant" and not self.is_image_problem:
            raise ValueError(f"loss 'equivariant' rotates images (1, H, W); {type(self.forward_model).__name__} "
                             f"reconstructs {self.operator.domain_shape}")
        if loss == "noise2inverse":
            self._build_noise2inverse(n2i_splits, n2i_strategy)

    # -- Noise2Inverse: the subsets' operators, built from the geometry's numbers ---------------------
    def _build_noise2inverse(self, splits: int, strategy: str) -> None:
        geometry = check_angle_splits(self.forward_model, splits)
        hp = self.hparams
        backend = hp.get("ray_transform_backend", "auto")

        def operator(indices: Sequence[int]):
            return operator_from_dict(sub_geometry(geometry, indices).to_dict(), backend=backend, check_finite=False)

        self.split_indices = angle_splits(geometry.num_angles, splits)
        self.split_fbps = nn.ModuleList(
            FBP(sub_geometry(geometry, indices), hp.fbp_filter, hp.fbp_frequency_scaling,
                ray_transform=operator(indices))
            for indices in self.split_indices)
        self.noise2inverse_pairs = noise2inverse_sets(splits, strategy)
        self.subset_indices, self.subset_operators = [], None
        if self.noise2inverse_input == "measurement":
            for subsets, _ in self.noise2inverse_pairs:
                self.subset_indices.append(sorted(int(i) for s in subsets for i in self.split_indices[s]))
            self.subset_operators = nn.ModuleList(
                self.split_fbps[subsets[0]].ray_transform if len(subsets) == 1 else operator(indices)
                for (subsets, _), indices in zip(self.noise2inverse_pairs, self.subset_indices))

    def split_reconstructions(self, measurement: torch.Tensor) -> torch.Tensor:
        """The K subsets' FBPs ``(B, K, H, W)`` of measurements ``(B, 1, A, D)`` (no gradient: fixed inputs)."""
        measurement = measurement.float()
        with torch.no_grad():
            return torch.cat([fbp(measurement.index_select(2, torch.as_tensor(indices, device=measurement.device)))
                              for fbp, indices in zip(self.split_fbps, self.split_indices)], dim=1)

    def noise2inverse_terms(self, measurement: torch.Tensor, augment: bool = False
                            ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """The network's outputs ``f(x_J)`` and the targets ``x_{Jᶜ}``, one ``(B, 1, H, W)`` each per set J;
        with ``augment``, inputs and targets flipped and turned alike (one random symmetry of the square)."""
        splits = self.split_reconstructions(measurement)
        if augment:
            splits = torch.rot90(splits, int(torch.randint(4, ())), dims=(-2, -1))
            splits = splits.flip(-1) if bool(torch.randint(2, ())) else splits
        inputs = [splits[:, subsets].mean(1, keepdim=True) for subsets, _ in self.noise2inverse_pairs]
        targets = [splits[:, subsets].mean(1, keepdim=True) for _, subsets in self.noise2inverse_pairs]
        if self.noise2inverse_input == "fbp":  # one pass over the K inputs
            outputs = list(self.apply_network({"fbp": torch.cat(inputs)}).chunk(len(inputs)))
        else:
            n = measurement.shape[2]
            outputs = []
            for x_subset, indices, operator in zip(inputs, self.subset_indices, self.subset_operators):
                y_subset = measurement.index_select(2, torch.as_tensor(indices, device=measurement.device))
                outputs.append(self.apply_network({"measurement": y_subset, "fbp": x_subset}, operator=operator,
                                                  operator_scale=math.sqrt(len(indices) / n)))
        return outputs, targets

    # -- Equivariant imaging --------------------------------------------------------------------------
    def equivariant_terms(self, batch: Dict[str, torch.Tensor],
                          generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Measurement consistency ``‖A x1 − y‖²`` and equivariance ``‖x3 − x2‖²`` (mean squared errors)."""
        y = batch["measurement"]
        x1 = self.apply_network(batch)
        consistency = nn.functional.mse_loss(self.operator(x1.float()), y.float())
        rotations = self.hparams.ei_rotations
        degrees = (torch.randperm(359, generator=generator)[:rotations] + 1).tolist()
        x2 = torch.cat([rotate_images(x1, float(d)) for d in degrees])
        limit = self.hparams.ei_max_shift
        if limit:
            shifts = torch.randint(-limit, limit + 1, (len(x2), 2), generator=generator).tolist()
            x2 = shift_images(x2, shifts)
        x3 = self.apply_network(self.measurement_batch(self.operator(x2.float())))
        return consistency, nn.functional.mse_loss(x3.float(), x2.float())

    # -- the hook of the base and the network ---------------------------------------------------------
    def apply_network(self, batch: Dict[str, torch.Tensor], operator=None, operator_scale: float = 1.0) -> torch.Tensor:
        """The network on a batch dict (class docstring)."""
        raise NotImplementedError

    def reconstruct(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        if self.hparams.loss == "noise2inverse":  # the mean of the network's outputs over the K sets J
            outputs, _ = self.noise2inverse_terms(batch["measurement"])
            return torch.stack(outputs).mean(0)
        return self.apply_network(batch)

    def training_loss(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        if self.hparams.loss == "supervised":
            return super().training_loss(batch)
        return self.self_supervised_loss(batch, stage="train")

    def self_supervised_loss(self, batch: Dict[str, torch.Tensor], generator: Optional[torch.Generator] = None,
                             stage: Optional[str] = None) -> torch.Tensor:
        """The loss of ``batch`` under ``self.hparams.loss`` (``noise2inverse`` or ``equivariant``), the
        rotations drawn from ``generator``; with ``stage``, the equivariant loss's two terms are logged
        as ``<stage>/consistency_loss`` and ``<stage>/equivariance_loss``. Reads no ground truth."""
        if self.hparams.loss == "noise2inverse":
            augment = bool(self.hparams.get("n2i_augment")) and stage == "train"
            outputs, targets = self.noise2inverse_terms(batch["measurement"], augment)
            return torch.stack([nn.functional.mse_loss(o.float(), t) for o, t in zip(outputs, targets)]).mean()
        if self.hparams.loss != "equivariant":
            raise ValueError(f"self_supervised_loss is for loss 'noise2inverse' or 'equivariant', "
                             f"not {self.hparams.loss!r}")
        consistency, equivariance = self.equivariant_terms(batch, generator)
        if stage is not None:
            size = len(batch["measurement"])
            self.log(f"{stage}/consistency_loss", consistency, batch_size=size, sync_dist=stage == "val")
            self.log(f"{stage}/equivariance_loss", equivariance, batch_size=size, sync_dist=stage == "val")
        return consistency + self.hparams.ei_weight * equivariance

    def validation_step(self, batch, batch_idx):
        loss = self.hparams.loss
        if loss != "supervised":  # the same rotations at every validation: a generator seeded by the batch
            value = self.self_supervised_loss(batch, torch.Generator().manual_seed(int(batch_idx)), stage="val")
            self.log(f"val/{loss}_loss", value, sync_dist=True, batch_size=len(batch["measurement"]))
        if "ground_truth" not in batch:  # measurements only: no image metrics
            return None
        return super().validation_step(batch, batch_idx)

    # -- checks and labels ----------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.loss == "supervised":
            data = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
            if data is not None and getattr(data, "train_ground_truth", True) is False:
                raise ValueError(f"loss 'supervised' needs the ground truth of the training split, which "
                                 f"{type(data).__name__} leaves out (train_ground_truth: false); use loss "
                                 f"'noise2inverse' or 'equivariant', or train_ground_truth: true")
        super().setup(stage)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        loss = self.hparams.loss
        if loss != "supervised":
            settings = (f"K = {self.hparams.n2i_splits}, {self.hparams.n2i_strategy}" if loss == "noise2inverse" else
                        f"{self.hparams.ei_rotations} rotations, weight {self.hparams.ei_weight:g}")
            rank_zero_info(f"{self.method_name}: loss {loss} ({settings}) from the measurements alone; val/psnr and "
                           f"val/ssim compare with the validation split's ground truth where it has one, for "
                           f"monitoring only (training never reads a ground truth)")

    @property
    def method_name(self) -> str:
        name = self.hparams.get("method_name")
        loss = self.hparams.get("loss", "supervised")
        return name or (type(self).__name__ if loss == "supervised" else f"{type(self).__name__} ({loss})")
