"""Bad input gets one clear error before any work: finetune.py arguments, .npz angles, empty batches."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_recon.data.real import load_sinogram
from lightning_recon.finetune import main as finetune_main
from lightning_recon.physics import FBP, ParallelBeam2D, RayTransform

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def npz(tmp_path):
    angles = np.linspace(0, np.pi, 12, endpoint=False)
    path = tmp_path / "scan.npz"
    np.savez(path, sinogram=np.random.default_rng(0).random((12, 16)).astype(np.float32), angles=angles)
    return path, angles


@pytest.mark.parametrize("argument, message", [
    (["--binning", "0"], "--binning must be >= 1"),
    (["--binning", "-2"], "--binning must be >= 1"),
    (["--angle-step", "0"], "--angle-step must be >= 1"),
    (["--iterations", "0"], "--iterations must be >= 1"),
    (["--iterations", "-1"], "--iterations must be >= 1"),
    (["--center-offset", "left"], "--center-offset must be a number"),
    (["--reference", "full-fbp"], "needs an .h5 scan"),
])
def test_finetune_rejects_bad_arguments_before_creating_anything(npz, tmp_path, capsys, argument, message):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exit_info:
        finetune_main([str(npz[0]), "--out", str(out), *argument])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_finetune_rejects_missing_input_and_wrong_reference_shape(npz, tmp_path, capsys):
    with pytest.raises(SystemExit):
        finetune_main([str(tmp_path / "missing.h5"), "--out", str(tmp_path / "o")])
    assert "no such input file" in capsys.readouterr().err
    reference = tmp_path / "ref.npy"
    np.save(reference, np.zeros((5, 5), np.float32))
    with pytest.raises(SystemExit):
        finetune_main([str(npz[0]), "--reference", str(reference), "--out", str(tmp_path / "o")])
    assert "--reference has shape (5, 5)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_binning_beyond_the_detector_is_one_line_without_traceback(tmp_path):
    tooth = ROOT.parent / "shared" / "data" / "tooth.h5"
    if not tooth.exists():
        pytest.skip("tooth.h5 not found")
    result = subprocess.run([sys.executable, str(ROOT / "finetune.py"), str(tooth), "--binning", "1000",
                             "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "binning 1000 exceeds the 640 detector columns" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "o").exists()


def test_npz_angles_in_degrees_are_detected_or_declared(npz, tmp_path):
    path, angles = npz
    degrees = tmp_path / "degrees.npz"
    np.savez(degrees, sinogram=np.load(path)["sinogram"], angles=np.rad2deg(angles))
    with pytest.warns(UserWarning, match="read as degrees"):
        auto = load_sinogram(degrees)
    np.testing.assert_allclose(auto.angles, angles)
    np.testing.assert_allclose(load_sinogram(degrees, angle_unit="degrees").angles, angles)
    np.testing.assert_allclose(load_sinogram(path).angles, angles)  # radians stay radians
    assert load_sinogram(path, angle_step=3).data.shape == (4, 16)
    missing = tmp_path / "no_angles.npz"
    np.savez(missing, sinogram=np.zeros((4, 8), np.float32))
    with pytest.raises(ValueError, match="no 'angles' array"):
        load_sinogram(missing)


@pytest.mark.parametrize("backend", ["matrix", "odl"])
def test_empty_batches_give_empty_results(backend):
    geometry = ParallelBeam2D((16, 16), num_angles=8)
    A = RayTransform(geometry, backend=backend)
    assert A(torch.zeros(0, 1, 16, 16)).shape == (0, 1, 8, geometry.num_detector_pixels)
    assert A.adjoint(torch.zeros(0, 1, 8, geometry.num_detector_pixels)).shape == (0, 1, 16, 16)
    assert FBP(geometry)(torch.zeros(0, 1, 8, geometry.num_detector_pixels)).shape == (0, 1, 16, 16)


def test_sigterm_during_finetuning_saves_the_best_iterate(tmp_path):
    import signal
    import time

    geometry = ParallelBeam2D((24, 24), num_angles=12, num_detector_pixels=24, detector_extent=24.0)
    truth = torch.zeros(1, 1, 24, 24)
    truth[..., 6:18, 8:16] = 1.0
    sinogram = RayTransform(geometry)(truth)[0, 0].numpy()
    np.savez(tmp_path / "s.npz", sinogram=sinogram, angles=geometry.angle_array)
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, str(ROOT / "finetune.py"), str(tmp_path / "s.npz"), "--iterations",
                                "100000", "--channels", "8", "--scales", "3", "--accelerator", "cpu", "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("logs/*/metrics.csv")):  # iterations are running
        time.sleep(0.5)
    time.sleep(2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert "interrupted after" in err
    summary = __import__("json").loads((out / "summary.json").read_text())
    assert summary["interrupted"] and 0 < summary["iterations"] < 100000
    assert np.load(out / "recon.npy").shape == (24, 24) and (out / "preview.png").exists()
