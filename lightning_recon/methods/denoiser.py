"""Gaussian denoisers trained on the ground-truth images of any data module, the prior of the
plug-and-play methods (:mod:`lightning_recon.methods.plug_and_play`).

- :class:`DenoiserModule`: trains a DRUNet-style U-Net or a lifting-scheme invertible denoiser
  (:mod:`lightning_recon.nets.denoisers`) on ``batch["ground_truth"]`` plus white Gaussian noise of
  a level drawn per image, uniformly in ``[sigma_min, sigma_max]``, given to the network. It is a
  :class:`~.base.ReconstructionModule` like every method: the ``forward_model`` the CLI links from the
  data module fixes the image shape ``(C, H, W)`` (its operator is never applied), and the base's
  ``val/psnr`` / ``val/ssim``, panels and test table measure ``reconstruct``, which here is the
  denoising of the ground truth at the fixed level ``val_sigma`` (noise seeded per sample index, the
  same at every validation).
- :func:`load_denoiser`: the network of a ``DenoiserModule`` checkpoint (read with
  ``weights_only=True``) and its trained noise range; one-line ``ValueError`` for anything else.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..checkpointing import read_lightning_checkpoint
from ..metrics import psnr
from ..nets.denoisers import DRUNet, LiftingDenoiser
from ..pretrained import resolve_checkpoint
from .base import ReconstructionModule

__all__ = ["ARCHITECTURE_OF", "NETWORKS", "DenoiserInfo", "DenoiserModule", "build_denoiser", "load_denoiser"]

NETWORKS = ("drunet", "lifting")
ARCHITECTURE_SETTINGS = ("network", "channels", "blocks", "levels", "hidden", "denoiser_hidden")
ARCHITECTURE_OF = {"drunet": ("channels", "blocks"), "lifting": ("levels", "hidden", "denoiser_hidden")}


def build_denoiser(network: str, in_channels: int, channels: Sequence[int] = (16, 32, 64), blocks: int = 2,
                   levels: int = 3, hidden: int = 16, denoiser_hidden: int = 32) -> nn.Module:
    """The denoiser named by ``network``: ``"drunet"`` (:class:`DRUNet` with ``channels`` and
    ``blocks``) or ``"lifting"`` (:class:`LiftingDenoiser` with ``levels``, ``hidden`` and
    ``denoiser_hidden``)."""
    if network == "drunet":
        return DRUNet(in_channels, tuple(channels), blocks)
    if network == "lifting":
        return LiftingDenoiser(in_channels, levels, hidden, denoiser_hidden)
    raise ValueError(f"network must be one of {NETWORKS}, got {network!r}")


def check_sigma_range(sigma_min: float, sigma_max: float, val_sigma: Optional[float] = None) -> None:
    """``0 ≤ sigma_min ≤ sigma_max``, ``sigma_max > 0`` and ``val_sigma`` inside: else a ``ValueError``."""
    for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max), ("val_sigma", val_sigma)):
        if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                      and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not 0 <= sigma_min <= sigma_max or sigma_max <= 0:
        raise ValueError(f"need 0 <= sigma_min <= sigma_max and sigma_max > 0, got sigma_min={sigma_min}, "
                         f"sigma_max={sigma_max}")
    if val_sigma is not None and not sigma_min <= val_sigma <= sigma_max:
        raise ValueError(f"val_sigma {val_sigma} is outside the training range [{sigma_min}, {sigma_max}]")


def image_domain(operator, what: str) -> Tuple[int, int, int]:
    """The operator's domain as images ``(C, H, W)``; ``ValueError`` naming ``what`` otherwise."""
    domain = tuple(operator.domain_shape)
    if len(domain) != 3:
        raise ValueError(f"{what} works on images (C, H, W); this forward model's domain is {domain}")
    return domain


class DenoiserModule(ReconstructionModule):
    """A Gaussian denoiser ``D(x, σ)`` trained on the data's ground-truth images.

    Training step: per image ``σ ~ U[sigma_min, sigma_max]``, ``x̃ = x + σ ε`` (``ε ~ N(0, I)``),
    loss ``MSE(D(x̃, σ), x)`` (``train/loss``). Validation and test: ``reconstruct`` denoises the
    ground truth plus noise of std ``val_sigma`` (seeded by ``val_seed`` and each sample's
    ``index``), so ``val/psnr`` is the denoising PSNR at that level; ``val/noisy_psnr`` is the
    noisy input's. ``forward(x, sigma)`` is the denoiser itself. σ is in image units (the std of
    noise added to images of the data's scale: for images in [0, 1], 0.05 is 5 % of the range).

    Args:
        network: ``"drunet"`` or ``"lifting"`` (:func:`build_denoiser`).
        channels, blocks: the DRUNet (widths per scale, residual blocks per scale).
        levels, hidden, denoiser_hidden: the lifting denoiser (levels, width of predict/update,
            width of the detail-band networks).
        sigma_min, sigma_max: the training noise range; plug-and-play refuses levels outside it.
        val_sigma, val_seed: the validation noise level and seed.
        method_name: the results-table row (default ``"Denoiser <network> σ=<val_sigma>"``).
        **kwargs: forward_model (fixes the image shape) and the other settings of
            :class:`~.base.ReconstructionModule` (lr, scheduler, …).
    """

    def __init__(self, network: str = "drunet", channels: Sequence[int] = (16, 32, 64), blocks: int = 2,
                 levels: int = 3, hidden: int = 16, denoiser_hidden: int = 32, sigma_min: float = 0.0,
                 sigma_max: float = 0.2, val_sigma: float = 0.05, val_seed: int = 0,
                 method_name: Optional[str] = None, **kwargs):
        check_sigma_range(sigma_min, sigma_max, val_sigma)
        super().__init__(method_name=method_name, **kwargs)
        if not method_name:
            self.hparams.update(method_name=f"Denoiser {network} σ={val_sigma:g}")
        channels_in, height, width = image_domain(self.operator, "DenoiserModule")
        self.net = build_denoiser(network, channels_in, channels, blocks, levels, hidden, denoiser_hidden)
        if min(height, width) < self.net.min_size:
            raise ValueError(f"the {network} denoiser takes images of at least {self.net.min_size}x"
                             f"{self.net.min_size} pixels; the forward model's are {height}x{width}")

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """The denoised ``x (B, C, H, W)`` at noise level ``sigma`` (a number or ``(B,)``)."""
        return self.net(x, sigma)

    def noisy(self, truth: torch.Tensor, index: Optional[torch.Tensor]) -> torch.Tensor:
        """``truth`` plus noise of std ``val_sigma``, the draw fixed by ``val_seed`` and each index."""
        indices = index.tolist() if index is not None else list(range(len(truth)))
        noise = torch.stack([torch.randn(truth.shape[1:], generator=torch.Generator().manual_seed(
            int(self.hparams.val_seed) * 1_000_003 + int(i))) for i in indices])
        return truth + self.hparams.val_sigma * noise.to(truth.device, truth.dtype)

    def reconstruct(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The denoised ground truth at ``val_sigma`` (the denoiser needs ``ground_truth``)."""
        if "ground_truth" not in batch:
            raise ValueError("DenoiserModule reconstructs nothing from measurements: it denoises ground-truth "
                             "images; use it as the prior of PlugAndPlay (denoiser: <this checkpoint>)")
        return self.net(self.noisy(batch["ground_truth"], batch.get("index")), self.hparams.val_sigma)

    def training_step(self, batch, batch_idx):
        truth = batch["ground_truth"]
        low, high = self.hparams.sigma_min, self.hparams.sigma_max
        sigma = low + (high - low) * torch.rand(len(truth), device=truth.device, dtype=truth.dtype)
        noisy = truth + sigma.view(-1, *([1] * (truth.dim() - 1))) * torch.randn_like(truth)
        loss = torch.nn.functional.mse_loss(self.net(noisy, sigma), truth)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(truth))
        return loss

    def validation_extras(self, pred: torch.Tensor, batch: Dict[str, torch.Tensor]) -> None:
        truth = batch["ground_truth"]
        noisy = self.noisy(truth, batch.get("index")).float()
        self.log("val/noisy_psnr", psnr(noisy, truth, data_range=self.hparams.data_range).mean(),
                 batch_size=len(truth))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch  # no FBP: the denoiser never sees measurements

    def build_before_test(self) -> None:
        """Nothing to build: the operator is never applied."""


@dataclass(frozen=True)
class DenoiserInfo:
    """What a denoiser checkpoint says about its network: the trained noise range, the image
    channels, the smallest image side it takes, and the architecture settings."""

    path: str
    network: str
    sigma_min: float
    sigma_max: float
    in_channels: int
    min_size: int
    architecture: Mapping[str, Any]

    def check_sigma(self, sigma: float, name: str = "sigma") -> None:
        """``ValueError`` (one line) when ``sigma`` is outside ``[sigma_min, sigma_max]`` or ≤ 0."""
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {sigma!r}")
        tolerance = 1e-9 * self.sigma_max
        if not self.sigma_min - tolerance <= sigma <= self.sigma_max + tolerance:
            raise ValueError(f"{name} {sigma:g} is outside the noise range the denoiser {self.path} was trained on "
                             f"[{self.sigma_min:g}, {self.sigma_max:g}]")

    def check_domain(self, operator) -> None:
        """``ValueError`` (one line) unless the operator's domain is images the network takes."""
        domain = tuple(operator.domain_shape)
        if len(domain) != 3 or domain[0] != self.in_channels:
            raise ValueError(f"the denoiser {self.path} takes images ({self.in_channels}, H, W); this forward model's "
                             f"domain is {domain}")
        if min(domain[1:]) < self.min_size:
            raise ValueError(f"the denoiser {self.path} ({self.network}) takes images of at least {self.min_size}x"
                             f"{self.min_size} pixels; this forward model's are {domain[1]}x{domain[2]}")


def _channels_from_state(network: str, state: Mapping[str, torch.Tensor], prefix: str) -> int:
    """The image channels of a saved network, from its first layer's weight."""
    if network == "drunet":
        return int(state[f"{prefix}head.weight"].shape[1]) - 1
    return int(state[f"{prefix}transform.steps.0.predict.0.weight"].shape[1])


def load_denoiser(path: str, prefix: str = "net.") -> Tuple[nn.Module, DenoiserInfo]:
    """The denoiser network of a :class:`DenoiserModule` checkpoint (a path or a shipped name), read
    with ``weights_only=True``, on the CPU in evaluation mode and frozen, with its
    :class:`DenoiserInfo`. ``ValueError`` (one line) for a missing or unreadable file and for a
    checkpoint of another method."""
    try:
        checkpoint = read_lightning_checkpoint(resolve_checkpoint(path))
    except ValueError as error:
        raise ValueError(f"denoiser {error}") from None
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    state = checkpoint["state_dict"]
    class_name = str(hparams.get("_class_path", "")).rsplit(".", 1)[-1]
    network = hparams.get("network")
    weights = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    if (class_name not in ("", "DenoiserModule") or network not in NETWORKS or "sigma_max" not in hparams
            or not weights):
        holds = class_name or "another model"
        raise ValueError(f"denoiser {path} holds {holds}, not a DenoiserModule checkpoint: train a denoiser first "
                         "(configs/model/denoiser_drunet.yaml or denoiser_lifting.yaml)")
    in_channels = _channels_from_state(network, state, prefix)
    architecture = {key: hparams[key] for key in ARCHITECTURE_SETTINGS if key in hparams}
    net = build_denoiser(in_channels=in_channels, **architecture)
    try:
        net.load_state_dict(weights)
    except RuntimeError as error:
        first = str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else str(error)
        raise ValueError(f"denoiser {path}: its weights do not fit its recorded architecture ({first})") from None
    net.eval().requires_grad_(False)
    info = DenoiserInfo(path=str(path), network=network, sigma_min=float(hparams.get("sigma_min", 0.0)),
                        sigma_max=float(hparams["sigma_max"]), in_channels=in_channels, min_size=net.min_size,
                        architecture=architecture)
    return net, info
