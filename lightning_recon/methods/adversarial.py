"""Wasserstein GAN training with gradient penalty (Gulrajani et al. 2017), shared by the conditional
posterior sampler (:class:`~lightning_recon.methods.cwgan.ConditionalWGAN`) and the GAN image prior
(:class:`~lightning_recon.methods.generative_priors.GANPrior`).

Manual optimisation: every training step is one critic update (``D(fake) − D(real) + λ·GP``),
every ``n_critic``-th also one generator update; ``trainer.global_step`` counts both (Lightning
counts every optimiser step), so with ``n_critic = 5`` a cycle is 6 steps.
"""
from __future__ import annotations

from typing import Callable, Sequence, Tuple

import torch

__all__ = ["WassersteinTraining", "gradient_penalty"]


def gradient_penalty(critic: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor, *conditions: torch.Tensor,
                     weight: float = 10.0) -> torch.Tensor:
    """WGAN-GP term ``weight · E[(‖∇_u D(u, c)‖₂ − 1)²]`` at ``u = ε·real + (1 − ε)·fake``,
    ε ~ U(0, 1) per sample; the gradient is taken w.r.t. ``u (B, C, H, W)`` only, not the ``conditions``.
    Differentiable w.r.t. the critic's parameters. Returns a scalar."""
    if real.shape != fake.shape:
        raise ValueError(f"real and fake must have the same shape, got {tuple(real.shape)} and {tuple(fake.shape)}")
    epsilon = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)
    mixed = (epsilon * real.detach() + (1 - epsilon) * fake.detach()).requires_grad_(True)
    (gradient,) = torch.autograd.grad(critic(mixed, *conditions).sum(), mixed, create_graph=True)
    return weight * ((gradient.flatten(1).norm(dim=1) - 1) ** 2).mean()


class WassersteinTraining:
    """Mixin of a LightningModule with ``self.generator``, ``self.critic``, hyperparameters
    ``n_critic`` and ``gp_weight``, manual optimisation and ``configure_optimizers`` returning
    ``[generator optimiser, critic optimiser]`` (with or without a schedule each)."""

    training_only_settings = ("n_critic", "gp_weight")
    compiled_modules = ("generator",)  # the critic stays eager: the gradient penalty's double backward

    @property
    def optimizer_steps_per_batch(self) -> float:
        """Optimiser steps per training batch: one critic step, and a generator step every ``n_critic``-th."""
        return (self.hparams.n_critic + 1) / self.hparams.n_critic

    @property
    def generator_steps(self) -> int:
        """Generator updates made so far (``global_step`` counts critic and generator updates)."""
        return self.global_step // (self.hparams.n_critic + 1)

    def is_generator_turn(self) -> bool:
        """True on the ``n_critic``-th critic step of each cycle; from ``global_step`` so it survives resumes."""
        n_critic = self.hparams.n_critic
        return self.global_step % (n_critic + 1) == n_critic - 1

    def wasserstein_step(self, critic_inputs: Callable[[], Tuple[torch.Tensor, torch.Tensor]],
                         generator_loss: Callable[[], torch.Tensor], conditions: Sequence[torch.Tensor],
                         size: int) -> None:
        """One critic update on ``critic_inputs() = (real, fake)`` (drawn without gradients; the
        critic sees ``critic(·, *conditions)``) and, on the generator's turn, one generator update
        down ``generator_loss()``. Logs ``train/critic_loss``, ``train/wasserstein``,
        ``train/gradient_penalty`` and ``train/generator_loss``."""
        generator_optimizer, critic_optimizer = self.optimizers()
        generator_turn = self.is_generator_turn()

        with torch.no_grad():
            real, fake = critic_inputs()
        wasserstein = self.critic(real, *conditions).mean() - self.critic(fake, *conditions).mean()
        penalty = gradient_penalty(self.critic, real, fake, *conditions, weight=self.hparams.gp_weight)
        critic_loss = penalty - wasserstein
        critic_optimizer.zero_grad(set_to_none=True)
        self.manual_backward(critic_loss)
        critic_optimizer.step()
        self.step_scheduler(1)
        self.log_dict({"train/critic_loss": critic_loss, "train/wasserstein": wasserstein,
                       "train/gradient_penalty": penalty}, prog_bar=False, batch_size=size)

        if generator_turn:
            self.toggle_optimizer(generator_optimizer)
            loss = generator_loss()
            generator_optimizer.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            generator_optimizer.step()
            self.untoggle_optimizer(generator_optimizer)
            self.step_scheduler(0)
            self.log("train/generator_loss", loss, prog_bar=True, batch_size=size)

    def step_scheduler(self, index: int) -> None:
        """Advance the schedule of optimiser ``index`` (0: generator, 1: critic), if there is one."""
        schedulers = self.lr_schedulers()
        if schedulers:
            schedulers[index].step()
