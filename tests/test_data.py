import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_recon.data import PRESETS, EllipsesDataset, SimulatedCTDataModule
from lightning_recon.metrics import image_metrics, psnr, ssim
from lightning_recon.physics import ParallelBeam2D
from lightning_recon.physics.phantoms import ellipse_parameters

GEOMETRY = ParallelBeam2D((32, 32), num_angles=12)


def test_samples_are_deterministic_per_seed_and_index():
    a = EllipsesDataset(GEOMETRY, length=6, seed=5)
    b = EllipsesDataset(GEOMETRY, length=6, seed=5)
    for key in ("ground_truth", "measurement", "fbp"):
        assert torch.equal(a[4][key], b[4][key])
    other = EllipsesDataset(GEOMETRY, length=6, seed=6)
    assert not torch.equal(a[4]["ground_truth"], other[4]["ground_truth"])
    assert not torch.equal(a[3]["ground_truth"], a[4]["ground_truth"])


def test_parameters_follow_dival_sequential_draws():
    params = ellipse_parameters(seed=1, count=3)
    rng = np.random.RandomState(1)
    for _ in range(2):  # skip two samples: 6 arrays of 70 draws and one Poisson draw each
        rng.uniform(size=70), rng.exponential(size=70), rng.exponential(size=70)
        rng.uniform(size=70), rng.uniform(size=70), rng.uniform(size=70), rng.poisson(40)
    value = rng.uniform(-0.4, 1.0, 70)
    for _ in range(2):
        rng.exponential(size=70)
    for _ in range(3):
        rng.uniform(size=70)
    value[min(rng.poisson(40), 70):] = 0.0
    assert np.array_equal(params[2, :, 0], value)


def test_adler_family_follows_its_sequential_draws():
    params = ellipse_parameters(seed=1, count=2, family="adler")
    rng = np.random.RandomState(1)
    rng.uniform(size=50), rng.exponential(size=50), rng.exponential(size=50), rng.exponential(size=50)
    rng.uniform(size=50), rng.uniform(size=50), rng.uniform(size=50)
    value = rng.uniform(-0.5, 0.5, 50) * rng.exponential(0.4, 50)
    assert np.allclose(params[1, :, 0], value)


def test_sample_shapes_ranges_and_noise_level():
    item = EllipsesDataset(GEOMETRY, length=2, seed=1, relative_std=0.05)[0]
    assert item["ground_truth"].shape == (1, 32, 32) and item["fbp"].shape == (1, 32, 32)
    assert item["measurement"].shape == (1, *GEOMETRY.sinogram_shape)
    gt = item["ground_truth"]
    assert float(gt.min()) == 0.0 and float(gt.max()) == 1.0
    clean = EllipsesDataset(GEOMETRY, length=2, seed=1, noise="none")[0]["measurement"]
    relative = float((item["measurement"] - clean).std() / clean.abs().mean())
    assert 0.04 < relative < 0.06


def test_finer_simulation_grid_avoids_the_inverse_crime():
    coarse = EllipsesDataset(GEOMETRY, length=1, seed=1, noise="none", phantoms="adler")[0]
    fine = EllipsesDataset(GEOMETRY, length=1, seed=1, noise="none", phantoms="adler", simulation_factor=2)[0]
    assert fine["ground_truth"].shape == (1, 32, 32)
    assert fine["measurement"].shape == coarse["measurement"].shape
    # same object, different discretisation: close but not identical data
    diff = float((fine["measurement"] - coarse["measurement"]).norm() / coarse["measurement"].norm())
    assert 1e-4 < diff < 0.2
    # dival's way: the same truth, upsampled bilinearly for the simulation
    dival = EllipsesDataset(GEOMETRY, length=1, seed=1, noise="none", simulation_size=100)[0]
    same_grid = EllipsesDataset(GEOMETRY, length=1, seed=1, noise="none")[0]
    assert torch.equal(dival["ground_truth"], same_grid["ground_truth"])
    diff = float((dival["measurement"] - same_grid["measurement"]).norm() / same_grid["measurement"].norm())
    assert 1e-4 < diff < 0.1
    with pytest.raises(ValueError, match="not both"):
        EllipsesDataset(GEOMETRY, length=1, seed=1, simulation_size=100, simulation_factor=2)


def test_dataloader_workers_reproduce_direct_indexing():
    dataset = EllipsesDataset(GEOMETRY, length=8, seed=3)
    loaded = torch.cat([b["ground_truth"] for b in DataLoader(dataset, batch_size=3, num_workers=2)])
    direct = torch.stack([dataset[i]["ground_truth"] for i in range(8)])
    assert torch.equal(loaded, direct)


def test_datamodule_presets_and_overrides():
    assert {"ellipses-30", "ellipses-30-5pct", "adler-ellipses-30"} <= set(PRESETS)
    dm = SimulatedCTDataModule("ellipses-30-5pct", image_size=32, test_length=4, batch_size=2)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["measurement"].shape == (2, 1, 30, dm.geometry.num_detector_pixels)
    assert dm.dataset("test").noise.relative_std == 0.05
    assert dm.dataset("test").seed == 1 and dm.dataset("train").seed == 42
    full = SimulatedCTDataModule("ellipses-30")
    assert full.geometry.sinogram_shape == (30, 183) and full.settings["test_length"] == 100
    test_set = full.dataset("test")
    assert (test_set.phantoms, test_set.simulation_shape, test_set.noise_seed) == ("dival", (400, 400), 3)
    adler = SimulatedCTDataModule("adler-ellipses-30").dataset("test")
    assert (adler.phantoms, adler.simulation_shape, adler.noise_stream) == ("adler", (128, 128), "indexed")
    with pytest.raises(ValueError, match="unknown preset"):
        SimulatedCTDataModule("ellipses-31")
    with pytest.raises(ValueError, match="noise must be"):
        SimulatedCTDataModule("ellipses-small", noise="speckle").dataset("test")


def test_psnr_and_ssim_conventions():
    target = torch.zeros(2, 1, 16, 16)
    target[0, :, 4:12, 4:12] = 2.0  # per-image range 2
    target[1, :, 4:12, 4:12] = 1.0  # per-image range 1
    pred = target + 0.1
    values = psnr(pred, target)
    assert torch.allclose(values, torch.tensor([10 * np.log10(4 / 0.01), 10 * np.log10(1 / 0.01)], dtype=torch.float32), atol=1e-3)
    fixed = psnr(pred, target, data_range=1.0)
    assert torch.allclose(fixed, torch.full((2,), 20.0), atol=1e-3)
    assert torch.allclose(ssim(target, target), torch.ones(2))
    assert (ssim(pred + torch.randn_like(pred) * 0.3, target) < 0.9).all()
    assert set(image_metrics(pred, target)) == {"psnr", "ssim", "psnr_fixed", "ssim_fixed"}
    with pytest.raises(ValueError, match="same shape"):
        psnr(pred, target[:1])


def test_ssim_matches_scikit_image():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(1, 1, 48, 48, generator=gen)
    pred = target + 0.1 * torch.randn(1, 1, 48, 48, generator=gen)
    ours = float(ssim(pred, target))
    ref = skimage_metrics.structural_similarity(pred[0, 0].numpy(), target[0, 0].numpy(),
                                                data_range=float(target.max() - target.min()))
    assert abs(ours - ref) < 0.01
