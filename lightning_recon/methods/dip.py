"""Deep Image Prior (Ulyanov et al. 2018) on one measurement, with optional TV (Baguer et al. 2020).

``θ* = argmin_θ ‖A f_θ(z) − y‖² / m + γ TV(f_θ(z)) / n``, ``x̂ = f_θ(z)`` at the lowest loss seen,
or, with the automatic early stop, at the minimum of the iterates' windowed moving variance (DIP
over-fits noise when run long, so the last iterate is not returned). ``z`` is fixed noise or the
(uncut) FBP of ``y``; ``f_θ`` starts random or from pre-trained weights (EDIP).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..checkpointing import read_lightning_checkpoint
from ..nets import DeepDecoder, UNet
from ..physics.geometry import Geometry
from ..solvers.tv import total_variation
from .callbacks import gray_to_rgb_uint8, publish_panels
from .single_measurement import UNCUT_FBP_FILTER, UNCUT_FBP_FREQUENCY_SCALING, SingleMeasurementModule

__all__ = ["DIP_CHECKPOINT_CLASSES", "DeepImagePrior", "RepeatedMeasurement", "dip_unet", "pretrained_weights"]

# Lightning modules whose ``net`` is the DIP network (EDIP stage 1, and DIP itself)
DIP_CHECKPOINT_CLASSES = ("EDIPPretrain", "DeepImagePrior")


def dip_unet(channels: Sequence[int], skip_channels: Sequence[int]) -> UNet:
    """The DIP encoder-decoder U-Net (one channel in and out, GroupNorm)."""
    return UNet(1, 1, channels=tuple(channels), skip_channels=tuple(skip_channels), norm="group")


def pretrained_weights(path: str, net: nn.Module) -> Dict[str, torch.Tensor]:
    """The ``net.*`` weights of the Lightning checkpoint ``path`` (EDIP), checked to load into ``net``.
    ValueError, one line, when the file is unreadable (truncated, empty, not a checkpoint), is not a
    Lightning checkpoint, holds another model, or a network of other keys or shapes."""
    checkpoint = read_lightning_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters") or {}
    saved_class = str(hparams.get("_class_path", "")).rsplit(".", 1)[-1]
    if saved_class and saved_class not in DIP_CHECKPOINT_CLASSES:
        raise ValueError(f"{path} holds a {saved_class}, not a DIP network ({' or '.join(DIP_CHECKPOINT_CLASSES)})")
    weights = {key[len("net."):]: value for key, value in checkpoint["state_dict"].items() if key.startswith("net.")}
    if not weights:
        raise ValueError(f"{path} holds no network weights (no net.* entries), not a DIP network")
    expected = {key: tuple(value.shape) for key, value in net.state_dict().items()}
    found = {key: tuple(getattr(value, "shape", ())) for key, value in weights.items()}
    if found != expected:
        missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
        reshaped = sorted(key for key in expected.keys() & found.keys() if expected[key] != found[key])
        trained = f" (trained with channels {list(hparams['channels'])})" if "channels" in hparams else ""
        example = (missing or unexpected or reshaped)[0]
        raise ValueError(f"{path}: its network{trained} does not fit the one asked for: {len(missing)} weights "
                         f"missing, {len(unexpected)} unexpected, {len(reshaped)} of other shape (e.g. {example})")
    return weights


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


class DeepImagePrior(SingleMeasurementModule):
    """DIP reconstruction of one sinogram ``(1, 1, A, D)``; fit it with ``trainer.fit(model, loader)``.

    A :class:`SingleMeasurementModule`: its training is the per-measurement optimisation; the settings
    of the base not listed here keep their defaults.

    Args:
        forward_model: the measurement geometry (dict of numbers).
        channels, skip_channels: the encoder-decoder U-Net (GroupNorm).
        network: ``"unet"`` (the DIP encoder-decoder) or ``"deep-decoder"`` (Heckel & Hand 2019: 1 × 1
            convolutions, upsampling, ReLU, channel normalisation; ``channels`` per layer, its input
            always fixed seeded noise at the coarsest size; see ``nets.DeepDecoder``).
        network_input: ``"noise"`` (fixed, seeded) or ``"fbp"`` (EDIP's choice); U-Net only.
        tv_weight: γ of the TV term (per pixel), 0 for plain DIP.
        lr: Adam learning rate.
        fbp_filter, fbp_frequency_scaling: the FBP of the input and of ``image_scale``; by default
            the uncut FBP (Hann, 1.0), which keeps the scan's detail.
        lr_warmup: ramp the learning rate linearly over this many first iterations (0: none). Adam's
            first steps move every weight by about ``lr`` whatever its gradient, which undoes much
            of a pre-trained (EDIP) start.
        pretrained: a checkpoint whose ``net.*`` weights initialise the network (EDIP), or None.
        data_loss: ``"mse"`` on the post-log sinogram, or ``"poisson"``: the negative log-likelihood
            of counts ``photons · exp(−y)`` given ``photons · exp(−A x)`` (pre-log photon statistics).
        early_stop_window, early_stop_patience: stop automatically when the windowed moving variance
            of the last ``window`` iterates (ES-WMV, Wang et al. 2021) has not reached a new minimum
            for ``patience`` iterations, and return the iterate at that minimum; 0 disables it.
        snapshot_every: log the current image every N iterations (W&B image or PNG in the run folder).
        iterations_per_step: DIP iterations per Lightning step: Lightning's per-step work (hooks,
            logging) and the host synchronisation of the bookkeeping are paid once per this many
            iterations. The iterates, losses and result do not depend on it (one Adam step each);
            ``trainer.max_steps`` counts iterations.
        reference: optional reference image ``(H, W)`` (e.g. a full-angle reconstruction) for
            PSNR/SSIM logging (once per Lightning step); not used by the optimisation.
    """

    training_only_settings = ("lr_warmup",)

    def __init__(
        self,
        forward_model: Union[Dict[str, Any], Geometry],
        channels: Sequence[int] = (64, 64, 64, 64, 64),
        skip_channels: Sequence[int] = (4, 4, 4, 4, 4),
        network: str = "unet",
        network_input: str = "fbp",
        tv_weight: float = 0.015,
        lr: float = 1e-3,
        lr_warmup: int = 0,
        pretrained: Optional[str] = None,
        seed: int = 0,
        fbp_filter: str = UNCUT_FBP_FILTER,
        fbp_frequency_scaling: float = UNCUT_FBP_FREQUENCY_SCALING,
        data_loss: str = "mse",
        photons: float = 1e4,
        early_stop_window: int = 0,
        early_stop_patience: int = 300,
        snapshot_every: int = 0,
        iterations_per_step: int = 1,
    ):
        if network not in ("unet", "deep-decoder"):
            raise ValueError(f"network must be 'unet' or 'deep-decoder', got {network!r}")
        if network == "deep-decoder" and network_input == "fbp":
            network_input = "noise"  # the deep decoder generates from its own low-resolution noise
        if network_input not in ("noise", "fbp"):
            raise ValueError(f"network_input must be 'noise' or 'fbp', got {network_input!r}")
        if data_loss not in ("mse", "poisson"):
            raise ValueError(f"data_loss must be 'mse' or 'poisson', got {data_loss!r}")
        if lr_warmup < 0:
            raise ValueError(f"lr_warmup must be >= 0, got {lr_warmup}")
        if not 0 <= tv_weight < float("inf"):
            raise ValueError(f"tv_weight must be finite and >= 0, got {tv_weight}")
        if iterations_per_step < 1:
            raise ValueError(f"iterations_per_step must be >= 1, got {iterations_per_step}")
        super().__init__(forward_model, lr=lr, fbp_filter=fbp_filter, fbp_frequency_scaling=fbp_frequency_scaling)
        self.automatic_optimization = False  # DIP iterations are Adam steps inside training_step
        self.save_hyperparameters(dict(self.hparams, channels=list(channels), skip_channels=list(skip_channels)))
        if network == "deep-decoder":
            self.net = DeepDecoder(self.forward_model.image_shape, channels=tuple(channels))
        else:
            self.net = dip_unet(channels, skip_channels)
        if pretrained:
            self.net.load_state_dict(pretrained_weights(pretrained, self.net))
        self.best_loss = float("inf")
        self.best_image: Optional[torch.Tensor] = None
        self.stopped_at: Optional[int] = None
        self._window: list = []
        self._best_variance = (float("inf"), 0)
        self.early_stop_image: Optional[torch.Tensor] = None
        self._best_loss_value: Optional[torch.Tensor] = None  # device-side state of training_step

    @property
    def optimizer_steps_per_batch(self) -> int:
        """DIP iterations (Adam steps) per Lightning step."""
        return self.hparams.iterations_per_step

    @property
    def reconstruction(self) -> Optional[torch.Tensor]:
        """The result ``(1, 1, H, W)``: the iterate at the moving-variance minimum when the early
        stop is on, otherwise the lowest-loss iterate."""
        if self.hparams.early_stop_window and self.early_stop_image is not None:
            return self.early_stop_image
        return self.best_image

    @property
    def early_stop_iteration(self) -> Optional[int]:
        """The iteration (1-based) of the moving-variance minimum, None before the first full window."""
        return self._best_variance[1] or None

    def fixed_input(self, y: torch.Tensor) -> torch.Tensor:
        """The fixed input ``z`` (scaled to O(1)); also fixes ``image_scale`` = max of the FBP."""
        if not hasattr(self, "_input") or self._input.device != y.device:
            if not bool(torch.isfinite(y).all()):
                raise ValueError("measurement contains NaN or inf values")
            fbp = self.fbp(y).detach()
            self.image_scale = float(fbp.max().clamp_min(1e-12))
            if self.hparams.network_input == "fbp":
                self._input = fbp / self.image_scale
            else:
                gen = torch.Generator().manual_seed(self.hparams.seed)
                shape = self.net.input_shape if isinstance(self.net, DeepDecoder) else (1, *self.forward_model.image_shape)
                self._input = (0.1 * torch.rand((1, *shape), generator=gen)).to(y.device)
        return self._input

    def reconstruct(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The current network image in the units of the measurement's image (the network works at O(1))."""
        return self.net(self.fixed_input(batch["measurement"])) * self.image_scale

    def training_step(self, y: torch.Tensor, batch_idx: int):
        """``iterations_per_step`` DIP iterations (fewer at the end of ``max_steps``), each an Adam
        step on ``net``. The best-loss and moving-variance bookkeeping stays on the device; the host
        reads it once per Lightning step (iterations after an early stop inside the step are computed
        but ignored, so every returned number equals the one-iteration-per-step run's)."""
        optimizer = self.optimizers()
        schedule = self.lr_schedulers()
        remaining = self.trainer.max_steps - self.global_step if self.trainer.max_steps > 0 else None
        count = self.hparams.iterations_per_step if remaining is None else min(self.hparams.iterations_per_step, remaining)
        start = len(self.losses)
        losses, best_steps = [], []
        for _ in range(max(count, 1)):
            x = self(y)
            # relative data misfit and per-pixel TV of the O(1) image: γ means the same on any scan
            data_loss = self.data_misfit(self.operator(x), y)
            loss = data_loss + self.hparams.tv_weight * total_variation(x / self.image_scale).mean() / x[0].numel()
            step = start + len(losses) + 1  # 1-based iteration of this iterate
            self._record(loss.detach(), x.detach(), step)
            losses.append(loss.detach())
            best_steps.append(self._best_variance_step.clone())
            if self.hparams.snapshot_every and self.global_step % self.hparams.snapshot_every == 0:
                self._snapshot(x.detach())
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            optimizer.step()
            if schedule is not None:
                schedule.step()
        self._read_back(torch.stack(losses), torch.stack(best_steps), start)
        self.log("train/loss", loss, prog_bar=True, batch_size=1)
        self.log("train/data_loss", data_loss, batch_size=1)
        self.log_reference_scores(x)

    def _record(self, loss: torch.Tensor, x: torch.Tensor, step: int) -> None:
        """Best-loss iterate and ES-WMV state on the device, frozen once the early stop has fired."""
        if self._best_loss_value is None:  # first iterate: the state takes its device and shape
            self._best_loss_value = torch.full((), float("inf"), device=x.device)
            self._best_image = torch.zeros_like(x)
            self._stopped = torch.zeros((), dtype=torch.bool, device=x.device)
            self._best_variance_value = torch.full((), float("inf"), device=x.device)
            self._best_variance_step = torch.zeros((), dtype=torch.long, device=x.device)
            self._early_stop_image = torch.zeros_like(x)
        live = ~self._stopped
        better = live & (loss < self._best_loss_value)
        self._best_loss_value = torch.where(better, loss, self._best_loss_value)
        self._best_image = torch.where(better, x, self._best_image)
        window = self.hparams.early_stop_window
        if not window:
            return
        self._window = (self._window + [x])[-window:]
        if len(self._window) < window:
            return
        stack = torch.stack(self._window)
        variance = (stack - stack.mean(0)).pow(2).mean()
        lower = live & (variance < self._best_variance_value)
        self._best_variance_value = torch.where(lower, variance, self._best_variance_value)
        self._best_variance_step = torch.where(lower, torch.full_like(self._best_variance_step, step),
                                               self._best_variance_step)
        self._early_stop_image = torch.where(lower, x, self._early_stop_image)
        patience_over = (step - self._best_variance_step >= self.hparams.early_stop_patience) & (self._best_variance_step > 0)
        self._stopped = self._stopped | (live & ~lower & patience_over)

    def _read_back(self, losses: torch.Tensor, best_steps: torch.Tensor, start: int) -> None:
        """One host synchronisation per Lightning step: losses, best loss and the early stop."""
        values = losses.tolist()
        if self.hparams.early_stop_window and bool(self._stopped):
            steps = torch.arange(start + 1, start + 1 + len(values))
            fired = (steps - best_steps.cpu() >= self.hparams.early_stop_patience) & (best_steps.cpu() > 0)
            first = int(fired.nonzero()[0]) if fired.any() else len(values) - 1
            values = values[:first + 1]  # the iterations after the stop do not count
            self.stopped_at = start + first + 1
            self.trainer.should_stop = True
        self.losses.extend(values)
        self.best_loss = float(self._best_loss_value)
        self.best_image = self._best_image
        if self.hparams.early_stop_window and int(self._best_variance_step) > 0:
            self._best_variance = (float(self._best_variance_value), int(self._best_variance_step))
            self.early_stop_image = self._early_stop_image

    def data_misfit(self, projected: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.hparams.data_loss == "mse":
            return torch.nn.functional.mse_loss(projected, y) / y.pow(2).mean()
        photons = self.hparams.photons
        counts = photons * torch.exp(-y)
        expected = photons * torch.exp(-projected)
        # Poisson NLL minus its value at the perfect fit, per ray and per photon
        return (expected - counts - counts * (torch.log(expected) - torch.log(counts.clamp_min(1e-12)))).mean() / photons

    def _snapshot(self, x: torch.Tensor) -> None:
        """The current image (window [0, max FBP]) as W&B image ``train/snapshot`` or PNG ``snapshots/step….png``."""
        row = gray_to_rgb_uint8((x[0, 0] / self.image_scale).clamp(0, 1).T.flip(0))
        publish_panels(self.trainer, [row], [f"iteration {self.global_step}"], key="train/snapshot",
                       file_name=f"snapshots/step{self.global_step:06d}.png")

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr)
        warmup = self.hparams.lr_warmup
        if not warmup:
            return optimizer
        ramp = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": ramp, "interval": "step"}}
