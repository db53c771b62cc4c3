"""Conditional WGAN posterior sampler on tiny data (32², 12 angles): nets, training, sampling, metrics."""
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lightning_recon.cli import cli_main
from lightning_recon.data import SimulatedCTDataModule
from lightning_recon.methods import ConditionalWGAN
from lightning_recon.methods.callbacks import PosteriorPanels, posterior_panel_rows
from lightning_recon.methods.adversarial import gradient_penalty
from lightning_recon.methods.cwgan import PREDICT_KEPT_SAMPLES
from lightning_recon.metrics import interval_coverage, mean_pairwise_distance, spearman_std_error
from lightning_recon.nets import ConditionalGenerator

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SIZE = 32


@pytest.fixture
def data():
    return SimulatedCTDataModule(preset="ellipses-small", image_size=SIZE, num_angles=12, train_length=16,
                                 val_length=4, test_length=4, batch_size=4, num_workers=0)


def tiny_model(data, tmp_path, **kwargs) -> ConditionalWGAN:
    settings = dict(noise_channels=2, generator_channels=(8, 16), critic_channels=(8, 16), n_critic=2,
                    num_samples=4, predict_samples=6, sample_chunk=4, results_dir=str(tmp_path / "results"))
    settings.update(kwargs)
    return ConditionalWGAN(forward_model=data.forward_model_dict, **settings)


def tiny_trainer(tmp_path, max_steps: int, **kwargs) -> L.Trainer:
    settings = dict(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                    limit_val_batches=0, default_root_dir=str(tmp_path))
    settings.update(kwargs)
    return L.Trainer(**settings)


def a_batch(data) -> dict:
    data.setup("fit")
    return next(iter(data.train_dataloader()))


def test_generator_output_shape_noise_dependence_and_errors():
    torch.manual_seed(0)
    generator = ConditionalGenerator(noise_channels=2, channels=(8, 16))
    fbp = torch.rand(3, 1, SIZE, SIZE)
    z = generator.noise(fbp)
    assert z.shape == (3, 2, SIZE, SIZE)
    assert generator(fbp, z).shape == (3, 1, SIZE, SIZE)
    assert torch.equal(generator(fbp, z), generator(fbp, z))
    assert not torch.allclose(generator(fbp), generator(fbp))
    with pytest.raises(ValueError, match="z must be"):
        generator(fbp, torch.randn(3, 1, SIZE, SIZE))
    with pytest.raises(ValueError, match="FBP"):
        generator(torch.rand(3, 2, SIZE, SIZE))


def test_sample_posterior_and_predict_shapes_and_diversity(data, tmp_path):
    torch.manual_seed(0)
    model = tiny_model(data, tmp_path).eval()
    batch = a_batch(data)
    samples = model.sample(batch, 5, chunk=2)
    assert samples.shape == (5, 4, 1, SIZE, SIZE)
    assert (mean_pairwise_distance(samples) > 0).all()
    mean, std = model.posterior(batch, 6)
    assert mean.shape == std.shape == (4, 1, SIZE, SIZE) and (std > 0).all()
    assert model.reconstruct(batch).shape == (4, 1, SIZE, SIZE)
    prediction = model.predict_step(batch, 0)
    assert prediction["mean"].shape == prediction["std"].shape == (4, 1, SIZE, SIZE)
    assert prediction["samples"].shape == (PREDICT_KEPT_SAMPLES, 4, 1, SIZE, SIZE)
    rows = posterior_panel_rows(batch["ground_truth"], samples, shown_samples=2)
    assert len(rows) == 4 and rows[0].shape == (3, SIZE, 6 * SIZE) and rows[0].dtype == torch.uint8
    with pytest.raises(ValueError, match="num_samples"):
        model.posterior(batch, 1)


def test_invalid_settings_raise(data, tmp_path):
    for bad in (dict(n_critic=0), dict(noise_channels=0), dict(num_samples=1), dict(sample_chunk=0)):
        with pytest.raises(ValueError):
            tiny_model(data, tmp_path, **bad)


def test_gradient_penalty_of_a_linear_critic_is_known():
    torch.manual_seed(0)
    weight = torch.randn(1, 2, 4, 4)

    def critic(pair, condition):
        return (weight * pair).sum(dim=(1, 2, 3)) + 3.0 * condition.sum(dim=(1, 2, 3))

    real, fake, condition = torch.randn(5, 2, 4, 4), torch.randn(5, 2, 4, 4), torch.randn(5, 1, 4, 4)
    expected = 10.0 * (weight.norm() - 1) ** 2  # ∇_u D = weight everywhere; the condition does not count
    torch.testing.assert_close(gradient_penalty(critic, real, fake, condition, weight=10.0), expected)
    unit = weight / weight.norm()
    assert float(gradient_penalty(lambda u, c: (unit * u).sum(dim=(1, 2, 3)), real, fake, condition)) < 1e-10


def test_manual_optimisation_updates_both_nets_in_the_critic_rhythm(data, tmp_path):
    torch.manual_seed(0)
    model = tiny_model(data, tmp_path, n_critic=2, scheduler="cosine")
    generator_before = [p.detach().clone() for p in model.generator.parameters()]
    critic_before = [p.detach().clone() for p in model.critic.parameters()]
    trainer = tiny_trainer(tmp_path, max_steps=6)
    trainer.fit(model, data)
    # n_critic = 2: cycles of (critic, critic + generator) = 3 optimiser steps; 6 steps = 2 cycles
    assert trainer.global_step == 6
    generator_optimizer, critic_optimizer = model.optimizers()
    step = lambda optimizer: int(next(iter(optimizer.optimizer.state.values()))["step"])
    assert (step(generator_optimizer), step(critic_optimizer)) == (2, 4)
    assert any(not torch.equal(a, b) for a, b in zip(generator_before, model.generator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(critic_before, model.critic.parameters()))
    generator_schedule, critic_schedule = model.lr_schedulers()
    assert generator_schedule.last_epoch == 2 and critic_schedule.last_epoch == 4
    assert generator_optimizer.param_groups[0]["lr"] < model.hparams.lr  # cosine over 2 generator steps


def test_cosine_time_anneals_both_optimisers_over_the_time_budget(data, tmp_path):
    torch.manual_seed(0)
    model = tiny_model(data, tmp_path, scheduler="cosine-time")
    trainer = tiny_trainer(tmp_path, max_steps=-1, max_epochs=1000, max_time={"seconds": 3})
    trainer.fit(model, data)
    schedules = model.lr_schedulers()
    assert all(isinstance(s, torch.optim.lr_scheduler.LambdaLR) for s in schedules)
    # annealed by time, not over a step count (max_epochs would make a step cosine barely move)
    assert all(s.lr_lambdas[0](0) < 0.1 for s in schedules)  # the factor at the end of the budget
    assert model.optimizers()[1].param_groups[0]["lr"] < 0.5 * model.hparams.lr  # the critic steps every step


def test_training_only_settings_are_collected_over_the_class_hierarchy():
    from lightning_recon.cli import training_only_settings

    for class_path in ("lightning_recon.methods.ConditionalWGAN", "lightning_recon.methods.GANPrior"):
        assert {"lr", "scheduler", "n_critic", "gp_weight"} <= training_only_settings(class_path)
    assert "n_critic" not in training_only_settings("lightning_recon.methods.FBPUNet")
    assert "lr" in training_only_settings("no.such.Model")  # the base's


def test_checkpoint_loads_weights_only_and_fit_resumes_with_panels(data, tmp_path):
    torch.manual_seed(0)
    logger = CSVLogger(str(tmp_path), name="csv")
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    trainer = tiny_trainer(tmp_path, max_steps=3, logger=logger, enable_checkpointing=True,
                           callbacks=[checkpoint, PosteriorPanels(num_images=2, num_samples=4)],
                           limit_val_batches=1, val_check_interval=2)
    trainer.fit(tiny_model(data, tmp_path), data)
    last = tmp_path / "ckpt" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] == 3 and state["hyper_parameters"]["n_critic"] == 2
    assert list((Path(logger.log_dir) / "panels").glob("posterior-*.png"))
    restored = ConditionalWGAN.load_from_checkpoint(last, map_location="cpu", weights_only=True)
    assert restored.hparams.forward_model["image_shape"] == [SIZE, SIZE]

    resumed_model = tiny_model(data, tmp_path)
    resumed = tiny_trainer(tmp_path, max_steps=6)
    resumed.fit(resumed_model, data, ckpt_path=str(last))
    assert resumed.global_step == 6
    generator_optimizer, critic_optimizer = resumed_model.optimizers()
    step = lambda optimizer: int(next(iter(optimizer.optimizer.state.values()))["step"])
    assert (step(generator_optimizer), step(critic_optimizer)) == (2, 4)


def test_cli_fit_then_test_with_the_committed_model_config(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    results = tmp_path / "results"
    args = ["--config", str(CONFIGS / "trainer/cpu.yaml"), "--config", str(CONFIGS / "model/cwgan.yaml"),
            "--data=lightning_recon.data.SimulatedCTDataModule", "--data.init_args.preset=ellipses-small",
            f"--data.init_args.image_size={SIZE}",
            "--data.init_args.num_angles=12", "--data.init_args.train_length=8", "--data.init_args.val_length=4",
            "--data.init_args.test_length=4", "--data.init_args.batch_size=4", "--data.init_args.num_workers=0",
            "--model.init_args.generator_channels=[8,16]", "--model.init_args.critic_channels=[8,16]",
            "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_progress_bar=false", "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}",
            "--checkpoint.dirpath", str(tmp_path / "ckpt"), f"--model.init_args.results_dir={results}"]
    cli_main(["fit", *args])
    cli_main(["test", *args, f"--ckpt_path={tmp_path / 'ckpt' / 'last.ckpt'}"])
    assert "cWGAN" in (results / "results.md").read_text()


def test_coverage_of_calibrated_gaussian_samples_is_the_nominal_level():
    generator = torch.Generator().manual_seed(0)
    std = torch.rand(4000, generator=generator) + 0.1
    truth = std * torch.randn(4000, generator=generator)
    samples = std * torch.randn(500, 4000, generator=generator)
    assert abs(interval_coverage(samples, truth, 0.9) - 0.9) < 0.02
    assert interval_coverage(0.3 * samples, truth, 0.9) < 0.5  # overconfident samples under-cover
    assert interval_coverage(samples, truth, 0.5) == pytest.approx(0.5, abs=0.03)
    with pytest.raises(ValueError):
        interval_coverage(samples, truth, 1.5)
    with pytest.raises(ValueError):
        interval_coverage(samples, truth[:10])


def test_spearman_of_std_and_error_and_pairwise_distance_on_known_cases():
    generator = torch.Generator().manual_seed(0)
    std = torch.rand(2, 1, 16, 16, generator=generator)
    assert spearman_std_error(std, 2.0 * std) == pytest.approx(1.0)
    assert spearman_std_error(std, -std) == pytest.approx(1.0)  # uses |error|
    assert abs(spearman_std_error(std, torch.rand(2, 1, 16, 16, generator=generator))) < 0.15
    two = torch.stack([torch.zeros(3, 1, 8, 8), torch.ones(3, 1, 8, 8)])
    torch.testing.assert_close(mean_pairwise_distance(two), torch.ones(3))
    assert mean_pairwise_distance(torch.ones(4, 2, 1, 8, 8)).abs().max() < 1e-6
    gaussian = 0.5 * torch.randn(20, 2, 1, 32, 32, generator=generator)  # E|a − b|² = 2σ² per pixel
    torch.testing.assert_close(mean_pairwise_distance(gaussian), torch.full((2,), 0.5 * 2 ** 0.5), atol=0.02, rtol=0)
