import pytest
import torch

from lightning_recon.metrics import psnr
from lightning_recon.solvers.tv import divergence, gradient, total_variation, tune_alpha, tv_pdhg
from lightning_recon.physics import FBP, GaussianNoise, ParallelBeam2D, RayTransform

GEOMETRY = ParallelBeam2D((32, 32), num_angles=20)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ray_transform() -> RayTransform:
    return RayTransform(GEOMETRY)


def blocks(batch: int = 2) -> torch.Tensor:
    """Piecewise-constant phantoms ``(batch, 1, 32, 32)`` with values in [0, 1.5]."""
    x = torch.zeros(batch, 1, 32, 32)
    x[:, :, 8:20, 6:18] = 1.0
    x[:, :, 14:28, 16:26] += 0.5
    return x


def objective(ray_transform, x, y, alpha: float) -> torch.Tensor:
    return 0.5 * (ray_transform(x) - y).pow(2).flatten(1).sum(1) + alpha * total_variation(x)


@pytest.mark.parametrize("isotropic", [True, False])
def test_total_variation_of_constant_and_step_images(isotropic):
    assert torch.equal(total_variation(torch.full((1, 1, 8, 8), 3.0), isotropic), torch.zeros(1))
    step = torch.zeros(2, 1, 8, 6)
    step[0, :, 4:, :] = 2.0  # a jump of 2 along a 6-pixel edge
    step[1, :, :, 3:] = 1.0  # a jump of 1 along an 8-pixel edge
    assert torch.allclose(total_variation(step, isotropic), torch.tensor([12.0, 8.0]))


def test_total_variation_gradient_is_finite_on_flat_patches():
    # DIP+TV differentiates TV through images with exactly flat regions (e.g. a clipped background)
    x = torch.zeros(1, 1, 8, 8)
    x[..., 2:5, 2:5] = 1.0
    x.requires_grad_(True)
    total_variation(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_anisotropic_total_variation_bounds_the_isotropic_one():
    x = torch.rand(3, 1, 9, 7)
    iso, aniso = total_variation(x, isotropic=True), total_variation(x, isotropic=False)
    assert (iso <= aniso).all() and (aniso <= 2**0.5 * iso + 1e-5).all()


def test_divergence_is_the_negative_adjoint_of_the_gradient():
    x, p = torch.rand(2, 1, 9, 7, dtype=torch.float64), torch.rand(2, 2, 1, 9, 7, dtype=torch.float64)
    assert gradient(x).shape == (2, 2, 1, 9, 7)
    assert torch.allclose((gradient(x) * p).sum(), -(x * divergence(p)).sum())


def test_objective_decreases_below_fbp_and_zero(ray_transform):
    truth = blocks()
    y = GaussianNoise(0.05)(ray_transform(truth), generator=torch.Generator().manual_seed(0))
    alpha = 2.0
    values = [objective(ray_transform, tv_pdhg(y, ray_transform, alpha, iterations=n), y, alpha) for n in (10, 40, 160)]
    assert (values[1] <= values[0] * 1.001).all() and (values[2] <= values[1] * 1.001).all()
    fbp = FBP(GEOMETRY, "Hann", 0.8)(y)
    assert (values[-1] < objective(ray_transform, fbp, y, alpha)).all()
    assert (values[-1] < objective(ray_transform, torch.zeros_like(truth), y, alpha)).all()


def test_tv_beats_fbp_on_noisy_piecewise_constant_images_and_stays_nonnegative(ray_transform):
    truth = blocks()
    y = GaussianNoise(0.05)(ray_transform(truth), generator=torch.Generator().manual_seed(0))
    recon = tv_pdhg(y, ray_transform, alpha=2.0, iterations=300)
    fbp = FBP(GEOMETRY, "Hann", 0.8)(y)
    assert recon.shape == truth.shape and (recon >= 0).all()
    assert (psnr(recon, truth) > psnr(fbp, truth) + 8.0).all()


def test_negative_values_appear_only_without_the_constraint(ray_transform):
    y = GaussianNoise(0.2)(ray_transform(blocks(1)), generator=torch.Generator().manual_seed(1))
    assert tv_pdhg(y, ray_transform, 0.1, iterations=100, nonnegative=False).min() < 0
    assert tv_pdhg(y, ray_transform, 0.1, iterations=100, nonnegative=True).min() >= 0


def test_small_alpha_with_many_angles_approaches_least_squares():
    dense = RayTransform(ParallelBeam2D((32, 32), num_angles=60))
    y = dense(blocks(1))
    recon = tv_pdhg(y, dense, alpha=1e-4, iterations=400)
    assert float((dense(recon) - y).norm() / y.norm()) < 0.01
    assert float((recon - blocks(1)).norm() / blocks(1).norm()) < 0.05


def test_anisotropic_tv_and_warm_start(ray_transform):
    truth = blocks(1)
    y = GaussianNoise(0.05)(ray_transform(truth), generator=torch.Generator().manual_seed(2))
    aniso = tv_pdhg(y, ray_transform, 2.0, iterations=300, isotropic=False)
    assert psnr(aniso, truth) > psnr(FBP(GEOMETRY, "Hann", 0.8)(y), truth) + 8.0
    warm = tv_pdhg(y, ray_transform, 2.0, iterations=20, x0=truth)
    cold = tv_pdhg(y, ray_transform, 2.0, iterations=20)
    assert psnr(warm, truth) > psnr(cold, truth)


def test_zero_alpha_and_half_precision_input(ray_transform):
    y = ray_transform(blocks(1))
    assert torch.isfinite(tv_pdhg(y, ray_transform, 0.0, iterations=20)).all()
    half = tv_pdhg(y.half(), ray_transform, 1.0, iterations=20)
    assert half.dtype == torch.float16
    assert torch.allclose(half.float(), tv_pdhg(y.half().float(), ray_transform, 1.0, iterations=20), atol=1e-2)


def test_per_sample_alpha_matches_separate_calls(ray_transform):
    y = ray_transform(blocks(2))
    both = tv_pdhg(y, ray_transform, alpha=torch.tensor([0.5, 5.0]), iterations=50)
    assert torch.allclose(both[:1], tv_pdhg(y[:1], ray_transform, 0.5, iterations=50), atol=1e-5)
    assert torch.allclose(both[1:], tv_pdhg(y[1:], ray_transform, 5.0, iterations=50), atol=1e-5)


def test_tune_alpha_picks_the_best_mean_psnr(ray_transform):
    truth = blocks(2)
    y = GaussianNoise(0.05)(ray_transform(truth), generator=torch.Generator().manual_seed(3))
    best, table = tune_alpha(y, truth, ray_transform, alphas=[0.01, 2.0, 1000.0], iterations=100)
    assert set(table) == {0.01, 2.0, 1000.0}
    assert best == max(table, key=table.get) == 2.0


@pytest.mark.parametrize("alpha", [-1.0, float("nan"), float("inf"), torch.ones(3), torch.ones(2, 1), "1", True, None])
def test_bad_alpha_raises(ray_transform, alpha):
    with pytest.raises(ValueError, match="alpha"):
        tv_pdhg(torch.zeros(2, 1, *GEOMETRY.sinogram_shape), ray_transform, alpha, iterations=1)


@pytest.mark.parametrize("shape", [(2, *GEOMETRY.sinogram_shape), (2, 3, *GEOMETRY.sinogram_shape), (2, 1, 20, 7)])
def test_wrong_sinogram_shapes_raise(ray_transform, shape):
    with pytest.raises(ValueError, match="sinograms"):
        tv_pdhg(torch.zeros(shape), ray_transform, 1.0, iterations=1)


def test_other_bad_inputs_raise(ray_transform):
    y = torch.zeros(2, 1, *GEOMETRY.sinogram_shape)
    for kwargs, message in [
        (dict(iterations=0), "iterations"),
        (dict(x0=torch.zeros(2, 1, 16, 16)), "x0"),
        (dict(step_ratio=0.0), "step_ratio"),
    ]:
        with pytest.raises(ValueError, match=message):
            tv_pdhg(y, ray_transform, 1.0, **kwargs)
    with pytest.raises(ValueError, match="NaN"):
        tv_pdhg(torch.full_like(y, float("nan")), ray_transform, 1.0)
    with pytest.raises(ValueError, match="alphas"):
        tune_alpha(y, torch.zeros(2, 1, 32, 32), ray_transform, alphas=[])
    with pytest.raises(ValueError, match="val_truths"):
        tune_alpha(y, torch.zeros(3, 1, 32, 32), ray_transform, alphas=[1.0])


def test_tv_baseline_alpha_means_the_same_in_any_length_unit():
    """The same α (pixel units) gives the same TV reconstruction of the same images in pixels and in metres."""
    from lightning_recon.methods import TVBaseline
    from lightning_recon.physics import ParallelBeam2D, RayTransform

    x = torch.zeros(1, 1, 24, 24)
    x[..., 6:18, 8:16] = 1.0
    results = []
    for extent in (None, (0.26, 0.26)):
        geometry = ParallelBeam2D((24, 24), image_extent=extent, num_angles=12)
        y = RayTransform(geometry)(x)
        model = TVBaseline(forward_model=geometry.to_dict(), alpha=2.0, iterations=200, tune=False, results_dir=None)
        results.append(model.reconstruct({"measurement": y}))
    assert torch.allclose(results[0], results[1], atol=1e-4)
