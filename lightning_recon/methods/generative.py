"""Generative regularisers (Duff, Campbell & Ehrhardt, "Regularising inverse problems with generative
machine learning models", arXiv 2107.11191).

A generator ``G: z -> x`` is trained on images alone (no measurements, so it knows no forward
operator) and then regularises the reconstruction for ANY operator ``A``:

- **range** (the image lies in the generator's range)::

      x = G(ẑ),   ẑ = argmin_z ‖A G(z) − y‖² + μ‖z‖²

- **soft** (the image lies close to, not in, the range)::

      (x̂, ẑ) = argmin_{x, z} ‖A x − y‖² + λ (‖G(z) − x‖² + μ‖z‖²)

Modules:

- :class:`VAEPrior`: a VAE (``ImageEncoder`` + ``ImageDecoder``), ELBO with a Gaussian likelihood
  of fixed std and KL to N(0, I); the decoder is ``G``.
- :class:`GANPrior`: a WGAN-GP (``ImageDecoder`` generator, ``ConditionalCritic`` on the image
  alone, :func:`~lightning_recon.methods.cwgan.gradient_penalty`).
- :class:`GenerativeRegulariser`: loads a trained prior's checkpoint (``weights_only=True``) and
  reconstructs every test batch by optimisation, batched over the batch and the restarts.

The priors train on ``batch["ground_truth"]`` only. Their ``reconstruct`` (validation: ``val/psnr``
and the panels) is the range reconstruction with few iterations (``val_iterations``) in the data
module's geometry, started at the encoder's mean of the FBP for the VAE and at ``z = 0`` for the
GAN: cheap, and it measures what the prior is for. The VAE also logs ``val/autoencoder_psnr``,
``G(E(x))`` against ``x``: how well the generator represents the images, the ceiling of "range".

How the optimisation runs (:func:`generative_reconstruction`):

- **range**: Adam on ``z`` with a cosine-annealed step, gradients through ``G`` and ``A``.
- **soft**: the objective is quadratic in ``x``: for fixed ``z`` the minimiser solves
  ``(AᵀA + λI) x = Aᵀy + λ G(z)``. Each iteration updates ``x`` by ``cg_iterations`` steps of
  conjugate gradients (warm-started from the previous ``x``), then ``z`` by one Adam step on
  ``λ(‖G(z) − x‖² + μ‖z‖²)`` with ``x`` fixed (the gradient of the reduced objective
  ``min_x Φ(x, z)`` at the inner solution). This is well posed for any λ: for large λ,
  ``x ≈ G(z)`` and the z-step is the range gradient with μ_eff = λμ. So soft with λ → ∞ and μ = μ_range / λ
  tends to range with μ_range (tested); with μ fixed it tends to range with μ → ∞, i.e. ``G(0)``.
  Joint Adam on ``(x, z)`` does not have this limit: for large λ both chase each other and the data
  barely move them.
- ``restarts`` initial codes per measurement (restart 0: the encoder's mean of the FBP when the
  prior has an encoder and ``encoder_init``, else ``z = 0``; the others ``z ~ N(0, I)``, seeded);
  per measurement the restart with the lowest final objective is kept.
- ``nonnegative``: range reconstructs ``max(G(z), 0)``; soft clips ``x`` at 0 after each inner
  solve (a projection of the CG iterate, not the exact constrained minimiser).

Units: μ and λ are in the units of the formulas above (sums of squares over measurement pixels,
image pixels and latent entries), so the best values depend on the geometry and noise level (as TV's
α does). As a MAP estimate with noise std σ (per measurement pixel) and a residual std τ of the
images about the range, ``μ_range ≈ σ²``, ``λ ≈ σ²/τ²`` and ``μ_soft ≈ τ²``. ``tune=True`` picks μ
(range) or λ (soft) by validation PSNR, as ``TVBaseline`` picks α.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from lightning.pytorch.utilities import rank_zero_info

from ..metrics import psnr
from ..nets import ConditionalCritic
from ..nets.generative import ImageDecoder, ImageEncoder
from ..physics.operator import LinearOperator
from .base import ReconstructionModule, validation_samples
from .cwgan import gradient_penalty

__all__ = ["GANPrior", "GenerativeRegulariser", "VAEPrior", "generative_reconstruction", "load_prior",
           "MODES"]

MODES = ("range", "soft")
RESTART_STD = 1.0  # std of the random initial codes of restarts 1, 2, …


# -- the optimisation ------------------------------------------------------------------------------
def _sum_per_sample(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).pow(2).sum(1)


def _conjugate_gradients(normal, rhs: torch.Tensor, x: torch.Tensor, iterations: int) -> torch.Tensor:
    """``iterations`` CG steps on ``normal(x) = rhs`` from ``x``, per sample (batched dot products).
    ``normal`` must be symmetric positive definite."""
    residual = rhs - normal(x)
    direction = residual.clone()
    rho = _sum_per_sample(residual)
    shape = (-1,) + (1,) * (x.dim() - 1)
    for _ in range(iterations):
        image = normal(direction)
        curvature = (direction * image).flatten(1).sum(1)
        alpha = torch.where(curvature > 0, rho / curvature.clamp_min(1e-30), torch.zeros_like(rho))
        x = x + alpha.view(shape) * direction
        residual = residual - alpha.view(shape) * image
        rho_next = _sum_per_sample(residual)
        beta = torch.where(rho > 0, rho_next / rho.clamp_min(1e-30), torch.zeros_like(rho))
        direction = residual + beta.view(shape) * direction
        rho = rho_next
    return x


def _check_settings(mode: str, mu: float, lam: float, iterations: int, restarts: int, lr: float,
                    cg_iterations: int) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    for name, value in (("mu", mu), ("lam", lam), ("lr", lr)):
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if mu < 0:
        raise ValueError(f"mu must be >= 0, got {mu}")
    if mode == "soft" and lam <= 0:
        raise ValueError(f"lam must be > 0 for mode 'soft' (the weight of ‖G(z) − x‖²), got {lam}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    for name, value in (("iterations", iterations), ("restarts", restarts), ("cg_iterations", cg_iterations)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def generative_reconstruction(
    generator: torch.nn.Module,
    operator: LinearOperator,
    measurement: torch.Tensor,
    mode: str = "range",
    mu: float = 0.1,
    lam: float = 10.0,
    iterations: int = 200,
    restarts: int = 1,
    lr: float = 0.05,
    cg_iterations: int = 5,
    nonnegative: bool = False,
    z_init: Optional[torch.Tensor] = None,
    seed: int = 0,
) -> Dict[str, torch.Tensor]:
    """Range or soft generative-regularised reconstruction of a batch of measurements.

    Args:
        generator: ``G: (N, latent_dim) -> (N, *operator.domain_shape)``; its parameters are not
            changed (gradients are taken w.r.t. ``z`` only).
        operator: the forward model ``A``.
        measurement: ``y (B, *operator.range_shape)``.
        mode, mu, lam: the objective (module docstring); ``lam`` is unused by ``range``.
        iterations: Adam steps on ``z`` (cosine-annealed from ``lr`` to 0).
        restarts: initial codes per measurement; the one with the lowest final objective is kept.
        cg_iterations: conjugate-gradient steps on ``x`` per iteration (soft).
        nonnegative: ``x ≥ 0`` (module docstring).
        z_init: ``(B, latent_dim)`` code of restart 0 (default: 0); restarts ≥ 1 draw
            ``N(0, I)`` from a generator seeded with ``seed``.

    Returns:
        ``{"x": (B, *domain), "z": (B, latent_dim), "objective": (B,), "misfit": (B,)}`` of the kept
        restart; ``misfit`` is ``‖A x − y‖²``.

    Runs with gradients enabled even inside ``torch.no_grad``/``torch.inference_mode`` (validation
    and test loops); the returned tensors carry no graph.
    """
    _check_settings(mode, mu, lam, iterations, restarts, lr, cg_iterations)
    latent_dim = int(getattr(generator, "latent_dim"))
    batch = measurement.shape[0]
    if tuple(measurement.shape[1:]) != tuple(operator.range_shape):
        raise ValueError(f"measurement must be (B, {', '.join(map(str, operator.range_shape))}), "
                         f"got {tuple(measurement.shape)}")
    if z_init is not None and tuple(z_init.shape) != (batch, latent_dim):
        raise ValueError(f"z_init must be ({batch}, {latent_dim}), got {tuple(z_init.shape)}")
    device, dtype = measurement.device, measurement.dtype
    with torch.inference_mode(False), torch.enable_grad():
        y = measurement.detach().clone().repeat(restarts, *([1] * (measurement.dim() - 1)))  # restart-major
        start = torch.zeros(restarts, batch, latent_dim, device=device, dtype=dtype)
        if z_init is not None:
            start[0] = z_init.detach().clone().to(device, dtype)
        if restarts > 1:
            draws = torch.randn(restarts - 1, batch, latent_dim, generator=torch.Generator().manual_seed(seed),
                                dtype=dtype)
            start[1:] = RESTART_STD * draws.to(device)
        z = start.reshape(restarts * batch, latent_dim).requires_grad_(True)
        optimizer = torch.optim.Adam([z], lr=lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, iterations) / iterations)))

        def image(code: torch.Tensor) -> torch.Tensor:
            out = generator(code)
            return out.clamp_min(0) if nonnegative else out

        def step_z(loss: torch.Tensor) -> None:
            """One Adam step on ``z`` down ``loss`` (gradients w.r.t. ``z`` only: ``G`` stays fixed)."""
            (z.grad,) = torch.autograd.grad(loss, z)
            optimizer.step()
            schedule.step()

        if mode == "range":
            for _ in range(iterations):
                step_z((_sum_per_sample(operator(image(z)) - y) + mu * _sum_per_sample(z)).sum())
            with torch.no_grad():
                x = image(z)
                misfit = _sum_per_sample(operator(x) - y)
                objective = misfit + mu * _sum_per_sample(z)
        else:
            back_projection = operator.apply_adjoint(y).detach()

            def normal(v: torch.Tensor) -> torch.Tensor:
                return operator.apply_adjoint(operator(v)) + lam * v

            def solve_x(x: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
                x = _conjugate_gradients(normal, back_projection + lam * generated, x, cg_iterations)
                return x.clamp_min(0) if nonnegative else x

            with torch.no_grad():
                x = generator(z).detach()
            for _ in range(iterations):
                generated = generator(z)
                with torch.no_grad():
                    x = solve_x(x, generated.detach())
                step_z(lam * (_sum_per_sample(generated - x) + mu * _sum_per_sample(z)).sum())
            with torch.no_grad():
                generated = generator(z)
                x = solve_x(x, generated)
                misfit = _sum_per_sample(operator(x) - y)
                objective = misfit + lam * (_sum_per_sample(generated - x) + mu * _sum_per_sample(z))
        best = objective.view(restarts, batch).argmin(dim=0)
        keep = best * batch + torch.arange(batch, device=device)
        return {"x": x[keep].detach(), "z": z[keep].detach(), "objective": objective[keep].detach(),
                "misfit": misfit[keep].detach()}


def encoded_fbp(encoder: ImageEncoder, batch: Dict[str, torch.Tensor]) -> Optional[torch.Tensor]:
    """The encoder's mean of ``batch["fbp"]``, ``(B, latent_dim)``: the code restart 0 starts from
    (``None`` when the batch has no FBP)."""
    if "fbp" not in batch:
        return None
    with torch.no_grad():
        return encoder(batch["fbp"])[0]


# -- the priors ------------------------------------------------------------------------------------
class _GenerativePrior(ReconstructionModule):
    """Shared by the priors: the generator ``self.generator`` (an ``ImageDecoder`` on the data's
    image shape) and the validation reconstruction (range, ``val_iterations`` Adam steps)."""

    def __init__(self, latent_dim: int, generator_channels: Sequence[int], val_iterations: int, val_mu: float,
                 val_lr: float, **kwargs):
        super().__init__(**kwargs)
        if not self.is_image_problem:
            raise ValueError("generative priors are for single-channel images (B, 1, H, W); "
                             f"the geometry's domain is {self.operator.domain_shape}")
        _check_settings("range", val_mu, 1.0, val_iterations, 1, val_lr, 1)
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
        """Range reconstruction with ``val_iterations`` Adam steps (module docstring)."""
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
        **kwargs: geometry and the other settings of :class:`ReconstructionModule`.
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
        reconstruction = _sum_per_sample(self.generator(z) - images) / (2 * self.hparams.likelihood_std ** 2)
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


class GANPrior(_GenerativePrior):
    """Wasserstein GAN with gradient penalty on the ground-truth images; ``G`` is the generator.

    Manual optimisation as :class:`~lightning_recon.methods.cwgan.ConditionalWGAN`: every training
    step is one critic update (``D(G(z)) − D(x) + GP``, ``z ~ N(0, I)``), every ``n_critic``-th
    also one generator update (``−D(G(z))``); ``trainer.global_step`` counts both. The critic is a
    ``ConditionalCritic`` on the image alone (one channel). Adam, constant step by default.

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
        self.critic = ConditionalCritic(in_channels=1, channels=tuple(critic_channels))

    def _is_generator_turn(self) -> bool:
        n_critic = self.hparams.n_critic
        return self.global_step % (n_critic + 1) == n_critic - 1

    def training_step(self, batch, batch_idx):
        generator_optimizer, critic_optimizer = self.optimizers()
        real = batch["ground_truth"]
        size = len(real)
        generator_turn = self._is_generator_turn()

        with torch.no_grad():
            fake = self.generator(torch.randn(size, self.generator.latent_dim, device=real.device, dtype=real.dtype))
        wasserstein = self.critic(real).mean() - self.critic(fake).mean()
        penalty = gradient_penalty(self.critic, real, fake, weight=self.hparams.gp_weight)
        critic_loss = penalty - wasserstein
        critic_optimizer.zero_grad(set_to_none=True)
        self.manual_backward(critic_loss)
        critic_optimizer.step()
        self.log_dict({"train/critic_loss": critic_loss, "train/wasserstein": wasserstein,
                       "train/gradient_penalty": penalty}, batch_size=size)

        if generator_turn:
            self.toggle_optimizer(generator_optimizer)
            fake = self.generator(torch.randn(size, self.generator.latent_dim, device=real.device, dtype=real.dtype))
            generator_loss = -self.critic(fake).mean()
            generator_optimizer.zero_grad(set_to_none=True)
            self.manual_backward(generator_loss)
            generator_optimizer.step()
            self.untoggle_optimizer(generator_optimizer)
            self.log("train/generator_loss", generator_loss, prog_bar=True, batch_size=size)

    def configure_optimizers(self):
        betas = tuple(self.hparams.betas)
        return [torch.optim.Adam(self.generator.parameters(), lr=self.hparams.lr, betas=betas),
                torch.optim.Adam(self.critic.parameters(), lr=self.hparams.lr, betas=betas)]


# -- loading a prior -------------------------------------------------------------------------------
def load_prior(path: str) -> Tuple[ImageDecoder, Optional[ImageEncoder], Dict[str, Any]]:
    """Generator (and encoder, for a VAE) of a ``VAEPrior``/``GANPrior`` checkpoint, read with
    ``weights_only=True`` and built from the checkpoint's hyperparameters; also the hyperparameters
    with ``kind`` (``"VAE"`` or ``"GAN"``) added. Modules on the CPU, in evaluation mode, frozen."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"prior_checkpoint {path!r} not found: train a prior first "
                         "(configs/experiment/ellipses_small_vae_prior.yaml)")
    try:
        checkpoint = torch.load(file, weights_only=True, map_location="cpu")
    except Exception as error:
        raise ValueError(f"prior_checkpoint {path!r} is not a readable checkpoint ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from error
    hparams = dict(checkpoint.get("hyper_parameters") or {}) if isinstance(checkpoint, dict) else {}
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not state or not any(key.startswith("generator.") for key in state) or "latent_dim" not in hparams:
        raise ValueError(f"prior_checkpoint {path!r} holds no generative prior (a VAEPrior or GANPrior checkpoint "
                         "with generator weights and latent_dim)")
    image_shape = tuple(hparams["geometry"]["image_shape"])
    generator = ImageDecoder(int(hparams["latent_dim"]), image_shape, tuple(hparams["generator_channels"]))
    generator.load_state_dict({k[len("generator."):]: v for k, v in state.items() if k.startswith("generator.")})
    encoder = None
    if any(key.startswith("encoder.") for key in state):
        channels = hparams.get("encoder_channels") or tuple(hparams["generator_channels"])[::-1]
        encoder = ImageEncoder(int(hparams["latent_dim"]), image_shape, tuple(channels))
        encoder.load_state_dict({k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")})
    for module in (generator, encoder):
        if module is not None:
            module.eval().requires_grad_(False)
    hparams["kind"] = "VAE" if encoder is not None else "GAN"
    return generator, encoder, hparams


# -- the regulariser -------------------------------------------------------------------------------
class GenerativeRegulariser(ReconstructionModule):
    """Reconstruction with a trained generative prior as regulariser, "range" or "soft", for the data
    module's operator, whatever it is: the generator is the one of ``prior_checkpoint``, unchanged.

    Nothing to train: run it with ``train.py test``. Each test batch is reconstructed by
    :func:`generative_reconstruction` (batched over the measurements and ``restarts``). With
    ``tune=True`` it first picks μ (range) from ``mus`` or λ (soft) from ``lams`` by mean PSNR on
    the first ``tune_samples`` validation samples, and records the choice in its hyperparameters.

    Args:
        prior_checkpoint: a ``VAEPrior`` or ``GANPrior`` checkpoint (read with ``weights_only=True``);
            its image size must be the geometry's, its geometry need not be. Read at construction
            when it exists, else at ``setup`` (``attach_prior``).
        mode: ``"range"`` or ``"soft"``.
        mu, lam: μ and λ of the objective (module docstring; ``lam`` only for soft).
        iterations, restarts, lr, cg_iterations, nonnegative, seed: see :func:`generative_reconstruction`.
        encoder_init: restart 0 starts at the encoder's mean of the FBP (VAE priors; else ``z = 0``).
        tune, mus, lams, tune_samples: the validation tuning.
        method_name: the results-table row (default ``"<VAE|GAN> <mode>"``).
        **kwargs: geometry and the other settings of :class:`ReconstructionModule`.
    """

    def __init__(self, prior_checkpoint: str, mode: str = "soft", mu: float = 0.003, lam: float = 10.0,
                 iterations: int = 200, restarts: int = 2, lr: float = 0.05, cg_iterations: int = 5,
                 nonnegative: bool = True, encoder_init: bool = True, seed: int = 0, tune: bool = False,
                 mus: Sequence[float] = (0.01, 0.03, 0.1, 0.3, 1.0),
                 lams: Sequence[float] = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0), tune_samples: int = 8,
                 method_name: Optional[str] = None, **kwargs):
        _check_settings(mode, mu, lam if mode == "soft" else 1.0, iterations, restarts, lr, cg_iterations)
        grid = mus if mode == "range" else lams
        if tune and (not grid or any(not (isinstance(v, (int, float)) and v > 0) for v in grid)):
            raise ValueError(f"{'mus' if mode == 'range' else 'lams'} must be a non-empty list of positive "
                             f"numbers to tune, got {list(grid)}")
        if tune_samples < 1:
            raise ValueError(f"tune_samples must be >= 1, got {tune_samples}")
        super().__init__(method_name=method_name, **kwargs)
        self.generator: Optional[ImageDecoder] = None
        self.encoder: Optional[ImageEncoder] = None
        self.prior_kind: Optional[str] = None
        if Path(prior_checkpoint).expanduser().is_file():
            self.attach_prior()

    def attach_prior(self) -> None:
        """Load generator (and encoder) from ``prior_checkpoint`` if not done yet: at construction
        when the file exists, else at ``setup`` (so that configs naming a prior still to be trained
        parse and instantiate); a missing or wrong file is a ``ValueError`` naming it."""
        if self.generator is not None:
            return
        generator, encoder, prior_hparams = load_prior(self.hparams.prior_checkpoint)
        if tuple(self.operator.domain_shape) != (1, *generator.image_shape):
            raise ValueError(f"the prior generates images {generator.image_shape[0]}x{generator.image_shape[1]}, "
                             f"the geometry reconstructs {tuple(self.operator.domain_shape)[1:]}: use a prior "
                             "trained at this image size")
        self.generator, self.encoder = generator.to(self.device), encoder.to(self.device) if encoder else None
        self.prior_kind = prior_hparams["kind"]
        if not self.hparams.get("method_name"):
            self.hparams.update(method_name=f"{self.prior_kind} {self.hparams.mode}")

    def setup(self, stage: str) -> None:
        self.attach_prior()

    def reconstruct(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        return self.solve(batch)["x"]

    def solve(self, batch: Dict[str, torch.Tensor], **overrides: Any) -> Dict[str, torch.Tensor]:
        """:func:`generative_reconstruction` of ``batch["measurement"]`` with the module's settings
        (``overrides`` replace some, e.g. ``mu`` while tuning)."""
        self.attach_prior()
        hp = self.hparams
        settings = dict(mode=hp.mode, mu=hp.mu, lam=hp.lam, iterations=hp.iterations, restarts=hp.restarts, lr=hp.lr,
                        cg_iterations=hp.cg_iterations, nonnegative=hp.nonnegative, seed=hp.seed)
        settings.update(overrides)
        z_init = encoded_fbp(self.encoder, batch) if self.encoder is not None and hp.encoder_init else None
        return generative_reconstruction(self.generator, self.operator, batch["measurement"], z_init=z_init,
                                         **settings)

    def training_step(self, batch, batch_idx):
        raise RuntimeError("GenerativeRegulariser has nothing to train: run `train.py test`; train the prior "
                           "with VAEPrior or GANPrior")

    def configure_optimizers(self):
        raise RuntimeError("GenerativeRegulariser has nothing to train: run `train.py test`; train the prior "
                           "with VAEPrior or GANPrior")

    def on_test_start(self) -> None:
        with torch.no_grad():  # build the operator before the timed steps (the base runs a whole reconstruction)
            self.operator(torch.zeros(1, *self.operator.domain_shape, device=self.device))
        if self.hparams.tune:
            measurement, truth = validation_samples(self.trainer, self.hparams.tune_samples)
            self.tune_on(measurement.to(self.device), truth.to(self.device))

    def tune_on(self, measurement: torch.Tensor, truth: torch.Tensor) -> Dict[float, float]:
        """Pick μ (range) or λ (soft) from the grid by mean PSNR on these samples; returns the scores."""
        name, grid = ("mu", self.hparams.mus) if self.hparams.mode == "range" else ("lam", self.hparams.lams)
        batch = self.measurement_batch(measurement)
        scores = {}
        for value in grid:
            pred = self.solve(batch, **{name: float(value)})["x"]
            scores[float(value)] = float(psnr(pred, truth).mean())
        best = max(scores, key=scores.get)
        self.hparams.update({name: best})
        rank_zero_info(f"{self.method_name} tuned on {len(truth)} validation samples: {name} {best:g} "
                       f"({', '.join(f'{v:g}: {s:.2f} dB' for v, s in scores.items())})")
        return scores
