"""Progress bars count what ``max_steps`` counts: every optimiser step of a GAN and every DIP
iteration, not Lightning's batches."""
import lightning as L
import torch

from lightning_recon.methods.callbacks import StepProgressBar, count_steps_in_progress_bar
from lightning_recon.methods.dip import DeepImagePrior, RepeatedMeasurement
from lightning_recon.physics import ParallelBeam2D, RayTransform


def test_the_dip_bar_counts_iterations_with_several_iterations_per_step(capsys):
    geometry = ParallelBeam2D((16, 16), num_angles=8)
    y = RayTransform(geometry)(torch.rand(1, 1, 16, 16))
    model = DeepImagePrior(geometry.to_dict(), channels=(4, 4), skip_channels=(2, 2), lr=1e-2, iterations_per_step=5)
    trainer = L.Trainer(max_steps=20, logger=False, enable_checkpointing=False, accelerator="cpu",
                        enable_model_summary=False)
    count_steps_in_progress_bar(trainer)
    trainer.fit(model, RepeatedMeasurement(y[0], 20).loader())
    bar = trainer.progress_bar_callback
    assert isinstance(bar, StepProgressBar)
    assert trainer.global_step == 20 and len(model.losses) == 20
    assert (bar.train_progress_bar.n, bar.train_progress_bar.total) == (20, 20)  # Lightning's bar: 4 / 20
    assert "20/20" in capsys.readouterr().out  # what the user sees


def test_the_gan_bar_counts_critic_and_generator_steps_and_shows_generator_steps(tmp_path, monkeypatch):
    from lightning_recon.cli import cli_main

    monkeypatch.setenv("WANDB_MODE", "disabled")
    cli = cli_main(["fit", "--model=lightning_recon.methods.ConditionalWGAN",
                    "--model.init_args.generator_channels=[4,4]", "--model.init_args.critic_channels=[4,4]",
                    "--model.init_args.n_critic=5", "--model.init_args.results_dir=null",
                    "--data.init_args.preset=ellipses-small", "--data.init_args.image_size=16",
                    "--data.init_args.num_angles=6", "--data.init_args.train_length=64", "--data.init_args.val_length=2",
                    "--data.init_args.test_length=2", "--data.init_args.batch_size=2", "--data.init_args.num_workers=0",
                    "--trainer.accelerator=cpu", "--trainer.logger=false", "--trainer.max_steps=30",
                    "--trainer.num_sanity_val_steps=0", "--trainer.limit_val_batches=1", "--trainer.gradient_clip_val=null",
                    f"--trainer.default_root_dir={tmp_path}", f"--checkpoint.dirpath={tmp_path / 'ckpt'}"])
    bar = cli.trainer.progress_bar_callback
    assert isinstance(bar, StepProgressBar) and cli.trainer.global_step == 30
    assert (bar.train_progress_bar.n, bar.train_progress_bar.total) == (30, 30)  # 25 batches: 25 critic + 5 generator
    assert cli.model.generator_steps == 5
    assert bar.get_metrics(cli.trainer, cli.model)["generator_steps"] == 5


def test_a_run_resumed_mid_epoch_counts_on_from_the_epoch_start(tmp_path):
    """A checkpoint written inside an epoch (as ``val_check_interval`` does): Lightning does not call
    ``on_train_epoch_start`` when it resumes from one."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    geometry = ParallelBeam2D((16, 16), num_angles=8)
    y = RayTransform(geometry)(torch.rand(1, 1, 16, 16))

    def fit(max_steps: int, ckpt_path=None) -> L.Trainer:
        model = DeepImagePrior(geometry.to_dict(), channels=(4, 4), skip_channels=(2, 2), lr=1e-2)
        trainer = L.Trainer(max_steps=max_steps, logger=False, accelerator="cpu", enable_model_summary=False,
                            callbacks=[ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=8, save_top_k=-1)])
        count_steps_in_progress_bar(trainer)
        trainer.fit(model, RepeatedMeasurement(y[0], 20).loader(), ckpt_path=ckpt_path)
        return trainer

    fit(12)
    trainer = fit(20, tmp_path / "epoch=0-step=8.ckpt")  # 8 of the epoch's 20 steps made
    bar = trainer.progress_bar_callback.train_progress_bar
    assert trainer.global_step == 20 and (bar.n, bar.total) == (20, 20)
