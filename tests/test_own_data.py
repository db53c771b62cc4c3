"""Your own data in: LoDoPaB-CT, image folders / DICOM series and measured pairs, from files made
here in each exact layout, through the data modules and ``train.py``."""
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from lightning_recon.cli import cli_main
from lightning_recon.data import (DataFileError, ImageDataModule, LoDoPaBDataModule, LoDoPaBDataset,
                                  MeasuredPairsDataModule, lodopab_geometry)
from lightning_recon.physics import FBP, ParallelBeam2D

from .made_data import LODOPAB_SMALL, LODOPAB_SMALL_FLAGS, make_image_folder, make_lodopab, make_pairs

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
QUICK = ["--config", str(CONFIGS / "model/learned_gd.yaml"), "--config", str(CONFIGS / "logger/csv.yaml"),
         "--model.init_args.n_iter=2", "--model.init_args.hidden_channels=8",
         "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.max_steps=2", "--trainer.val_check_interval=2",
         "--trainer.check_val_every_n_epoch=null", "--trainer.num_sanity_val_steps=0",
         "--trainer.enable_progress_bar=false", "--data.init_args.num_workers=0", "--data.init_args.batch_size=2"]


@pytest.fixture(scope="module")
def lodopab(tmp_path_factory):
    return make_lodopab(tmp_path_factory.mktemp("lodopab"), {"train": [3, 2], "validation": [2], "test": [3]})


# -- LoDoPaB-CT -------------------------------------------------------------------------------
@pytest.mark.parametrize("angle_step", [1, 5])
def test_lodopab_geometry_is_dival_s(angle_step):
    """dival's LoDoPaBDataset geometry: parallel_beam_geometry on [−0.13, 0.13]², 362², 1000 angles, 513 pixels."""
    import odl
    from odl.applications.tomo import parallel_beam_geometry

    domain = odl.uniform_discr([-0.13, -0.13], [0.13, 0.13], (362, 362), dtype="float32")
    dival = parallel_beam_geometry(domain, num_angles=1000, det_shape=(513,))
    ours = lodopab_geometry(angle_step)
    assert ours.sinogram_shape == (1000 // angle_step, 513) and ours.image_shape == (362, 362)
    np.testing.assert_allclose(ours.angle_array, dival.angles[::angle_step], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.odl_geometry().det_partition.min_pt, dival.det_partition.min_pt, atol=1e-12)
    np.testing.assert_allclose(ours.odl_geometry().det_partition.max_pt, dival.det_partition.max_pt, atol=1e-12)
    np.testing.assert_allclose(ours.odl_space().min_pt, domain.min_pt)
    with pytest.raises(ValueError, match="divisor of 1000"):
        lodopab_geometry(3)


def test_lodopab_reads_samples_as_stored_in_order_and_subsampled(lodopab):
    train = LoDoPaBDataset(lodopab, "train", **LODOPAB_SMALL)
    assert len(train) == 5 and train.available == 5
    with h5py.File(lodopab / "ground_truth_train_001.hdf5") as f, h5py.File(lodopab / "observation_train_001.hdf5") as o:
        truth, observation = f["data"][1], o["data"][1]
    # samples 3, 4 sit in file 001 at global indices 128, 129
    sample = train[4]
    assert sample["ground_truth"].shape == (1, 32, 32) and sample["measurement"].shape == (1, 40, 47)
    assert np.array_equal(sample["ground_truth"][0].numpy(), truth)
    assert np.array_equal(sample["measurement"][0].numpy(), observation)
    sparse = LoDoPaBDataset(lodopab, "train", angle_step=5, **LODOPAB_SMALL)
    assert np.array_equal(sparse[4]["measurement"][0].numpy(), observation[::5])
    assert sparse.geometry.sinogram_shape == (8, 47)


def test_lodopab_sorted_by_patient_is_dival_s_stable_argsort(lodopab):
    ids = np.loadtxt(lodopab / "patient_ids_rand_train.csv", dtype=int)
    stored_order = np.concatenate([np.arange(3), 128 + np.arange(2)])
    expected = stored_order[np.argsort(ids[stored_order], kind="stable")]
    dataset = LoDoPaBDataset(lodopab, "train", sorted_by_patient=True, **LODOPAB_SMALL)
    plain = LoDoPaBDataset(lodopab, "train", **LODOPAB_SMALL)
    position = {int(g): i for i, g in enumerate(plain.global_index)}
    for i, global_index in enumerate(expected):
        assert torch.equal(dataset[i]["ground_truth"], plain[position[int(global_index)]]["ground_truth"])


def test_lodopab_min_photon_count_replaces_zero_count_values_as_dival(tmp_path):
    folder = make_lodopab(tmp_path, {"test": [2]}, patient_ids=False)
    with h5py.File(folder / "observation_test_000.hdf5", "r+") as f:
        data = f["data"][...]
        data[0, 0, :3] = -np.log(0.1 / 4096) / 81.35858  # a stored zero-count value (0.1 photons)
        f["data"][...] = data
    stored = LoDoPaBDataset(folder, "test", **LODOPAB_SMALL)[0]["measurement"][0]
    assert stored[0, 0] == pytest.approx(-np.log(0.1 / 4096) / 81.35858, rel=1e-6)
    replaced = LoDoPaBDataset(folder, "test", min_photon_count=1.0, **LODOPAB_SMALL)[0]["measurement"][0]
    new_value = torch.tensor(-math.log(1 / 4096) / 81.35858)
    threshold = 0.5 * (-math.log(0.1 / 4096) - math.log(1 / 4096)) / 81.35858
    assert torch.allclose(replaced[0, :3], new_value)
    zero_counts = stored >= threshold
    assert torch.equal(replaced[~zero_counts], stored[~zero_counts])  # ordinary values untouched
    assert torch.allclose(replaced[zero_counts], new_value)
    with pytest.warns(UserWarning, match="changed from 5"):
        LoDoPaBDataset(folder, "test", min_photon_count=5.0, **LODOPAB_SMALL)


def test_lodopab_streams_safely_with_workers(lodopab):
    dataset = LoDoPaBDataset(lodopab, "train", **LODOPAB_SMALL)
    dataset[0]  # the main process holds open handles before the workers fork
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2)
    batches = torch.cat([b["measurement"] for b in loader])
    assert torch.equal(batches, torch.stack([dataset[i]["measurement"] for i in range(len(dataset))]))


def test_lodopab_partial_copy_and_bad_files_give_one_line(lodopab, tmp_path, capsys):
    partial = make_lodopab(tmp_path / "partial", {"test": [2]}, patient_ids=False)
    module = LoDoPaBDataModule(str(partial), **LODOPAB_SMALL)
    assert len(module.dataset("test")) == 2
    with pytest.raises(DataFileError, match="no LoDoPaB-CT files for part 'train'"):
        module.dataset("train")
    with pytest.raises(DataFileError, match="does not exist"):
        LoDoPaBDataModule(str(tmp_path / "nowhere"), **LODOPAB_SMALL)
    (partial / "ground_truth_test_001.hdf5").write_bytes((partial / "ground_truth_test_000.hdf5").read_bytes())
    with pytest.raises(DataFileError, match="no matching observation_test_001.hdf5"):
        LoDoPaBDataset(partial, "test", **LODOPAB_SMALL)
    (partial / "observation_test_001.hdf5").write_bytes((partial / "observation_test_000.hdf5").read_bytes()[:500])
    with pytest.raises(DataFileError, match="observation_test_001.hdf5: unreadable HDF5"):
        LoDoPaBDataset(partial, "test", **LODOPAB_SMALL)
    with pytest.raises(DataFileError, match=r"expected \(N, 362, 362\)"):
        LoDoPaBDataset(lodopab, "test")  # a reduced copy read with the published sizes
    with pytest.raises(DataFileError, match=r"expected \(N, 50, 47\): the geometry does not match"):
        LoDoPaBDataset(lodopab, "test", image_size=32, num_angles=50, num_detector_pixels=47)
    with h5py.File(tmp_path / "observation_test_000.hdf5", "w") as f:
        f.create_dataset("data", data=np.zeros((1, 40, 47), np.float32))
    with h5py.File(tmp_path / "ground_truth_test_000.hdf5", "w") as f:
        f.create_dataset("data", data=np.zeros((2, 32, 32), np.float32))
    with pytest.raises(DataFileError, match="1 observations for 2 ground truths"):
        LoDoPaBDataset(tmp_path, "test", **LODOPAB_SMALL)


def test_lodopab_fbp_in_metres_matches_the_truth_scale(lodopab):
    """The FBP of LoDoPaB's post-log data (geometry in metres) is on the ground truths' scale."""
    dataset = LoDoPaBDataset(lodopab, "test", **LODOPAB_SMALL)
    batch = torch.stack([dataset[i]["measurement"] for i in range(3)])
    truth = torch.stack([dataset[i]["ground_truth"] for i in range(3)])
    fbp = FBP(dataset.geometry, "Hann", 1.0)(batch)
    assert abs(float(fbp.mean()) / float(truth.mean()) - 1) < 0.1


# -- your images --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["png", "npy", "dcm"])
def test_image_folder_splits_simulates_and_is_reproducible(kind, tmp_path):
    folder = make_image_folder(tmp_path / kind, 10, size=40, kind=kind)
    options = dict(image_size=24, num_angles=12, val_fraction=0.2, test_fraction=0.2)
    if kind == "dcm":
        options["intensity"] = [-1000.0, 0.0]  # the phantoms' HU range to [0, 1]
    module = ImageDataModule(str(folder), **options)
    assert {s: len(v) for s, v in module.splits.items()} == {"train": 6, "val": 2, "test": 2}
    assert set(module.splits["train"]).isdisjoint(module.splits["test"])
    sample = module.dataset("val")[1]
    assert sample["ground_truth"].shape == (1, 24, 24) and sample["measurement"].shape == (1, 12, 35)
    assert float(sample["ground_truth"].min()) >= 0 and float(sample["ground_truth"].max()) <= 1
    again = ImageDataModule(str(folder), **options).dataset("val")[1]
    assert torch.equal(sample["measurement"], again["measurement"])  # fixed noise per (seed, index)
    assert 0.5 < module.fixed_data_range <= 1.0  # "dataset": max − min of the training truths


def test_dicom_series_in_attenuation_units_and_fan_beam_with_poisson_noise(tmp_path):
    folder = make_image_folder(tmp_path / "dcm", 6, size=32, kind="dcm")
    geometry = dict(type="FanBeam2D", image_shape=[32, 32], num_angles=20, source_radius=60.0, detector_radius=40.0)
    module = ImageDataModule(str(folder), geometry=geometry, intensity="attenuation", mu_water=0.02, noise="poisson",
                             photons=1e4, mu_max=1.0, val_fraction=0.2, test_fraction=0.2, data_range="per-image")
    assert module.fixed_data_range is None
    truth = module.dataset("train")[0]["ground_truth"]
    assert float(truth.max()) <= 0.02 + 1e-6 and float(truth.min()) >= 0  # μ = 0.02 (1 + HU/1000), HU ≤ 0
    assert module.dataset("train")[0]["measurement"].shape == (1, *module.geometry.sinogram_shape)


def test_image_folder_bad_input_is_one_line_naming_the_file(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataFileError, match="empty"):
        ImageDataModule(str(empty))
    folder = make_image_folder(tmp_path / "mixed", 6, size=40, kind="npy")
    np.save(folder / "img9.npy", np.ones((30, 30), np.float32) * np.linspace(0, 1, 30))
    with pytest.raises(DataFileError, match=r"img9.npy: image of shape \(30, 30\).*mixed image sizes"):
        ImageDataModule(str(folder), image_size=40, resize="none", val_fraction=0.2, test_fraction=0.2)
    np.save(folder / "img9.npy", np.full((40, 40), np.nan, np.float32))
    with pytest.raises(DataFileError, match="img9.npy: .*NaN"):
        ImageDataModule(str(folder), val_fraction=0.2, test_fraction=0.2)
    np.save(folder / "img9.npy", np.zeros((3, 40, 40), np.float32))
    with pytest.raises(DataFileError, match="img9.npy: 3-D array"):
        ImageDataModule(str(folder), val_fraction=0.2, test_fraction=0.2)
    (folder / "img9.npy").write_bytes((folder / "img0.npy").read_bytes()[:100])
    with pytest.raises(DataFileError, match="img9.npy"):
        ImageDataModule(str(folder), val_fraction=0.2, test_fraction=0.2)


# -- measured pairs -------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["npz", "hdf5", "manifest"])
def test_measured_pairs_in_each_layout(layout, tmp_path):
    geometry = ParallelBeam2D((24, 24), num_angles=15)
    source = make_pairs(tmp_path / layout, 6, geometry, layout)
    module = MeasuredPairsDataModule(str(source), geometry=geometry.to_dict(), val_fraction=0.2, test_fraction=0.2)
    assert {s: len(v) for s, v in module.splits.items()} == {"train": 4, "val": 1, "test": 1}
    sample = module.dataset("train")[0]
    assert sample["measurement"].shape == (1, 15, 35) and sample["ground_truth"].shape == (1, 24, 24)
    with pytest.raises(DataFileError, match=r"sinogram of shape \(15, 35\), expected \(20, 35\).*geometry does not match"):
        MeasuredPairsDataModule(str(source), geometry=geometry.replace(num_angles=20).to_dict())


def test_measured_pairs_count_mismatch_and_missing_manifest_file(tmp_path):
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f.create_dataset("sinogram", data=np.zeros((3, 15, 35), np.float32))
        f.create_dataset("reference", data=np.zeros((2, 24, 24), np.float32))
    with pytest.raises(DataFileError, match="bad.h5: 3 measurements for 2 references"):
        MeasuredPairsDataModule(str(tmp_path / "bad.h5"), image_size=24, num_angles=15)
    (tmp_path / "m.csv").write_text("measurement,reference\nmissing.npy,ref.npy\n")
    with pytest.raises(DataFileError, match=r"m.csv, line 2: .*missing.npy does not exist"):
        MeasuredPairsDataModule(str(tmp_path / "m.csv"), image_size=24, num_angles=15)


# -- through train.py -----------------------------------------------------------------------------
def _fit_and_test(tmp_path, data_args):
    results = tmp_path / "results"
    common = [*data_args, *QUICK, f"--trainer.default_root_dir={tmp_path}",
              f"--trainer.logger.init_args.save_dir={tmp_path}", f"--model.init_args.results_dir={results}"]
    cli = cli_main(["fit", *common])
    checkpoint = next(Path(cli.trainer.log_dir).rglob("last.ckpt"))
    assert math.isfinite(float(cli.trainer.callback_metrics["val/psnr"]))
    cli_main(["test", *common, f"--ckpt_path={checkpoint}"])
    return (results / "results.md").read_text()


def test_train_py_fit_and_test_on_lodopab(lodopab, tmp_path):
    table = _fit_and_test(tmp_path, ["--config", str(CONFIGS / "data/lodopab.yaml"), f"--data.init_args.path={lodopab}",
                                     *LODOPAB_SMALL_FLAGS])
    assert "LearnedGD" in table


def test_train_py_fit_and_test_on_an_image_folder_and_on_pairs(tmp_path):
    images = make_image_folder(tmp_path / "images", 8, size=40)
    table = _fit_and_test(tmp_path / "run1", ["--config", str(CONFIGS / "data/images.yaml"),
                                              f"--data.init_args.path={images}", "--data.init_args.image_size=24",
                                              "--data.init_args.num_angles=12", "--data.init_args.simulation_size=48",
                                              "--data.init_args.val_fraction=0.25", "--data.init_args.test_fraction=0.25"])
    assert "LearnedGD" in table
    geometry = ParallelBeam2D((24, 24), num_angles=12)
    pairs = make_pairs(tmp_path / "pairs", 6, geometry)
    table = _fit_and_test(tmp_path / "run2", ["--config", str(CONFIGS / "data/pairs.yaml"), f"--data.init_args.path={pairs}",
                                              "--data.init_args.geometry.image_shape=[24, 24]",
                                              "--data.init_args.geometry.num_angles=12",
                                              "--data.init_args.val_fraction=0.2", "--data.init_args.test_fraction=0.2"])
    assert "LearnedGD" in table


def test_train_py_fit_and_test_on_a_dicom_series(tmp_path):
    series = make_image_folder(tmp_path / "series", 8, size=32, kind="dcm")
    table = _fit_and_test(tmp_path, ["--config", str(CONFIGS / "data/images.yaml"), f"--data.init_args.path={series}",
                                     "--data.init_args.intensity=[-1000, 0]", "--data.init_args.image_size=24",
                                     "--data.init_args.num_angles=12", "--data.init_args.simulation_size=null",
                                     "--data.init_args.val_fraction=0.25", "--data.init_args.test_fraction=0.25"])
    assert "LearnedGD" in table


def test_train_py_bad_data_is_one_line_and_writes_nothing(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", "--config", str(CONFIGS / "data/images.yaml"), *QUICK, f"--data.init_args.path={empty}",
                  f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}"])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and error.count("\n") == 1 and str(empty) in error
    assert not out.exists()


def test_a_data_module_keeps_its_own_batch_size(tmp_path):
    """The default data class's settings (batch size 32) never carry over into another data class."""
    images = make_image_folder(tmp_path / "images", 6, size=24)
    cli = cli_main(["--data", "lightning_recon.data.ImageDataModule", f"--data.path={images}",
                    "--model", "lightning_recon.methods.FBPUNet", "--trainer.accelerator=cpu"], run=False)
    assert cli.datamodule.batch_size == 8  # ImageDataModule's default


@pytest.mark.slow
def test_lodopab_at_full_size(tmp_path):
    """One full-size LoDoPaB pair (362², 1000 × 513) read with the published geometry; its FBP in
    metres is on the truth's scale."""
    from lightning_recon.physics import RayTransform

    folder = tmp_path / "full"
    folder.mkdir()
    truth = np.zeros((1, 362, 362), np.float32)
    truth[0, 100:260, 120:240] = 0.5
    sinogram = RayTransform(lodopab_geometry())(torch.from_numpy(truth)[:, None])[:, 0].numpy()
    for kind, data in (("ground_truth", truth), ("observation", sinogram)):
        with h5py.File(folder / f"{kind}_test_000.hdf5", "w") as f:
            f.create_dataset("data", data=data)
    dataset = LoDoPaBDataModule(str(folder)).dataset("test")
    sample = dataset[0]
    assert sample["measurement"].shape == (1, 1000, 513)
    fbp = FBP(dataset.geometry, "Hann", 1.0)(sample["measurement"][None])
    assert abs(float(fbp.mean()) / float(truth.mean()) - 1) < 0.05


def test_manifest_reads_a_raw_data_exchange_scan_as_finetune_does(tmp_path):
    from lightning_recon.data.real import load_data_exchange
    from lightning_recon.data.synthetic_scan import read_ground_truth, write_synthetic_scan

    rows = ["measurement,reference"]
    for i in range(3):
        write_synthetic_scan(tmp_path / f"scan{i}.h5", slices=2, size=24, angles=20, seed=i)
        np.save(tmp_path / f"truth{i}.npy", read_ground_truth(tmp_path / f"scan{i}.h5", 1))
        rows.append(f"scan{i}.h5,truth{i}.npy")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    geometry = ParallelBeam2D((24, 24), num_angles=20, num_detector_pixels=24, detector_extent=24.0)
    module = MeasuredPairsDataModule(str(tmp_path / "pairs.csv"), geometry=geometry.to_dict(), slice_index=1,
                                     val_fraction=0, test_fraction=0.34)
    train = module.dataset("train")
    scan = train.items[0][1]
    expected = load_data_exchange(scan, slice_index=1, center_offset=None).data  # flat/dark corrected, −log
    assert np.array_equal(train[0]["measurement"][0].numpy(), expected)


# -- training without ground truth on your data ----------------------------------------------------
@pytest.mark.parametrize("source", ["lodopab", "images", "pairs"])
def test_every_own_data_module_can_leave_the_ground_truth_out_of_training(source, lodopab, tmp_path):
    """``train_ground_truth: false``: training batches hold the measurement only (the
    self-supervised losses), validation batches keep the ground truth for their metrics."""
    if source == "lodopab":
        module = LoDoPaBDataModule(str(lodopab), **LODOPAB_SMALL, train_ground_truth=False, batch_size=2, num_workers=0)
    elif source == "images":
        folder = make_image_folder(tmp_path / "images", 10, size=24)
        module = ImageDataModule(str(folder), image_size=24, num_angles=12, val_fraction=0.2, test_fraction=0.2,
                                 train_ground_truth=False, batch_size=2)
    else:
        geometry = ParallelBeam2D((24, 24), num_angles=15)
        module = MeasuredPairsDataModule(str(make_pairs(tmp_path / "pairs", 6, geometry)), geometry=geometry.to_dict(),
                                         val_fraction=0.2, test_fraction=0.2, train_ground_truth=False, batch_size=2)
    module.setup("fit")
    train = next(iter(module.train_dataloader()))
    assert "ground_truth" not in train and "measurement" in train
    assert "ground_truth" in next(iter(module.val_dataloader()))
    assert module.description.endswith("trained without ground truth")
    with pytest.raises(ValueError, match="train_ground_truth must be true or false"):
        type(module)(**{**dict(module.hparams), "train_ground_truth": "no"})
