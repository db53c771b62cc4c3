"""Generative image priors (Duff, Campbell & Ehrhardt, "Regularising inverse problems with generative
machine learning models", arXiv 2107.11191): a generator ``G: z -> x`` trained on images alone (no
measurements, so it knows no forward operator), which then regularises the reconstruction for ANY
operator ``A`` (:class:`~lightning_recon.methods.generative_regulariser.GenerativeRegulariser`,
:func:`~lightning_recon.solvers.generative.generative_reconstruction`).

- :class:`VAEPrior`: a VAE (``ImageEncoder`` + ``ImageDecoder``), ELBO with a Gaussian likelihood
  of fixed std and KL to N(0, I); the decoder is ``G``.
- :class:`GANPrior`: a WGAN-GP (``ImageDecoder`` generator, ``ConvCritic`` on the image alone,
  :mod:`~lightning_recon.methods.adversarial`).

The priors train on ``batch["ground_truth"]`` only. Their ``reconstruct`` (validation: ``val/psnr``
and the panels) is the range reconstruction with few iterations (``val_iterations``) in the data
module's geometry, started at the encoder's mean of the FBP for the VAE and at ``z = 0`` for the
GAN: cheap, and it measures what the prior is for. The VAE also logs ``val/autoencoder_psnr``,
``G(E(x))`` against ``x``: how well the generator represents the images, the ceiling of "range".
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch

from ..metrics import psnr
from ..nets import ConvCritic
from ..nets.latent_decoder import ImageDecoder, ImageEncoder
from ..solvers.conjugate_gradient import sum_of_squares
from ..solvers.generative import check_settings, generative_reconstruction
from .adversarial import WassersteinTraining
from .base import ReconstructionModule

__all__ = ["GANPrior", "VAEPrior", "encoded_fbp"]


def encoded_fbp(encoder: ImageEncoder, batch: Dict[str, torch.Tensor]) -> Optional[torch.Tensor]:
    """The encoder's mean of ``batch["fbp"]``, ``(B, latent_dim)``: the code restart 0 starts from
    (``None`` when the batch has no FBP)."""
    if "fbp" not in batch:
        return None
    with torch.no_grad():
        return encoder(batch["fbp"])[0]


class _GenerativePrior(ReconstructionModule):
    """Shared by the priors: the generator ``self.generator`` (an ``ImageDecoder`` on the data's
    image shape) and the validation reconstruction (range, ``val_iterations`` Adam steps)."""

    def __init__(self, latent_dim: int, generator_channels: Sequence[int], val_iterations: int, val_mu: float,
                 val_lr: float, **kwargs):
        super().__init__(**kwargs)
        if not self.is_image_problem:
            raise ValueError("generative priors are for single-channel images (B, 1, H, W); "
                             f"the forward model's domain is {self.operator.domain_shape}")
        check_settings("range", val_mu, 1.0, val_iterations, 1, val_lr, 1)
        image_shape = self.operator.domain_shape[1:]
        self.generator = ImageDecoder(latent_dim, image_shape, tuple(generator_channels))

    def initial_code(self, batch: Dict[str, torch.Tensor]) -> Optional[torch.Tensor]:
        """The code restart 0 starts from (``None``: z = 0)."""
        return None

    @torch.no_grad()
    def sample(self, count: int, seed: Optional[int] = None) -> torch.Tensor:
        """``count`` images ``G(z)``, ``z ~ N(0, I)``: ``(count, 1, H, W)``."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        z = torch.randn(count, self.generator.latent_dim, generator=gen).to(self.device)
        return self.generator(z)

    def reconstruct(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Range reconstruction with ``val_iterations`` Adam steps (:func:`generative_reconstruction`)."""
        hp = self.hparams
        return generative_reconstruction(self.generator, self.operator, batch["measurement"], mode="range",
                                         mu=hp.val_mu, iterations=hp.val_iterations, lr=hp.val_lr,
                                         z_init=self.initial_code(batch))["x"]


class VAEPrior(_GenerativePrior):
    """Variational autoencoder on the ground-truth images; its decoder is the generator ``G``.

    Loss per image: the negative ELBO ``‖x − G(z)‖² / (2 s²) + β KL(q(z|x) ‖ N(0, I))`` with
    ``z = mean + exp(½ logvar) ε`` (one draw), ``s = likelihood_std`` (a Gaussian likelihood of
    fixed std per pixel; the constant is dropped) and β ramped linearly from 0 to 1 over
    ``kl_warmup_steps`` (0: β = 1 throughout). Logged per image: ``train/loss`` (the loss),
    ``train/nelbo`` (β = 1), ``train/reconstruction``, ``train/kl``. AdamW with the base's
    schedule over all parameters.

    Args:
        latent_dim: length of ``z``.
        generator_channels: decoder channels from the coarsest stage to the finest (``ImageDecoder``).
        encoder_channels: encoder channels from the finest to the coarsest (default: the decoder's reversed).
        likelihood_std: ``s``; smaller values favour sharper reconstructions over a regular latent space.
        kl_warmup_steps: steps of the linear KL ramp.
        val_iterations, val_mu, val_lr: the validation reconstruction (range, from the encoder's mean of the FBP).
        **kwargs: forward_model and the other settings of :class:`ReconstructionModule`.
    """

    def __init__(self, latent_dim: int = 128, generator_channels: Sequence[int] = (128, 64, 32, 16, 8),
                 encoder_channels: Optional[Sequence[int]] = None, likelihood_std: float = 0.05,
                 kl_warmup_steps: int = 0, val_iterations: int = 25, val_mu: float = 0.1, val_lr: float = 0.05,
                 **kwargs):
        super().__init__(latent_dim, generator_channels, val_iterations, val_mu, val_lr, **kwargs)
        if not (math.isfinite(likelihood_std) and likelihood_std > 0):
            raise ValueError(f"likelihood_std must be > 0, got {likelihood_std}")
        if kl_warmup_steps < 0:
            raise ValueError(f"kl_warmup_steps must be >= 0, got {kl_warmup_steps}")
        channels = tuple(encoder_channels) if encoder_channels is not None else tuple(generator_channels)[::-1]
        self.encoder = ImageEncoder(latent_dim, self.generator.image_shape, channels)

    def elbo_terms(self, images: torch.Tensor, generator: Optional[torch.Generator] = None
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per image ``(reconstruction term, KL)``, each ``(B,)``, with one reparameterised draw."""
        mean, log_variance = self.encoder(images)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device) if generator \
            else torch.randn_like(mean)
        z = mean + torch.exp(0.5 * log_variance) * noise
        reconstruction = sum_of_squares(self.generator(z) - images) / (2 * self.hparams.likelihood_std ** 2)
        kl = 0.5 * (mean.pow(2) + log_variance.exp() - 1 - log_variance).sum(1)
        return reconstruction, kl

    def kl_weight(self) -> float:
        warmup = self.hparams.kl_warmup_steps
        return 1.0 if warmup == 0 else min(1.0, self.global_step / warmup)

    def training_step(self, batch, batch_idx):
        images = batch["ground_truth"]
        reconstruction, kl = self.elbo_terms(images)
        loss = (reconstruction + self.kl_weight() * kl).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        self.log_dict({"train/nelbo": (reconstruction + kl).mean(), "train/reconstruction": reconstruction.mean(),
                       "train/kl": kl.mean()}, batch_size=len(images))
        return loss

    def initial_code(self, batch: Dict[str, torch.Tensor]) -> Optional[torch.Tensor]:
        return encoded_fbp(self.encoder, batch)

    def validation_extras(self, pred: torch.Tensor, batch: Dict[str, torch.Tensor]) -> None:
        truth = batch["ground_truth"]
        with torch.no_grad():
            autoencoded = self.generator(self.encoder(truth)[0])
        self.log("val/autoencoder_psnr", psnr(autoencoded.float(), truth, data_range=self.hparams.data_range).mean(),
                 batch_size=len(truth))


class GANPrior(WassersteinTraining, _GenerativePrior):
    """Wasserstein GAN with gradient penalty on the ground-truth images; ``G`` is the generator.

    Manual optimisation as :class:`~lightning_recon.methods.cwgan.ConditionalWGAN`
    (:mod:`~lightning_recon.methods.adversarial`): every training step is one critic update
    (``D(G(z)) − D(x) + GP``, ``z ~ N(0, I)``), every ``n_critic``-th also one generator update
    (``−D(G(z))``); ``trainer.global_step`` counts both. The critic is a ``ConvCritic`` on the image
    alone (one channel). Adam, constant step.

    Args:
        latent_dim, generator_channels: the generator (``ImageDecoder``).
        critic_channels: critic channels per stage.
        n_critic, gp_weight: critic updates per generator update, λ of the gradient penalty.
        val_iterations, val_mu, val_lr: the validation reconstruction (range, from z = 0).
        lr, betas, scheduler: Adam settings of both optimisers (WGAN-GP: 1e-4…2e-4, (0.5, 0.9)).
    """

    def __init__(self, latent_dim: int = 128, generator_channels: Sequence[int] = (128, 64, 32, 16, 8),
                 critic_channels: Sequence[int] = (16, 32, 64, 128, 256), n_critic: int = 5,
                 gp_weight: float = 10.0, val_iterations: int = 25, val_mu: float = 0.1, val_lr: float = 0.05,
                 lr: float = 2e-4, betas: Tuple[float, float] = (0.5, 0.9), scheduler: str = "none", **kwargs):
        super().__init__(latent_dim, generator_channels, val_iterations, val_mu, val_lr, lr=lr, betas=betas,
                         scheduler=scheduler, **kwargs)
        if n_critic < 1:
            raise ValueError(f"n_critic must be >= 1, got {n_critic}")
        if not gp_weight >= 0:
            raise ValueError(f"gp_weight must be >= 0, got {gp_weight}")
        if scheduler != "none":
            raise ValueError("GANPrior trains with a constant step (scheduler 'none'), got "
                             f"{scheduler!r}")
        self.automatic_optimization = False
        self.critic = ConvCritic(in_channels=1, channels=tuple(critic_channels))

    def training_step(self, batch, batch_idx):
        real = batch["ground_truth"]

        def generated() -> torch.Tensor:
            return self.generator(torch.randn(len(real), self.generator.latent_dim, device=real.device, dtype=real.dtype))

        self.wasserstein_step(lambda: (real, generated()), lambda: -self.critic(generated()).mean(), (), len(real))

    def configure_optimizers(self):
        betas = tuple(self.hparams.betas)
        return [torch.optim.Adam(self.generator.parameters(), lr=self.hparams.lr, betas=betas),
                torch.optim.Adam(self.critic.parameters(), lr=self.hparams.lr, betas=betas)]
