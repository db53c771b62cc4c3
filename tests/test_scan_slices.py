"""One scan, no references: the rows of a raw Data Exchange scan as a data set
(``ScanSlicesDataModule``), trained by Noise2Inverse through ``train.py`` and reconstructed as files."""
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from lightning_recon.cli import cli_main
from lightning_recon.data import DataFileError, ScanSlicesDataModule
from lightning_recon.data.real import load_data_exchange
from lightning_recon.data.synthetic_scan import write_synthetic_scan
from lightning_recon.physics.fbp import FBP

pytestmark = pytest.mark.usefixtures("one_thread")
EXPERIMENT = Path(__file__).resolve().parents[1] / "configs" / "experiment" / "scan_noise2inverse_cpu.yaml"


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    path = tmp_path_factory.mktemp("scan") / "scan.h5"
    truth = write_synthetic_scan(path, slices=6, size=16, angles=24, photons=1e4)
    return path, truth


def test_every_row_is_a_sample_read_as_finetune_reads_it_with_one_rotation_axis(scan):
    path, truth = scan
    data = ScanSlicesDataModule(str(path), val_slices=3, fbp_filter="Hann", batch_size=4)
    data.setup("fit")
    middle = load_data_exchange(path, 3, center_offset="auto")
    assert data.center_offset == pytest.approx(-middle.geometry.detector_offset)
    row = load_data_exchange(path, 4, center_offset=data.center_offset)
    train = data.dataset("train")
    assert len(train) == 6 and "ground_truth" not in train[4]
    scale = data.intensity_scale
    np.testing.assert_allclose(train[4]["measurement"][0].numpy(), row.data * scale, rtol=1e-6)
    torch.testing.assert_close(train[4]["fbp"], FBP(row.geometry, "Hann")(torch.from_numpy(row.data * scale)[None, None])[0])
    assert data.forward_model_dict == row.geometry.to_dict()
    batch = next(iter(data.train_dataloader()))
    assert set(batch) == {"measurement", "fbp", "index"} and batch["measurement"].shape == (4, 1, 24, 16)

    val = data.dataset("val")
    assert [sample["index"] for sample in val] == [0, 2, 5]  # spread evenly over the rows
    np.testing.assert_allclose(val[2]["ground_truth"][0].numpy(), truth[5] * scale, rtol=1e-6)
    assert [sample["index"] for sample in data.dataset("test")] == list(range(6))
    assert data.sample_name(5) == "slice_0005"


def test_chosen_rows_and_a_given_axis(scan):
    path, truth = scan
    data = ScanSlicesDataModule(str(path), slices=[4, 1], val_slices=1, center_offset=0.5, intensity_scale=1)
    assert data.rows == [1, 4] and data.center_offset == 0.5 and data.intensity_scale == 1.0
    assert data.geometry.detector_offset == -0.5
    test = data.dataset("test")
    assert [s["index"] for s in test] == [1, 4]
    np.testing.assert_array_equal(test[1]["ground_truth"][0].numpy(), truth[4])


def test_auto_intensity_scale_brings_the_rows_to_order_one_and_scales_the_truth_alike(scan):
    path, truth = scan
    data = ScanSlicesDataModule(str(path))
    assert data.intensity_scale > 2  # attenuation per pixel, as a scan measures it, is well below 1
    hann = FBP(data.geometry, "Hann", 1.0)(data.measurements)
    assert float(hann.quantile(0.99)) == pytest.approx(1.0, rel=1e-4)
    assert data.intensity_scale == pytest.approx(1 / float(FBP(data.geometry, "Hann", 1.0)(
        data.measurements / data.intensity_scale).quantile(0.99)), rel=1e-4)
    np.testing.assert_allclose(data.ground_truth[:, 0].numpy(), truth * data.intensity_scale, rtol=1e-6)
    assert ScanSlicesDataModule(str(path), data_range=0.05, intensity_scale=2.0).data_range == pytest.approx(0.1)


def test_bad_scans_and_settings_are_one_line_errors(scan, tmp_path):
    path, _ = scan
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["volume"] = np.zeros((2, 4, 4))
    no_truth = tmp_path / "no_truth.h5"
    with h5py.File(path, "r") as source, h5py.File(no_truth, "w") as f:
        for key in ("data", "data_white", "data_dark", "theta"):
            source.copy(f"exchange/{key}", f, f"exchange/{key}")
    cases = [
        (DataFileError, dict(path=str(tmp_path / "missing.h5")), "missing.h5: no such file"),
        (DataFileError, dict(path=str(plain)), "not a Data Exchange scan"),
        (DataFileError, dict(path=str(path), slices=[2, 9]), r"rows \[9\] outside the scan's 6 detector rows"),
        (ValueError, dict(path=str(path), slices="some"), "slices must be 'all' or a list of row indices"),
        (ValueError, dict(path=str(path), val_slices=7), "val_slices must be between 1 and the 6 chosen rows"),
        (ValueError, dict(path=str(path), intensity_scale=0), "intensity_scale must be 'auto' or a positive number"),
    ]
    for kind, settings, message in cases:
        with pytest.raises(kind, match=message) as error:
            ScanSlicesDataModule(**settings)
        assert "\n" not in str(error.value)
    data = ScanSlicesDataModule(str(no_truth), val_slices=2)
    assert data.ground_truth is None and "ground_truth" not in data.dataset("val")[0]
    with pytest.raises(DataFileError, match="no exchange/ground_truth to test against; `train.py predict`"):
        data.setup("test")


def test_train_py_fits_noise2inverse_on_a_scan_then_tests_and_writes_every_row(scan, tmp_path):
    from lightning_recon.methods import FBPUNet
    from lightning_recon.results import read_results_table

    path, _ = scan
    common = ["--config", str(EXPERIMENT), f"--data.init_args.path={path}", "--data.init_args.val_slices=2",
              "--data.init_args.batch_size=3", "--model.init_args.channels=[4,8]", "--model.init_args.n2i_splits=2",
              "--trainer.max_steps=3", "--trainer.enable_progress_bar=false", "--trainer.logger=false",
              f"--out={tmp_path}"]
    cli_main(["fit", *common])
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    model = FBPUNet.load_from_checkpoint(checkpoint, weights_only=True).eval()
    assert model.hparams.loss == "noise2inverse" and model.hparams.n2i_splits == 2
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 3
    cli_main(["test", *common, f"--ckpt_path={checkpoint}"])
    row = read_results_table(tmp_path / "results")["FBP + U-Net (Noise2Inverse, K = 4, X:1)"]
    assert int(row["images"]) == 6 and np.isfinite(float(row["psnr"]))
    cli_main(["predict", *common, f"--ckpt_path={checkpoint}", f"--writer.output_dir={tmp_path / 'recons'}"])
    written = sorted(p.name for p in (tmp_path / "recons").glob("*.npy"))
    assert written == [f"slice_{k:04d}.npy" for k in range(6)]
    data = ScanSlicesDataModule(str(path))  # the middle row's axis for every row; values × intensity_scale
    row = torch.from_numpy(load_data_exchange(path, 2, center_offset=data.center_offset).data)[None, None]
    with torch.no_grad():
        expected = model(row * data.intensity_scale) / data.intensity_scale  # written in attenuation per pixel
    np.testing.assert_allclose(np.load(tmp_path / "recons" / "slice_0002.npy"), expected[0, 0].numpy(),
                               rtol=1e-4, atol=1e-6)


def test_train_py_refuses_a_supervised_loss_on_a_scan_in_one_line(scan, tmp_path, capsys):
    path, _ = scan
    with pytest.raises(SystemExit) as ended:
        cli_main(["fit", "--config", str(EXPERIMENT), f"--data.init_args.path={path}",
                  "--model.init_args.loss=supervised", "--trainer.logger=false", f"--out={tmp_path}"])
    assert ended.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "the data leaves the ground truth out of training" in error[0]
