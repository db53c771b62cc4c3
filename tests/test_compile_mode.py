"""``compile_mode``: the trained networks compile in place (same parameters, same checkpoint keys)."""
import pytest
import torch

from lightning_recon.methods import FBPUNet
from lightning_recon.physics import ParallelBeam2D

GEOMETRY = ParallelBeam2D((16, 16), num_angles=6).to_dict()


def test_an_unknown_compile_mode_is_refused_in_one_line():
    with pytest.raises(ValueError, match="compile_mode must be one of"):
        FBPUNet(forward_model=GEOMETRY, compile_mode="fastest")


@pytest.mark.slow
def test_a_compiled_fbp_unet_trains_and_saves_the_keys_of_an_eager_one(tmp_path, monkeypatch):
    from lightning_recon.cli import cli_main

    monkeypatch.setenv("WANDB_MODE", "disabled")
    cli = cli_main(["fit", "--model=lightning_recon.methods.FBPUNet", "--model.init_args.channels=[4,4]",
                    "--model.init_args.compile_mode=default", "--data.init_args.preset=ellipses-small",
                    "--data.init_args.image_size=16", "--data.init_args.num_angles=6", "--data.init_args.train_length=8",
                    "--data.init_args.val_length=2", "--data.init_args.test_length=2", "--data.init_args.batch_size=2",
                    "--trainer.accelerator=cpu", "--trainer.max_steps=3", "--trainer.logger=false",
                    "--trainer.enable_progress_bar=false", f"--out={tmp_path}"])
    assert getattr(cli.model.net, "_compiled_call_impl", None) is not None
    assert torch.isfinite(torch.tensor(float(cli.trainer.callback_metrics["val/psnr"])))
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert set(saved) == set(FBPUNet(forward_model=GEOMETRY, channels=[4, 4]).state_dict())


def test_without_a_cpu_compiler_compile_mode_warns_and_runs_eagerly(monkeypatch):
    """``make demo`` compiles; on a machine without g++/clang++ it still runs, eagerly, with one warning."""
    from lightning_recon.methods import base

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", "")
    assert base.cpu_compiler() is None
    model = FBPUNet(forward_model=GEOMETRY, channels=[4, 4], compile_mode="default")
    with pytest.warns(UserWarning, match="needs a C\\+\\+ compiler"):
        model.on_fit_start()
    assert getattr(model.net, "_compiled_call_impl", None) is None
