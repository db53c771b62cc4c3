"""Reconstruction with a trained denoiser as the prior, for any operator whose domain is images
the denoiser takes: plug-and-play (nothing to train; settings tuned on validation data) and deep
unfolding (HQS unrolled, trained end to end).

- :class:`PlugAndPlay`: PnP-HQS (DPIR), PnP-ADMM, PnP-PGD or RED (:mod:`lightning_recon.solvers.pnp`)
  with the network of a :class:`~.denoiser.DenoiserModule` checkpoint, unchanged, whatever the
  geometry; ``tune=True`` picks λ (or PGD's step), the final noise level and the iteration count
  by validation PSNR, as ``TVBaseline`` picks α.
- :class:`UnfoldedHQS`: ``n_iter`` HQS iterations with the denoiser inside and a learned noise
  level and weight per iteration, trained on pairs like learned gradient descent, optionally
  starting from a pretrained denoiser.

Units as in :mod:`lightning_recon.solvers.pnp`: σ in image units (those the denoiser was trained
with), the weight λ in the units of ``½‖Ax − y‖²`` stated for pixels of side 1 (for a geometry in
another length unit, with pixels of side ``p``, the solver gets ``λ p²``, as TV's α): the
measurement noise variance per detector pixel is the MAP choice.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
from lightning.pytorch.utilities import rank_zero_info

from ..metrics import psnr
from ..physics.geometry import Geometry2D
from ..solvers.pnp import ALGORITHMS, pnp, pnp_hqs, sigma_schedule
from .base import ReconstructionModule, TunedOnValidation
from .denoiser import (ARCHITECTURE_OF, DenoiserInfo, build_denoiser, check_sigma_range, image_domain,
                       load_denoiser)

__all__ = ["PlugAndPlay", "UnfoldedHQS"]

INITS = ("fbp", "zero")


def _unit_scale(geometry) -> float:
    """``p²``, the pixel area in the geometry's length unit (1 for other operators)."""
    return float(math.prod(geometry.pixel_size)) if isinstance(geometry, Geometry2D) else 1.0


def _plain(value):
    """Tuples as lists (checkpoints and configs spell sequences either way)."""
    return list(value) if isinstance(value, (list, tuple)) else value


def _positive(name: str, value) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _count(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


class PlugAndPlay(TunedOnValidation, ReconstructionModule):
    """Plug-and-play reconstruction with a trained denoiser (``denoiser``: a ``DenoiserModule``
    checkpoint, read with ``weights_only=True``; its network is used unchanged for any geometry).

    Nothing to train: run it with ``train.py test``. Each batch runs ``algorithm`` for
    ``iterations`` iterations with the noise levels :func:`~lightning_recon.solvers.pnp.sigma_schedule`
    ``(sigma_start, sigma_end, iterations)`` (geometric, DPIR's), from the FBP (``init="fbp"``, CT)
    or zero. With ``tune=True`` it first picks, by mean PSNR on the first ``tune_samples`` validation
    samples, the best of ``weights`` (λ; PGD: ``steps``) × ``sigma_ends`` × ``iteration_counts``
    (an empty list keeps the setting) and records the choice in its hyperparameters. HQS and ADMM
    solve the data term exactly (by CG) at every iteration; PGD and RED move from the start by
    gradient steps and need many more iterations (tune ``iteration_counts``).

    Args:
        denoiser: a ``DenoiserModule`` checkpoint (path or shipped name). Read at construction when
            it exists, else at ``setup`` (configs naming a denoiser still to be trained parse).
        algorithm: ``"hqs"``, ``"admm"``, ``"pgd"`` or ``"red"``.
        iterations, sigma_start, sigma_end: the schedule; every level must lie in the denoiser's
            trained range ``[sigma_min, sigma_max]`` and ``sigma_start >= sigma_end``.
        weight: λ (HQS, ADMM, RED), in pixel units (module docstring).
        step: PGD's step relative to ``1/‖A‖²`` (default 1); RED's (default ``1/(1 + λ̃/σ²)``).
        cg_iterations: CG steps per least-squares step (HQS, ADMM).
        init: ``"fbp"`` (the batch's FBP where there is one) or ``"zero"``.
        nonnegative: clip iterates at 0.
        tune, weights, steps, sigma_ends, iteration_counts, tune_samples: the validation tuning.
        method_name: the results-table row (default ``"PnP-<ALGORITHM> (<network>)"``).
        **kwargs: forward_model and the other settings of :class:`ReconstructionModule`.
    """

    def __init__(self, denoiser: str, algorithm: str = "hqs", iterations: int = 20, sigma_start: float = 0.1,
                 sigma_end: float = 0.02, weight: float = 0.01, step: Optional[float] = None, cg_iterations: int = 5,
                 init: str = "fbp", nonnegative: bool = True, tune: bool = True,
                 weights: Sequence[float] = (0.001, 0.003, 0.01, 0.03, 0.1), steps: Sequence[float] = (0.5, 1.0),
                 sigma_ends: Sequence[float] = (0.01, 0.02, 0.04), iteration_counts: Sequence[int] = (),
                 tune_samples: int = 8, method_name: Optional[str] = None, **kwargs):
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        for name, value in (("iterations", iterations), ("cg_iterations", cg_iterations),
                            ("tune_samples", tune_samples)):
            _count(name, value)
        for name, value in (("sigma_start", sigma_start), ("sigma_end", sigma_end), ("weight", weight)):
            _positive(name, value)
        if step is not None:
            _positive("step", step)
        for name, grid in (("weights", weights), ("steps", steps), ("sigma_ends", sigma_ends)):
            for value in grid:
                _positive(f"every entry of {name}", value)
        for value in iteration_counts:
            _count("every entry of iteration_counts", value)
        for end in (sigma_end, *(sigma_ends if tune else ())):
            if end > sigma_start:
                raise ValueError(f"the noise levels decrease: sigma_end {end:g} > sigma_start {sigma_start:g}")
        super().__init__(method_name=method_name, **kwargs)
        self.denoiser_net: Optional[torch.nn.Module] = None
        self.denoiser_info: Optional[DenoiserInfo] = None
        if Path(denoiser).expanduser().is_file():
            self.attach_denoiser()

    def attach_denoiser(self) -> None:
        """Load the denoiser if not done yet (at construction when the file exists, else at ``setup``)
        and check it fits: one-line ``ValueError`` for a checkpoint that is not a denoiser, a noise
        level outside its trained range, or a geometry whose images it does not take."""
        if self.denoiser_net is not None:
            return
        net, info = load_denoiser(self.hparams.denoiser)
        info.check_domain(self.operator)
        hp = self.hparams
        info.check_sigma(hp.sigma_start, "sigma_start")
        info.check_sigma(hp.sigma_end, "sigma_end")
        for end in (hp.sigma_ends if hp.tune else ()):
            info.check_sigma(end, "sigma_ends entry")
        self.denoiser_net, self.denoiser_info = net.to(self.device), info
        if not hp.get("method_name"):
            hp.update(method_name=f"PnP-{hp.algorithm.upper()} ({info.network})")

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.attach_denoiser()

    def denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:
        return self.denoiser_net(x, sigma)

    def solve(self, batch: Dict[str, torch.Tensor], **overrides) -> torch.Tensor:
        """The reconstruction of ``batch["measurement"]`` with the module's settings (``overrides``
        replace some: ``weight``, ``step``, ``sigma_end``, ``iterations`` while tuning)."""
        self.attach_denoiser()
        settings = {key: self.hparams[key] for key in ("iterations", "sigma_start", "sigma_end", "weight", "step")}
        settings.update(overrides)
        x0 = batch.get("fbp") if self.hparams.init == "fbp" else None
        sigmas = sigma_schedule(settings["sigma_start"], settings["sigma_end"], settings["iterations"])
        with torch.no_grad():
            return pnp(self.hparams.algorithm, batch["measurement"], self.operator, self.denoise, sigmas,
                       weight=settings["weight"] * _unit_scale(self.forward_model), step=settings["step"],
                       cg_iterations=self.hparams.cg_iterations, x0=x0, nonnegative=self.hparams.nonnegative)

    def reconstruct(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        return self.solve(batch)

    def training_step(self, batch, batch_idx):
        raise RuntimeError("PlugAndPlay has nothing to train: run `train.py test`; train the denoiser with "
                           "DenoiserModule (configs/model/denoiser_drunet.yaml), or unfold it with UnfoldedHQS")

    def configure_optimizers(self):
        raise RuntimeError("PlugAndPlay has nothing to train: run `train.py test`; train the denoiser with "
                           "DenoiserModule (configs/model/denoiser_drunet.yaml), or unfold it with UnfoldedHQS")

    def build_before_test(self) -> None:
        self.attach_denoiser()
        with torch.no_grad():  # the operator (and its norm) before the timed steps
            self.operator.operator_norm(device=self.device)

    def tune_on(self, measurement: torch.Tensor, truth: torch.Tensor) -> Dict[tuple, float]:
        """The best (λ or step, final σ, iteration count) of the grids by mean PSNR on these samples."""
        hp = self.hparams
        name, values = ("step", hp.steps) if hp.algorithm == "pgd" else ("weight", hp.weights)
        grid = {name: list(values) or [hp[name]], "sigma_end": list(hp.sigma_ends) or [hp.sigma_end],
                "iterations": list(hp.iteration_counts) or [hp.iterations]}
        batch = self.measurement_batch(measurement)
        scores = {}
        for choice in itertools.product(*grid.values()):
            settings = dict(zip(grid, choice))
            scores[choice] = float(psnr(self.solve(batch, **settings), truth).mean())
        best = max(scores, key=scores.get)
        hp.update(dict(zip(grid, best)))
        rank_zero_info(f"{self.method_name} tuned on {len(truth)} validation samples: "
                       + ", ".join(f"{key} {value:g}" for key, value in zip(grid, best)) + f" ({scores[best]:.2f} dB)")
        return scores


class UnfoldedHQS(ReconstructionModule):
    """Deep unfolding: ``n_iter`` iterations of PnP-HQS (:func:`~lightning_recon.solvers.pnp.pnp_hqs`)
    with the denoiser inside and, per iteration ``k``, a learned noise level ``σ_k`` (kept inside the
    denoiser's range by a sigmoid) and a learned weight ``λ_k > 0``, trained end to end on pairs with
    the base's MSE step (like learned gradient descent). One denoiser serves every iteration.

    Args:
        n_iter: unrolled iterations K.
        pretrained: a ``DenoiserModule`` checkpoint whose network starts the training; its
            architecture and noise range replace the settings below. Read at construction when it
            exists, else when fitting starts. ``None``: a denoiser trained from scratch.
        network, channels, blocks, levels, hidden, denoiser_hidden: the denoiser without ``pretrained``
            (:func:`~.denoiser.build_denoiser`).
        sigma_min, sigma_max: the range of ``σ_k`` (with ``pretrained``: the denoiser's).
        sigma_start, sigma_end, weight: the initial ``σ_k`` (geometric schedule) and ``λ_k``.
        cg_iterations, init, nonnegative: as in :class:`PlugAndPlay`.
        **kwargs: forward_model and the other settings of :class:`ReconstructionModule`.
    """

    training_only_settings = ("pretrained",)

    def __init__(self, n_iter: int = 8, pretrained: Optional[str] = None, network: str = "drunet",
                 channels: Sequence[int] = (16, 32, 64), blocks: int = 2, levels: int = 3, hidden: int = 16,
                 denoiser_hidden: int = 32, sigma_min: float = 0.0, sigma_max: float = 0.2, sigma_start: float = 0.1,
                 sigma_end: float = 0.02, weight: float = 0.01, cg_iterations: int = 5, init: str = "fbp",
                 nonnegative: bool = False, **kwargs):
        for name, value in (("n_iter", n_iter), ("cg_iterations", cg_iterations)):
            _count(name, value)
        for name, value in (("sigma_start", sigma_start), ("sigma_end", sigma_end), ("weight", weight)):
            _positive(name, value)
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        check_sigma_range(sigma_min, sigma_max)
        super().__init__(**kwargs)
        info = None
        if pretrained and Path(pretrained).expanduser().is_file():
            net, info = load_denoiser(pretrained)
            self.hparams.update(dict(info.architecture, sigma_min=info.sigma_min, sigma_max=info.sigma_max))
        hp = self.hparams
        channels_in, height, width = image_domain(self.operator, "UnfoldedHQS")
        self.net = build_denoiser(hp.network, channels_in, hp.channels, hp.blocks, hp.levels, hp.hidden,
                                  hp.denoiser_hidden)
        if min(height, width) < self.net.min_size:
            raise ValueError(f"the {hp.network} denoiser takes images of at least {self.net.min_size}x"
                             f"{self.net.min_size} pixels; the forward model's are {height}x{width}")
        if info is not None:
            info.check_domain(self.operator)
            self.net.load_state_dict(net.state_dict())
            self.__dict__["_pretrained_loaded"] = True
        for name in ("sigma_start", "sigma_end"):
            if not hp.sigma_min <= hp[name] <= hp.sigma_max:
                raise ValueError(f"{name} {hp[name]:g} is outside the denoiser's noise range "
                                 f"[{hp.sigma_min:g}, {hp.sigma_max:g}]")
        low, high = self.sigma_bounds
        fractions = [(s - low) / (high - low) for s in sigma_schedule(sigma_start, sigma_end, n_iter)]
        self.sigma_logits = torch.nn.Parameter(torch.logit(torch.tensor(fractions).clamp(0.01, 0.99)))
        self.log_weights = torch.nn.Parameter(torch.full((n_iter,), math.log(weight)))

    @property
    def sigma_bounds(self):
        """``σ_k`` lies in ``(low, high)``: the denoiser's range, its lower end kept ≥ 1 % of the upper."""
        return max(self.hparams.sigma_min, 0.01 * self.hparams.sigma_max), self.hparams.sigma_max

    def sigmas(self) -> torch.Tensor:
        """The noise levels ``σ_k``, ``(n_iter,)``."""
        low, high = self.sigma_bounds
        return low + (high - low) * torch.sigmoid(self.sigma_logits)

    def weights(self) -> torch.Tensor:
        """The weights ``λ_k``, ``(n_iter,)``, in pixel units."""
        return self.log_weights.exp()

    def setup(self, stage: str) -> None:
        super().setup(stage)
        pretrained = self.hparams.get("pretrained")
        if stage == "fit" and pretrained and not self.__dict__.get("_pretrained_loaded"):
            net, info = load_denoiser(pretrained)  # a file made after construction: same architecture needed
            for key in ("network", *ARCHITECTURE_OF[info.network]):
                theirs, ours = _plain(info.architecture.get(key)), _plain(self.hparams.get(key))
                if theirs != ours:
                    raise ValueError(f"pretrained {pretrained} has {key}={theirs!r}, this UnfoldedHQS {key}={ours!r}: "
                                     "set the denoiser settings to the checkpoint's")
            self.net.load_state_dict(net.state_dict())
            self.__dict__["_pretrained_loaded"] = True

    def reconstruct(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        x0 = batch.get("fbp") if self.hparams.init == "fbp" else None
        sigmas, weights = self.sigmas(), self.weights() * _unit_scale(self.forward_model)
        return pnp_hqs(batch["measurement"], self.operator, self.net, list(sigmas), list(weights),
                       cg_iterations=self.hparams.cg_iterations, x0=x0, nonnegative=self.hparams.nonnegative)

    def on_validation_epoch_end(self) -> None:
        sigmas, weights = self.sigmas().detach(), self.weights().detach()
        self.log_dict({"unfolded/sigma_first": sigmas[0], "unfolded/sigma_last": sigmas[-1],
                       "unfolded/weight_mean": weights.mean()})
