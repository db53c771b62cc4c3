"""`train.py predict` on a user's measurement files: reconstructions written as files."""
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_recon.cli import cli_main
from lightning_recon.results import read_results_table

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DATA = ["--data=lightning_recon.data.SimulatedCTDataModule", "--data.init_args.preset=ellipses-small",
        "--data.init_args.image_size=16", "--data.init_args.num_angles=6", "--data.init_args.train_length=4",
        "--data.init_args.val_length=2", "--data.init_args.test_length=2", "--data.init_args.batch_size=2",
        "--data.init_args.num_workers=0"]
RUN = ["--trainer.accelerator=cpu", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
       "--trainer.max_steps=2", "--trainer.num_sanity_val_steps=0"]


def fitted(tmp_path, model_args):
    cli_main(["fit", *DATA, *model_args, *RUN, f"--trainer.default_root_dir={tmp_path}",
              f"--checkpoint.dirpath={tmp_path / 'ckpt'}", "--model.init_args.results_dir=null"])
    return tmp_path / "ckpt" / "last.ckpt"


def measurements(folder: Path, count: int = 3):
    """Sinograms in the checkpoint's geometry (16², 6 angles, 25 detector pixels) as .npy and .npz files."""
    from lightning_recon.physics import ParallelBeam2D, RayTransform

    folder.mkdir()
    geometry = ParallelBeam2D((16, 16), num_angles=6)
    truth = torch.zeros(count, 1, 16, 16)
    truth[:, :, 4:12, 5:11] = torch.linspace(0.3, 1.0, count)[:, None, None, None]
    sinograms = RayTransform(geometry)(truth)[:, 0].numpy()
    for i, sinogram in enumerate(sinograms):
        if i % 2:
            np.savez(folder / f"scan{i}.npz", sinogram=sinogram)
        else:
            np.save(folder / f"scan{i}.npy", sinogram)
    return sinograms


def test_predict_writes_each_input_s_reconstruction_equal_to_the_model_s_forward(tmp_path):
    from lightning_recon.methods import LearnedGD

    checkpoint = fitted(tmp_path, ["--model=lightning_recon.methods.LearnedGD", "--model.init_args.n_iter=2",
                                   "--model.init_args.hidden_channels=4"])
    sinograms = measurements(tmp_path / "scans")
    out = tmp_path / "recons"
    cli_main(["predict", f"--ckpt_path={checkpoint}", "--data=lightning_recon.data.MeasurementsDataModule",
              f"--data.path={tmp_path / 'scans'}", f"--writer.output_dir={out}", *RUN,
              f"--trainer.default_root_dir={tmp_path}"])
    model = LearnedGD.load_from_checkpoint(checkpoint, weights_only=True).eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(sinograms)[:, None])[:, 0].numpy()
    for i in range(3):
        written = np.load(out / f"scan{i}.npy")
        np.testing.assert_allclose(written, expected[i], atol=1e-5)
        assert (out / f"scan{i}.tif").exists() and (out / f"scan{i}.png").exists()


def test_predict_refuses_measurements_of_another_shape_in_one_line(tmp_path, capsys):
    checkpoint = fitted(tmp_path, ["--model=lightning_recon.methods.FBPUNet", "--model.init_args.channels=[4,4]"])
    (tmp_path / "scans").mkdir()
    np.save(tmp_path / "scans" / "wrong.npy", np.zeros((7, 25), np.float32))
    with pytest.raises(SystemExit) as exit_:
        cli_main(["predict", f"--ckpt_path={checkpoint}", "--data=lightning_recon.data.MeasurementsDataModule",
                  f"--data.path={tmp_path / 'scans'}", f"--writer.output_dir={tmp_path / 'recons'}", *RUN,
                  f"--trainer.default_root_dir={tmp_path}"])
    error = capsys.readouterr().err
    (line,) = [line for line in error.splitlines() if line.startswith("train.py")]
    assert exit_.value.code == 2 and "wrong.npy: sinogram of shape (7, 25)" in line and "expects (6, 25)" in line
    assert not (tmp_path / "recons").exists()


def test_predict_of_a_posterior_sampler_writes_mean_std_and_samples(tmp_path):
    checkpoint = fitted(tmp_path, ["--config", str(CONFIGS / "model/cwgan.yaml"),
                                   "--model.init_args.generator_channels=[8,16]",
                                   "--model.init_args.critic_channels=[8,16]", "--model.init_args.predict_samples=4"])
    measurements(tmp_path / "scans", count=2)
    out = tmp_path / "recons"
    cli_main(["predict", f"--ckpt_path={checkpoint}", "--data=lightning_recon.data.MeasurementsDataModule",
              f"--data.path={tmp_path / 'scans'}", f"--writer.output_dir={out}", *RUN,
              f"--trainer.default_root_dir={tmp_path}"])
    samples = np.load(out / "scan0_samples.npy")
    assert samples.shape == (4, 16, 16)
    np.testing.assert_allclose(np.load(out / "scan0.npy"), samples.mean(0), atol=1e-5)
    assert float(np.load(out / "scan0_std.npy").max()) > 0


def test_init_from_starts_a_new_run_from_another_run_s_weights_in_another_geometry(tmp_path, capsys):
    """Weights only: learned GD trained at 6 angles starts a run at 8 angles (its ‖A‖ recomputed);
    another architecture is refused in one line before any work."""
    from lightning_recon.methods import LearnedGD
    from lightning_recon.physics import ParallelBeam2D

    model_args = ["--model=lightning_recon.methods.LearnedGD", "--model.init_args.n_iter=2",
                  "--model.init_args.hidden_channels=4"]
    checkpoint = fitted(tmp_path / "first", model_args)
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]
    model = LearnedGD(forward_model=ParallelBeam2D((16, 16), num_angles=8).to_dict(), n_iter=2, hidden_channels=4,
                      init_from=str(checkpoint), results_dir=None)
    model.load_initial_weights()
    for key, value in model.state_dict().items():
        if key != "cached_operator_norm":
            assert torch.equal(value, saved[key]), key
    assert float(model.cached_operator_norm) == 0.0  # this geometry's norm, computed on first use
    cli = cli_main(["fit", *DATA, "--data.init_args.num_angles=8", *model_args, *RUN,
                    f"--model.init_args.init_from={checkpoint}", f"--trainer.default_root_dir={tmp_path / 'second'}",
                    "--model.init_args.results_dir=null", "--trainer.max_steps=1"])
    assert cli.trainer.global_step == 1
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", *DATA, "--model=lightning_recon.methods.LearnedGD", "--model.init_args.n_iter=3",
                  "--model.init_args.hidden_channels=4", *RUN, f"--model.init_args.init_from={checkpoint}",
                  f"--trainer.default_root_dir={tmp_path / 'third'}", "--model.init_args.results_dir=null"])
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train.py")]
    assert exit_.value.code == 2 and "holds LearnedGD without net.steps.2." in line and "another architecture" in line


def test_one_out_flag_moves_every_output_of_fit_test_and_predict(tmp_path, monkeypatch):
    """``--out DIR``: checkpoints, logs, config.yaml, results table and predictions all under DIR,
    nothing in the default folders; a folder set on its own stays where it is set."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    out = tmp_path / "run"
    model = ["--model=lightning_recon.methods.LearnedGD", "--model.init_args.n_iter=2",
             "--model.init_args.hidden_channels=4"]
    logged = [arg for arg in RUN if arg != "--trainer.logger=false"]
    cli_main(["fit", *DATA, *model, *logged, "--config", str(CONFIGS / "logger/csv.yaml"), f"--out={out}"])
    checkpoint = out / "checkpoints" / "last.ckpt"
    assert checkpoint.exists() and list(out.glob("csv/version_*/metrics.csv"))
    assert list(out.glob("csv/version_*/config.yaml"))
    cli_main(["test", *DATA, *logged, f"--ckpt_path={checkpoint}", f"--out={tmp_path / 'tested'}"])
    assert len(read_results_table(tmp_path / "tested" / "results")) == 1  # not the training run's results_dir
    assert not (out / "results").exists()
    measurements(tmp_path / "scans", count=1)
    cli_main(["predict", f"--ckpt_path={checkpoint}", "--data=lightning_recon.data.MeasurementsDataModule",
              f"--data.path={tmp_path / 'scans'}", *RUN, f"--out={out}"])
    assert (out / "predictions" / "scan0.npy").exists()
    assert not (tmp_path / "outputs").exists()
    cli_main(["test", *DATA, *logged, f"--ckpt_path={checkpoint}", f"--out={out}",
              "--model.init_args.results_dir=elsewhere"])  # set on its own: there
    assert read_results_table(tmp_path / "elsewhere") and not (tmp_path / "outputs").exists()


def test_predict_in_ddp_writes_every_input_once_from_its_own_rank(tmp_path, monkeypatch):
    """Two CPU processes: each rank writes the reconstructions of its own share of the inputs, and
    together every input's files exist with the model's values (the sampler pads 3 inputs to 4)."""
    from lightning_recon.methods import LearnedGD

    monkeypatch.setenv("WANDB_MODE", "disabled")
    checkpoint = fitted(tmp_path, ["--model=lightning_recon.methods.LearnedGD", "--model.init_args.n_iter=2",
                                   "--model.init_args.hidden_channels=4"])
    sinograms = measurements(tmp_path / "scans")
    cli_main(["predict", f"--ckpt_path={checkpoint}", "--data=lightning_recon.data.MeasurementsDataModule",
              f"--data.path={tmp_path / 'scans'}", "--data.init_args.batch_size=1", *RUN, "--trainer.devices=2",
              "--trainer.strategy=ddp_spawn", f"--out={tmp_path / 'run'}"])
    model = LearnedGD.load_from_checkpoint(checkpoint, weights_only=True).eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(sinograms)[:, None])[:, 0].numpy()
    written = sorted(p.name for p in (tmp_path / "run" / "predictions").glob("*.npy"))
    assert written == ["scan0.npy", "scan1.npy", "scan2.npy"]
    for i in range(3):
        np.testing.assert_allclose(np.load(tmp_path / "run" / "predictions" / f"scan{i}.npy"), expected[i], atol=1e-5)
