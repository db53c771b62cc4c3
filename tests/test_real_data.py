from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from lightning_recon.data.real import load_data_exchange, load_sinogram
from lightning_recon.physics import FBP

TOOTH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tooth.h5"
needs_tooth = pytest.mark.skipif(not TOOTH.exists(), reason=f"real scan not available at {TOOTH}")


def write_scan(path, n_angles=90, rows=2, cols=64, shift=0.0, drop=None, endpoint=False):
    """A synthetic Data Exchange file of a disk whose rotation axis is ``shift`` pixels off centre."""
    angles = np.linspace(0, 180, n_angles, endpoint=endpoint)
    s = np.arange(cols) - (cols - 1) / 2 - shift
    line = 2 * np.sqrt(np.clip(15.0**2 - s**2, 0, None)) * 0.02  # a centred disk: same at every angle
    data = 1000 * np.exp(-line)[None, None, :].repeat(n_angles, 0).repeat(rows, 1) + 100
    with h5py.File(path, "w") as f:
        items = {"exchange/data": data, "exchange/data_white": np.full((4, rows, cols), 1100.0),
                 "exchange/data_dark": np.full((4, rows, cols), 100.0), "exchange/theta": angles}
        for key, value in items.items():
            if key != drop:
                f[key] = value
    return path


def test_flat_dark_log_binning_and_subsampling(tmp_path):
    scan = load_data_exchange(write_scan(tmp_path / "s.h5"), angle_step=3, binning=2, center_offset=None)
    assert scan.data.shape == (30, 32) and scan.angles.shape == (30,)
    assert scan.data.min() >= 0 and abs(scan.data.max() - 0.6) < 0.05  # −log of exp(−0.02 · 30)
    assert np.isclose(scan.angles[1] - scan.angles[0], np.deg2rad(6.0))
    assert scan.geometry.sinogram_shape == scan.data.shape


def test_num_angles_spreads_over_a_half_turn_without_the_mirror_angle(tmp_path):
    path = write_scan(tmp_path / "s.h5", n_angles=181, endpoint=True)  # 0°, 1°, …, 180°
    scan = load_data_exchange(path, num_angles=30, center_offset=None)
    assert scan.data.shape[0] == 30
    assert np.allclose(np.rad2deg(scan.angles), np.arange(0, 180, 6))
    assert np.allclose(np.rad2deg(load_data_exchange(path, num_angles=7, center_offset=None).angles),
                       [0, 26, 51, 77, 103, 129, 154])
    with pytest.raises(ValueError, match="num_angles must be between 1 and 180"):
        load_data_exchange(path, num_angles=181, center_offset=None)


def test_center_of_rotation_is_estimated(tmp_path):
    scan = load_data_exchange(write_scan(tmp_path / "s.h5", shift=3.0), center_offset="auto")
    assert abs(scan.geometry.detector_offset + 3.0) < 0.3  # axis 3 px right of the detector centre


@pytest.mark.parametrize("drop", ["exchange/data_white", "exchange/theta"])
def test_missing_keys_are_named(tmp_path, drop):
    with pytest.raises(ValueError, match=f"missing .*{drop}"):
        load_data_exchange(write_scan(tmp_path / "s.h5", drop=drop))


def test_malformed_inputs_raise(tmp_path):
    (tmp_path / "bad.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="not a readable HDF5"):
        load_data_exchange(tmp_path / "bad.h5")
    with pytest.raises(ValueError, match="slice_index"):
        load_data_exchange(write_scan(tmp_path / "s.h5"), slice_index=5)
    np.savez(tmp_path / "s.npz", sinogram=np.zeros((10, 20)), angles=np.zeros(9))
    with pytest.raises(ValueError, match="9 angles for 10"):
        load_sinogram(tmp_path / "s.npz")
    np.save(tmp_path / "nan.npy", np.full((4, 5), np.nan))
    with pytest.raises(ValueError, match="NaN"):
        load_sinogram(tmp_path / "nan.npy")


@needs_tooth
def test_tooth_scan_loads_and_the_estimated_centre_sharpens_fbp():
    scan = load_data_exchange(TOOTH, binning=2)
    assert scan.data.shape == (181, 320) and np.isfinite(scan.data).all()
    y = torch.from_numpy(scan.data)[None, None]
    negative_mass = {}
    for name, geometry in (("estimated", scan.geometry), ("centre", scan.geometry.replace(detector_offset=0.0))):
        x = FBP(geometry, "Hann", 1.0)(y)
        negative_mass[name] = float((-x.clamp_max(0)).sum())
    assert negative_mass["estimated"] < 0.5 * negative_mass["centre"]  # wrong centres give doubled edges



def _rewrite(path, key, transform):
    with h5py.File(path, "a") as f:
        value = transform(f[key][...])
        del f[key]
        f[key] = value


@pytest.mark.parametrize("key, transform, message", [
    ("exchange/data_white", np.zeros_like, "flat fields are not above the dark"),
    ("exchange/data_white", lambda w: np.full_like(w, 100.0), "flat fields are not above the dark"),
    ("exchange/data", np.zeros_like, "no signal above the dark"),
])
def test_bad_flats_darks_and_projections_are_refused_by_name(tmp_path, key, transform, message):
    path = write_scan(tmp_path / "s.h5")
    _rewrite(path, key, transform)
    with pytest.raises(ValueError, match=message):
        load_data_exchange(path, center_offset=None)


def test_dead_flat_pixels_are_repaired_with_a_warning(tmp_path):
    good = load_data_exchange(write_scan(tmp_path / "good.h5"), center_offset=None).data
    path = write_scan(tmp_path / "dead.h5")

    def kill(white):
        white[:, :, [10, 40]] = 100.0  # flat = dark: these columns would be zero
        return white

    _rewrite(path, "exchange/data_white", kill)
    with pytest.warns(UserWarning, match=r"2 dead flat-field pixel\(s\) \(columns \[10, 40\]\)"):
        repaired = load_data_exchange(path, center_offset=None).data
    assert np.abs(repaired - good).max() < 0.05  # interpolated from neighbours of a smooth disk
