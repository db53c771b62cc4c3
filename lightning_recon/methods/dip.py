"""Deep Image Prior (Ulyanov et al. 2018) on one measurement, with optional TV (Baguer et al. 2020).

``θ* = argmin_θ ‖A f_θ(z) − y‖² / m + γ TV(f_θ(z)) / n``, ``x̂ = f_θ(z)`` at the lowest loss seen
(DIP over-fits noise when run long, so the last iterate is not returned). ``z`` is fixed noise or
the FBP of ``y``; ``f_θ`` starts random or from pre-trained weights (EDIP).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from ..metrics import psnr, ssim
from ..nets import UNet
from ..physics.fbp import FBP
from ..physics.geometry import Geometry, geometry_from_dict
from ..physics.ray_transform import RayTransform
from .variational import total_variation

__all__ = ["DeepImagePrior", "RepeatedMeasurement"]


class RepeatedMeasurement(Dataset):
    """The single measurement as a dataset: ``steps`` items, each the same ``(1, A, D)`` sinogram."""

    def __init__(self, measurement: torch.Tensor, steps: int):
        if measurement.dim() != 3:
            raise ValueError(f"measurement must be (1, A, D), got shape {tuple(measurement.shape)}")
        self.measurement, self.steps = measurement, int(steps)

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.measurement

    def loader(self) -> DataLoader:
        return DataLoader(self, batch_size=1, shuffle=False)


class DeepImagePrior(L.LightningModule):
    """DIP reconstruction of one sinogram ``(1, 1, A, D)``; fit it with ``trainer.fit(model, loader)``.

    Args:
        geometry: the measurement geometry (dict of numbers).
        channels, skip_channels: the encoder-decoder U-Net (GroupNorm).
        network_input: ``"noise"`` (fixed, seeded) or ``"fbp"`` (EDIP's choice).
        tv_weight: γ of the TV term (per pixel), 0 for plain DIP.
        lr: Adam learning rate.
        pretrained: a checkpoint whose ``net.*`` weights initialise the network (EDIP), or None.
        reference: optional reference image ``(H, W)`` (e.g. a full-angle reconstruction) for
            PSNR/SSIM logging; not used by the optimisation.
    """

    def __init__(
        self,
        geometry: Union[Dict[str, Any], Geometry],
        channels: Sequence[int] = (64, 64, 64, 64, 64),
        skip_channels: Sequence[int] = (4, 4, 4, 4, 4),
        network_input: str = "fbp",
        tv_weight: float = 1e-4,
        lr: float = 1e-3,
        pretrained: Optional[str] = None,
        seed: int = 0,
        fbp_filter: str = "Hann",
        fbp_frequency_scaling: float = 1.0,
    ):
        super().__init__()
        geometry = geometry_from_dict(geometry)
        if network_input not in ("noise", "fbp"):
            raise ValueError(f"network_input must be 'noise' or 'fbp', got {network_input!r}")
        if tv_weight < 0:
            raise ValueError(f"tv_weight must be >= 0, got {tv_weight}")
        self.save_hyperparameters()
        self.save_hyperparameters(dict(self.hparams, geometry=geometry.to_dict(), channels=list(channels),
                                       skip_channels=list(skip_channels)))
        self.geometry = geometry
        self.ray_transform = RayTransform(geometry)
        self.fbp = FBP(geometry, fbp_filter, fbp_frequency_scaling, ray_transform=self.ray_transform)
        self.net = UNet(1, 1, channels=tuple(channels), skip_channels=tuple(skip_channels), norm="group")
        if pretrained:
            state = torch.load(pretrained, map_location="cpu", weights_only=True)["state_dict"]
            weights = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
            self.net.load_state_dict(weights)
        self.reference: Optional[torch.Tensor] = None
        self.best_loss = float("inf")
        self.best_image: Optional[torch.Tensor] = None
        self.losses: list = []

    def network_input(self, y: torch.Tensor) -> torch.Tensor:
        """The fixed input ``z`` (scaled to O(1)); also fixes ``image_scale`` = max of the FBP."""
        if not hasattr(self, "_input") or self._input.device != y.device:
            fbp = self.fbp(y).detach()
            self.image_scale = float(fbp.max().clamp_min(1e-12))
            if self.hparams.network_input == "fbp":
                self._input = fbp / self.image_scale
            else:
                gen = torch.Generator().manual_seed(self.hparams.seed)
                self._input = (0.1 * torch.rand((1, 1, *self.geometry.image_shape), generator=gen)).to(y.device)
        return self._input

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """The reconstruction in the units of ``y``'s image (the network works at O(1))."""
        return self.net(self.network_input(y)) * self.image_scale

    def training_step(self, y: torch.Tensor, batch_idx: int):
        x = self(y)
        # relative data misfit and per-pixel TV of the O(1) image: γ means the same on any scan
        data_loss = torch.nn.functional.mse_loss(self.ray_transform(x), y) / y.pow(2).mean()
        loss = data_loss + self.hparams.tv_weight * total_variation(x / self.image_scale).mean() / x[0].numel()
        value = float(loss)
        self.losses.append(value)
        if value < self.best_loss:
            self.best_loss, self.best_image = value, x.detach().clone()
        self.log("train/loss", loss, prog_bar=True, batch_size=1)
        self.log("train/data_loss", data_loss, batch_size=1)
        if self.reference is not None:
            ref = self.reference.to(x.device)[None, None]
            data_range = float(ref.max() - ref.min())
            self.log("train/psnr", psnr(x.detach(), ref, data_range).mean(), prog_bar=True, batch_size=1)
            self.log("train/ssim", ssim(x.detach(), ref, data_range).mean(), batch_size=1)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr)
