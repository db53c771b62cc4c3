"""Single-measurement priors beside DIP: the deep decoder and the analytic deep prior."""
import lightning as L
import pytest
import torch

from lightning_recon.methods import AnalyticDeepPrior
from lightning_recon.solvers import proximal_gradient
from lightning_recon.methods.dip import DeepImagePrior, RepeatedMeasurement
from lightning_recon.nets import DeepDecoder
from lightning_recon.physics import ParallelBeam2D, RayTransform

GEOMETRY = ParallelBeam2D((24, 24), num_angles=15)


def _measurement():
    truth = torch.zeros(1, 1, 24, 24)
    truth[..., 6:16, 8:18] = 1.0
    truth[..., 10:13, 4:20] += 0.5
    return truth, RayTransform(GEOMETRY)(truth)


def _fit(model, y, steps):
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, RepeatedMeasurement(y[0], steps).loader())
    return model


@pytest.mark.parametrize("shape", [(160, 160), (37, 50), (8, 8)])
def test_deep_decoder_reaches_the_image_size_with_far_fewer_weights_than_pixels(shape):
    net = DeepDecoder(shape, channels=(32,) * 4)
    assert net(torch.rand(2, *net.input_shape)).shape == (2, 1, *shape)
    if shape == (160, 160):
        assert sum(p.numel() for p in net.parameters()) < 0.25 * 160 * 160
    with pytest.raises(ValueError, match="z must be"):
        net(torch.rand(1, 1, *shape))


def test_dip_with_the_deep_decoder_fits_the_measurement():
    truth, y = _measurement()
    L.seed_everything(0, verbose=False)
    model = _fit(DeepImagePrior(GEOMETRY.to_dict(), network="deep-decoder", channels=(16,) * 3, tv_weight=0.0,
                                lr=1e-2), y, 60)
    assert isinstance(model.net, DeepDecoder) and model.hparams.network_input == "noise"
    assert min(model.losses) < 0.3 * model.losses[0]
    assert model.reconstruction.shape == (1, 1, 24, 24)
    with pytest.raises(ValueError, match="network must be"):
        DeepImagePrior(GEOMETRY.to_dict(), network="resnet")


def test_adp_starts_as_plain_proximal_gradient_and_its_corrected_adjoint_is_exact():
    _, y = _measurement()
    model = AnalyticDeepPrior(GEOMETRY.to_dict(), iterations=20)
    A = model.operator
    plain = proximal_gradient(A, A.adjoint, y, GEOMETRY.image_shape, 20, 1.0 / A.operator_norm() ** 2)
    torch.testing.assert_close(model(y), plain)
    assert float(plain.min()) >= 0.0
    with torch.no_grad():
        model.kernel.normal_(0.0, 0.1)
    x, r = torch.rand(2, 1, 24, 24), torch.rand(2, 1, *GEOMETRY.sinogram_shape)
    lhs = float((model.corrected_forward(x) * r).sum())
    rhs = float((x * model.corrected_adjoint(r)).sum())
    assert abs(lhs - rhs) / abs(lhs) < 1e-5


def test_adp_training_lowers_the_data_misfit_and_stays_stable():
    truth, y = _measurement()
    noisy = y + 0.02 * y.abs().max() * torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
    model = AnalyticDeepPrior(GEOMETRY.to_dict(), iterations=10, lr=1e-3)
    model.reference = truth[0, 0]
    _fit(model, noisy, 40)
    assert model.losses[-1] < model.losses[0]
    assert float(model.kernel.abs().sum()) > 0
    assert torch.isfinite(model.reconstruction).all() and len(model.psnr_curve) == 40


def test_adp_rejects_bad_settings():
    with pytest.raises(ValueError, match="regulariser"):
        AnalyticDeepPrior(GEOMETRY.to_dict(), regulariser="tv")
    with pytest.raises(ValueError, match="odd kernel_size"):
        AnalyticDeepPrior(GEOMETRY.to_dict(), kernel_size=4)
