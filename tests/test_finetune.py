import json

import numpy as np
import pytest
import torch

from lightning_recon.data import EllipsesDataset
from lightning_recon.finetune import main as finetune_main
from lightning_recon.methods.dip import DeepImagePrior, RepeatedMeasurement
from lightning_recon.physics import ParallelBeam2D
from tests.test_real_data import write_scan


def test_finetune_cli_writes_reconstruction_preview_and_loss_curve(tmp_path):
    scan = write_scan(tmp_path / "scan.h5", n_angles=60, cols=32)
    out = tmp_path / "out"
    summary = finetune_main([str(scan), "--angle-step", "3", "--iterations", "30", "--channels", "8", "--scales", "3",
                             "--center-offset", "0", "--reference", "full-fbp", "--logger", "none", "--out", str(out),
                             "--accelerator", "cpu"])
    for name in ("recon.npy", "recon.tif", "preview.png", "loss.png", "summary.json"):
        assert (out / name).exists(), name
    image = np.load(out / "recon.npy")
    assert image.shape == (32, 32) and np.isfinite(image).all()
    assert json.loads((out / "summary.json").read_text())["best_loss"] == summary["best_loss"]
    assert {"recon_psnr", "fbp_psnr"} <= set(summary)


def test_dip_keeps_the_lowest_loss_iterate_and_reduces_the_loss():
    import lightning as L

    from lightning_recon.physics import ParallelBeam2D, RayTransform

    geometry = ParallelBeam2D((24, 24), num_angles=15)
    truth = torch.zeros(1, 1, 24, 24)
    truth[..., 6:16, 8:18] = 1.0
    y = RayTransform(geometry)(truth)
    model = DeepImagePrior(geometry.to_dict(), channels=(8, 8, 8), skip_channels=(2, 2, 2), tv_weight=0.0, lr=1e-2)
    trainer = L.Trainer(max_steps=40, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        accelerator="cpu")
    trainer.fit(model, RepeatedMeasurement(y[0], 40).loader())
    assert model.best_loss == min(model.losses)
    assert min(model.losses) < 0.5 * model.losses[0]
    assert model.best_image.shape == (1, 1, 24, 24)


def test_dip_rejects_bad_options():
    with pytest.raises(ValueError, match="network_input"):
        DeepImagePrior({"image_shape": [8, 8], "num_angles": 4}, network_input="zeros")
    with pytest.raises(ValueError, match="tv_weight"):
        DeepImagePrior({"image_shape": [8, 8], "num_angles": 4}, tv_weight=-1.0)
    with pytest.raises(ValueError, match="lr_warmup"):
        DeepImagePrior({"image_shape": [8, 8], "num_angles": 4}, lr_warmup=-1)


def test_dip_learning_rate_warmup_ramps_to_lr():
    import lightning as L

    geometry, y = _tiny_problem()
    model = DeepImagePrior(geometry.to_dict(), channels=(8, 8), skip_channels=(2, 2), lr=1e-2, lr_warmup=4)
    rates = []

    class Rates(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = L.Trainer(max_steps=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        accelerator="cpu", callbacks=[Rates()])
    trainer.fit(model, RepeatedMeasurement(y[0], 6).loader())
    assert rates == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2, 1e-2])


def _tiny_problem():
    from lightning_recon.physics import ParallelBeam2D, RayTransform

    geometry = ParallelBeam2D((24, 24), num_angles=15)
    truth = torch.zeros(1, 1, 24, 24)
    truth[..., 6:16, 8:18] = 0.05
    return geometry, RayTransform(geometry)(truth)


def test_poisson_misfit_is_zero_at_the_data_and_positive_elsewhere():
    geometry, y = _tiny_problem()
    model = DeepImagePrior(geometry.to_dict(), channels=(4, 4), skip_channels=(0, 0), data_loss="poisson", photons=1e3)
    assert abs(float(model.data_misfit(y, y))) < 1e-6
    assert float(model.data_misfit(y + 0.1, y)) > 0 and float(model.data_misfit(y - 0.1, y)) > 0


def test_moving_variance_early_stop_ends_the_run_and_snapshots_are_saved(tmp_path):
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    geometry, y = _tiny_problem()
    model = DeepImagePrior(geometry.to_dict(), channels=(8, 8, 8), skip_channels=(2, 2, 2), lr=1e-2,
                           early_stop_window=5, early_stop_patience=10, snapshot_every=20)
    trainer = L.Trainer(max_steps=2000, logger=CSVLogger(str(tmp_path)), enable_checkpointing=False,
                        enable_progress_bar=False, accelerator="cpu")
    trainer.fit(model, RepeatedMeasurement(y[0], 2000).loader())
    assert model.stopped_at is not None and len(model.losses) < 2000
    # the result is the iterate at the variance minimum, `patience` iterations before the stop
    assert model.early_stop_iteration == model.stopped_at - 10
    assert model.reconstruction is model.early_stop_image
    assert not torch.equal(model.reconstruction, model.best_image)
    assert list(tmp_path.rglob("snapshots/step*.png"))


def test_object_outlines_leave_air_around_a_seeded_sample():
    geometry = ParallelBeam2D((48, 48), num_angles=10)
    outlined = EllipsesDataset(geometry, length=4, seed=0, object_outlines=True, phantoms="adler")
    filled = EllipsesDataset(geometry, length=4, seed=0, disk_support=True, phantoms="adler")
    for index in range(4):
        image, disk = outlined.phantom(index), filled.phantom(index)
        assert torch.equal(image, outlined.phantom(index))  # deterministic per index
        inside = image != 0
        assert torch.equal(image[inside], disk[inside])  # the same phantom, cut
        assert 0.03 < inside.float().mean() < 0.6 < (disk != 0).float().mean()  # air around the object
    assert not torch.equal(outlined.phantom(0) != 0, outlined.phantom(1) != 0)


def test_edip_pretraining_checkpoint_warm_starts_finetuning(tmp_path, monkeypatch):
    from lightning_recon.cli import cli_main

    monkeypatch.setenv("WANDB_MODE", "disabled")
    phantom = EllipsesDataset(ParallelBeam2D((32, 32), num_angles=10), length=1, seed=0, disk_support=True).phantom(0)
    assert float(phantom[0, 0, 0]) == 0.0 and float(phantom[0, -1, -1]) == 0.0  # corners lie outside the disk

    geometry = ("{type: ParallelBeam2D, image_shape: [32, 32], num_angles: 10, angle_step: 3, "
                "num_detector_pixels: 32, detector_extent: 32.0}")
    cli = cli_main(["fit", "--model=lightning_recon.methods.EDIPPretrain", "--model.init_args.channels=[8,8,8]",
                    "--model.init_args.skip_channels=[4,4,4]", f"--data.init_args.geometry={geometry}",
                    "--data.init_args.disk_support=true", "--data.init_args.train_length=8",
                    "--data.init_args.val_length=4", "--data.init_args.batch_size=4", "--data.init_args.num_workers=0",
                    "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.check_val_every_n_epoch=null",
                    "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu",
                    f"--trainer.default_root_dir={tmp_path}", f"--checkpoint.dirpath={tmp_path / 'ckpt'}",
                    f"--model.init_args.results_dir={tmp_path}"])
    checkpoint = tmp_path / "ckpt" / "last.ckpt"
    pretrained = DeepImagePrior(cli.datamodule.forward_model_dict, channels=(8, 8, 8), skip_channels=(4, 4, 4),
                                pretrained=str(checkpoint))
    assert all(torch.equal(a, b) for a, b in zip(pretrained.net.state_dict().values(), cli.model.net.state_dict().values()))

    scan = write_scan(tmp_path / "scan.h5", n_angles=30, cols=32)
    summary = finetune_main([str(scan), "--num-angles", "10", "--iterations", "5", "--channels", "8", "--scales", "3",
                             "--center-offset", "0", "--init", str(checkpoint), "--logger", "none",
                             "--out", str(tmp_path / "ft"), "--accelerator", "cpu"])
    assert np.isfinite(summary["best_loss"])


def test_the_training_cli_does_not_import_the_finetuning_cli():
    import ast
    import pathlib

    import lightning_recon.cli

    tree = ast.parse(pathlib.Path(lightning_recon.cli.__file__).read_text())
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    modules |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not any(m and "finetune" in m.split(".") for m in modules)


ITERATIONS = 303  # not a multiple of the 7 per step


@pytest.mark.parametrize("early_stop", [False, True])
def test_several_iterations_per_step_give_the_same_run(early_stop):
    """Same seed: 1 and 7 DIP iterations per Lightning step give the same loss curve, the same result
    and the same early stop (with a learning-rate warm-up and an iteration count not divisible by 7)."""
    import lightning as L

    geometry, y = _tiny_problem()
    runs = []
    for per_step in (1, 7):
        L.seed_everything(0, verbose=False)
        model = DeepImagePrior(geometry.to_dict(), channels=(8, 8, 8), skip_channels=(2, 2, 2), lr=1e-2, lr_warmup=5,
                               early_stop_window=5 if early_stop else 0, early_stop_patience=10,
                               iterations_per_step=per_step)
        trainer = L.Trainer(max_steps=ITERATIONS, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, accelerator="cpu")
        trainer.fit(model, RepeatedMeasurement(y[0], ITERATIONS).loader())
        runs.append(model)
    single, batched = runs
    assert len(single.losses) == len(batched.losses) == (single.stopped_at or ITERATIONS)
    torch.testing.assert_close(torch.tensor(batched.losses), torch.tensor(single.losses), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(batched.reconstruction, single.reconstruction, rtol=1e-4, atol=1e-5)
    assert batched.best_loss == pytest.approx(single.best_loss, rel=1e-5)
    assert (batched.stopped_at, batched.early_stop_iteration) == (single.stopped_at, single.early_stop_iteration)
    if early_stop:
        assert single.stopped_at is not None




def test_finetune_runs_the_deep_decoder_and_refuses_it_with_edip_weights(tmp_path):
    scan = tmp_path / "scan.h5"
    write_scan(scan)
    summary = finetune_main([str(scan), "--iterations", "12", "--channels", "8", "--scales", "3", "--network",
                             "deep-decoder", "--iterations-per-step", "5", "--threads", "1", "--logger", "none",
                             "--out", str(tmp_path / "dd")])
    assert summary["iterations"] == 12 and (tmp_path / "dd" / "recon.npy").exists()
    with pytest.raises(SystemExit):
        finetune_main([str(scan), "--network", "deep-decoder", "--init", str(scan), "--out", str(tmp_path / "x")])


def test_finetune_runs_the_analytic_deep_prior_and_checks_its_options(tmp_path, capsys):
    scan = tmp_path / "scan.h5"
    write_scan(scan)
    summary = finetune_main([str(scan), "--network", "analytic", "--iterations", "6", "--adp-iterations", "8",
                             "--lr", "1e-2", "--reference", "full-fbp", "--threads", "1", "--logger", "none",
                             "--out", str(tmp_path / "adp")])
    assert summary["iterations"] == 6 and summary["returned_iterate"].startswith("φ_B")
    assert summary["best_loss"] <= json.loads((tmp_path / "adp" / "summary.json").read_text())["best_loss"] + 1e-12
    assert np.isfinite(np.load(tmp_path / "adp" / "recon.npy")).all() and "recon_psnr" in summary
    for bad, message in ((["--adp-kernel", "4"], "--adp-kernel must be an odd"),
                         (["--adp-iterations", "0"], "--adp-iterations must be >= 1"),
                         (["--slices", "all"], "reconstructs one slice")):
        with pytest.raises(SystemExit):
            finetune_main([str(scan), "--network", "analytic", *bad, "--out", str(tmp_path / "x")])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_bare_sinogram_gets_the_image_size_or_geometry_asked_for(tmp_path, capsys):
    """`--image-size` (an N × N grid over the detector's field of view) and `--geometry` (a YAML of
    numbers, checked against the sinogram's shape) for .npy inputs, which default to one pixel per
    detector pixel."""
    import yaml

    from lightning_recon.physics import RayTransform

    native = ParallelBeam2D((32, 32), num_angles=20, num_detector_pixels=32, detector_extent=32.0)
    truth = torch.zeros(1, 1, 32, 32)
    truth[..., 10:22, 8:20] = 1.0
    np.save(tmp_path / "sino.npy", RayTransform(native)(truth)[0, 0].numpy())
    common = ["--iterations", "3", "--channels", "8", "--scales", "2", "--logger", "none", "--accelerator", "cpu"]
    finetune_main([str(tmp_path / "sino.npy"), "--image-size", "16", "--out", str(tmp_path / "sized"), *common])
    assert np.load(tmp_path / "sized" / "recon.npy").shape == (16, 16)
    spec = native.replace(image_shape=(24, 24), image_extent=(32.0, 32.0)).to_dict()
    (tmp_path / "geometry.yaml").write_text(yaml.safe_dump(spec))
    finetune_main([str(tmp_path / "sino.npy"), "--geometry", str(tmp_path / "geometry.yaml"),
                   "--out", str(tmp_path / "given"), *common])
    assert np.load(tmp_path / "given" / "recon.npy").shape == (24, 24)
    (tmp_path / "wrong.yaml").write_text(yaml.safe_dump(native.replace(num_angles=30).to_dict()))
    with pytest.raises(SystemExit) as exit_:
        finetune_main([str(tmp_path / "sino.npy"), "--geometry", str(tmp_path / "wrong.yaml"),
                       "--out", str(tmp_path / "wrong"), *common])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and "describes sinograms of shape (30, 32), the input's is (20, 32)" in error
    assert not (tmp_path / "wrong").exists()
