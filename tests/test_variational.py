import pytest
import torch

from lightning_recon.metrics import psnr
from lightning_recon.methods.variational import divergence, gradient, total_variation, tune_alpha, tv_pdhg
from lightning_recon.physics import FBP, GaussianNoise, ParallelBeam2D, RayTransform

GEOMETRY = ParallelBeam2D((32, 32), num_angles=20)


def blocks(batch: int = 2) -> torch.Tensor:
    x = torch.zeros(batch, 1, 32, 32)
    x[:, :, 8:20, 6:18] = 1.0
    x[:, :, 14:28, 16:26] += 0.5
    return x


def test_total_variation_of_constant_and_step_images():
    assert torch.allclose(total_variation(torch.full((1, 1, 8, 8), 3.0)), torch.zeros(1))
    step = torch.zeros(1, 1, 8, 8)
    step[..., 4:, :] = 2.0
    assert torch.allclose(total_variation(step), torch.tensor([2.0 * 8]))


def test_divergence_is_the_negative_adjoint_of_the_gradient():
    x, p = torch.rand(2, 1, 9, 7, dtype=torch.float64), torch.rand(2, 2, 9, 7, dtype=torch.float64)
    assert torch.allclose((gradient(x) * p).sum(), -(x * divergence(p)).sum())


def test_tv_beats_fbp_on_noisy_piecewise_constant_images_and_stays_nonnegative():
    A = RayTransform(GEOMETRY)
    truth = blocks()
    y = GaussianNoise(0.05)(A(truth), generator=torch.Generator().manual_seed(0))
    recon = tv_pdhg(y, A, alpha=2.0, iterations=300)
    fbp = FBP(GEOMETRY, "Hann", 0.8)(y)
    assert (recon >= 0).all()
    assert psnr(recon, truth).mean() > psnr(fbp, truth).mean() + 3.0
    objective = lambda x: 0.5 * ((A(x) - y) ** 2).flatten(1).sum(1) + 2.0 * total_variation(x)
    assert (objective(recon) < objective(fbp.clamp_min(0))).all()
    assert (objective(recon) < objective(torch.zeros_like(truth))).all()


def test_small_alpha_fits_the_data():
    A = RayTransform(ParallelBeam2D((32, 32), num_angles=60))
    y = A(blocks(1))
    recon = tv_pdhg(y, A, alpha=1e-4, iterations=400)
    assert float((A(recon) - y).norm() / y.norm()) < 0.02


def test_per_sample_alpha_matches_separate_calls_and_tuning_picks_the_best():
    A = RayTransform(GEOMETRY)
    y = A(blocks(2))
    both = tv_pdhg(y, A, alpha=torch.tensor([0.5, 5.0]), iterations=50)
    assert torch.allclose(both[:1], tv_pdhg(y[:1], A, 0.5, iterations=50), atol=1e-5)
    assert torch.allclose(both[1:], tv_pdhg(y[1:], A, 5.0, iterations=50), atol=1e-5)
    best, table = tune_alpha(y, blocks(2), A, alphas=[0.01, 1.0, 1000.0], iterations=100)
    assert best == max(table, key=table.get) and best != 1000.0


@pytest.mark.parametrize("alpha,message", [(-1.0, "alpha"), (float("nan"), "alpha"), (torch.ones(3), "alpha")])
def test_bad_alpha_raises(alpha, message):
    A = RayTransform(GEOMETRY)
    with pytest.raises(ValueError, match=message):
        tv_pdhg(torch.zeros(2, 1, *GEOMETRY.sinogram_shape), A, alpha)
    with pytest.raises(ValueError, match="sinograms"):
        tv_pdhg(torch.zeros(2, *GEOMETRY.sinogram_shape), A, 1.0)
