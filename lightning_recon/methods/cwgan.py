"""Conditional Wasserstein GAN posterior sampler (Adler & Öktem 2018, "Deep Bayesian Inversion").

The generator ``G(y, z) = x_FBP(y) + U([x_FBP(y), z])`` maps a measurement and per-pixel noise
``z ~ N(0, I)`` to one sample of the posterior ``p(x | y)``. The critic sees pairs of images with
the FBP as condition (a "mini-discriminator" after the paper): a *real* pair holds the ground
truth and one generated sample (in random order), a *fake* pair two generated samples of the
same measurement. One of the fake samples is the one in the real pair (``z1``), so a step needs
two generator calls, not three::

    real = shuffle(x, G(y, z1)),   fake = (G(y, z1), G(y, z2))

A generator that collapses to one image per measurement makes every fake pair two equal images,
which the critic tells apart from the real pairs, so sample diversity is rewarded. Losses are
WGAN-GP (Gulrajani et al. 2017): the critic minimises ``D(fake) − D(real) + λ·GP`` with the
gradient penalty on interpolates of the pairs (λ = 10), the generator minimises
``D(real) − D(fake)`` (it appears in both pairs). No supervised term: the posterior mean comes
from the adversarial training alone.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch

from ..nets import ConditionalGenerator, ConvCritic
from .adversarial import WassersteinTraining
from .base import ReconstructionModule
from .schedules import with_schedule

__all__ = ["ConditionalWGAN"]

PREDICT_KEPT_SAMPLES = 4  # samples returned by predict_step next to mean and std


class ConditionalWGAN(WassersteinTraining, ReconstructionModule):
    """Posterior sampling by a conditional WGAN-GP with a mini-discriminator critic.

    Training uses manual optimisation: every training step (batch) is one critic update, and
    every ``n_critic``-th also one generator update on the same batch. ``trainer.global_step``
    counts both (Lightning counts every optimiser step): with ``n_critic = 5`` a run of
    ``max_steps = 60000`` makes 50000 critic and 10000 generator updates (:mod:`.adversarial`). The
    ``cosine`` schedule anneals each optimiser over its share of ``max_steps``, ``cosine-time`` each
    over the time budget ``max_time`` (:func:`~.schedules.with_schedule`). Trainer-level gradient clipping is
    not available under manual optimisation (leave ``gradient_clip_val`` unset).

    ``reconstruct`` (validation, test table) is the posterior mean over ``num_samples`` samples;
    ``posterior`` gives mean and pixel-wise std, ``sample`` the samples themselves.

    Args:
        noise_channels: channels of the per-pixel noise ``z`` of the generator.
        generator_channels: U-Net channels per scale of the generator.
        critic_channels: channels per stage of the critic (see ``ConvCritic``).
        n_critic: critic updates per generator update (4–5).
        gp_weight: λ of the gradient penalty.
        num_samples: samples per measurement behind ``reconstruct`` (validation and test).
        predict_samples: samples per measurement in ``predict_step``.
        sample_chunk: samples per measurement drawn in one generator call (memory vs speed).
        lr, betas, scheduler: Adam settings of both optimisers (the paper: 2e-4, (0.5, 0.9), constant).
        **kwargs: forward_model and the other settings of :class:`ReconstructionModule`.
    """

    def __init__(
        self,
        noise_channels: int = 3,
        generator_channels: Sequence[int] = (32, 32, 64, 64, 128),
        critic_channels: Sequence[int] = (32, 64, 128, 256),
        n_critic: int = 5,
        gp_weight: float = 10.0,
        num_samples: int = 8,
        predict_samples: int = 100,
        sample_chunk: int = 16,
        lr: float = 2e-4,
        betas: Tuple[float, float] = (0.5, 0.9),
        scheduler: str = "none",
        **kwargs,
    ):
        super().__init__(lr=lr, betas=betas, scheduler=scheduler, **kwargs)
        if noise_channels < 1:
            raise ValueError(f"noise_channels must be >= 1 (the samples come from the noise), got {noise_channels}")
        if n_critic < 1:
            raise ValueError(f"n_critic must be >= 1, got {n_critic}")
        for name, value in (("num_samples", num_samples), ("predict_samples", predict_samples)):
            if value < 2:
                raise ValueError(f"{name} must be >= 2 (mean and std need two samples), got {value}")
        if sample_chunk < 1:
            raise ValueError(f"sample_chunk must be >= 1, got {sample_chunk}")
        self.automatic_optimization = False
        self.generator = ConditionalGenerator(noise_channels, channels=tuple(generator_channels))
        self.critic = ConvCritic(in_channels=3, channels=tuple(critic_channels))  # a pair and the FBP

    # -- sampling -------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, batch: Dict[str, torch.Tensor], num_samples: int, chunk: Optional[int] = None) -> torch.Tensor:
        """``num_samples`` posterior samples per measurement: ``(S, B, 1, H, W)`` in image units.

        ``chunk`` samples per measurement (default ``sample_chunk``) go through the generator at
        once, i.e. ``chunk · B`` images per call.
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        chunk = chunk or self.hparams.sample_chunk
        fbp = batch["fbp"]
        samples = []
        for start in range(0, num_samples, chunk):
            count = min(chunk, num_samples - start)
            samples.append(self.generator(fbp.repeat(count, 1, 1, 1)).view(count, *fbp.shape))
        return torch.cat(samples)

    def posterior(self, batch: Dict[str, torch.Tensor], num_samples: Optional[int] = None,
                  chunk: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and pixel-wise std (unbiased) over ``num_samples`` samples, each ``(B, 1, H, W)``."""
        num_samples = num_samples or self.hparams.num_samples
        if num_samples < 2:
            raise ValueError(f"num_samples must be >= 2 for a std, got {num_samples}")
        samples = self.sample(batch, num_samples, chunk).float()
        return samples.mean(dim=0), samples.std(dim=0)

    def reconstruct(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Posterior mean over ``num_samples`` samples, ``(B, 1, H, W)``."""
        return self.posterior(batch)[0]

    def predict_step(self, batch, batch_idx):
        """``{"mean", "std": (B, 1, H, W), "samples": (PREDICT_KEPT_SAMPLES, B, 1, H, W)}`` from
        ``predict_samples`` samples per measurement."""
        samples = self.sample(batch, self.hparams.predict_samples).float()
        return {"mean": samples.mean(dim=0), "std": samples.std(dim=0), "samples": samples[:PREDICT_KEPT_SAMPLES]}

    # -- training -------------------------------------------------------------------------------
    @staticmethod
    def pairs(truth: torch.Tensor, sample_1: torch.Tensor, sample_2: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mini-discriminator inputs ``(B, 2, H, W)``: real = (truth, sample_1) in random order per
        measurement, fake = (sample_1, sample_2)."""
        truth_first = torch.rand(truth.shape[0], 1, 1, 1, device=truth.device) < 0.5
        real = torch.cat([torch.where(truth_first, truth, sample_1), torch.where(truth_first, sample_1, truth)], dim=1)
        return real, torch.cat([sample_1, sample_2], dim=1)

    def training_step(self, batch, batch_idx):
        fbp, truth = batch["fbp"], batch["ground_truth"]

        def pairs() -> Tuple[torch.Tensor, torch.Tensor]:
            return self.pairs(truth, self.generator(fbp), self.generator(fbp))

        def generator_loss() -> torch.Tensor:
            real, fake = pairs()
            return self.critic(real, fbp).mean() - self.critic(fake, fbp).mean()

        self.wasserstein_step(pairs, generator_loss, (fbp,), len(truth))

    def configure_optimizers(self):
        betas = tuple(self.hparams.betas)
        optimizers = [torch.optim.Adam(self.generator.parameters(), lr=self.hparams.lr, betas=betas),
                      torch.optim.Adam(self.critic.parameters(), lr=self.hparams.lr, betas=betas)]
        steps = None
        if self.hparams.scheduler == "cosine":
            total_steps = self.trainer.estimated_stepping_batches
            if not math.isfinite(total_steps):
                raise ValueError("scheduler='cosine' needs a finite trainer.max_steps (or max_epochs)")
            n_critic = self.hparams.n_critic
            generator_steps = max(1, int(total_steps) // (n_critic + 1))
            steps = (generator_steps, generator_steps * n_critic)
        return with_schedule(optimizers, self.hparams.scheduler, self.trainer, steps)
