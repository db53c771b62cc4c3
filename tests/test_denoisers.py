"""Denoisers for plug-and-play priors: the DRUNet-style U-Net and the lifting-scheme invertible
network (shapes, σ conditioning, exact inverse), and DenoiserModule trained a few steps with
Lightning on 16² ground truths (checkpoints read with weights_only=True). Tiny images, few steps."""
import math

import lightning as L
import pytest
import torch

from lightning_recon.data import SimulatedCTDataModule
from lightning_recon.methods import DenoiserModule
from lightning_recon.methods.denoiser import load_denoiser
from lightning_recon.metrics import psnr
from lightning_recon.nets import DRUNet, LiftingDenoiser, LiftingScheme
from lightning_recon.physics import ParallelBeam2D, SparseCodingProblem

SIZE = 16
NETS = {"drunet": dict(channels=(8, 16), blocks=1), "lifting": dict(levels=2, hidden=8, denoiser_hidden=16)}

pytestmark = pytest.mark.usefixtures("one_thread")


def datamodule(**overrides):
    settings = dict(preset="ellipses-small", image_size=SIZE, num_angles=8, train_length=64, val_length=4,
                    test_length=8, batch_size=8, num_workers=0)
    settings.update(overrides)
    return SimulatedCTDataModule(**settings)


def perturbed(module: torch.nn.Module, std: float, seed: int = 0) -> torch.nn.Module:
    """``module`` with every weight moved by N(0, std²) noise (the zero-started layers too)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(std * torch.randn(parameter.shape, generator=generator))
    return module


@pytest.fixture(scope="module", params=sorted(NETS))
def trained(request, tmp_path_factory):
    """A DenoiserModule of each network fitted 60 steps on 16² ground truths, and its checkpoint."""
    torch.manual_seed(0)
    data = datamodule()
    model = DenoiserModule(network=request.param, forward_model=data.forward_model_dict, sigma_min=0.02, sigma_max=0.2,
                           val_sigma=0.1, lr=3e-3, scheduler="none", results_dir=None, **NETS[request.param])
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=60, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0)
    trainer.fit(model, data)
    path = tmp_path_factory.mktemp("denoiser") / f"{request.param}.ckpt"
    trainer.save_checkpoint(path)
    return {"network": request.param, "model": model, "path": str(path), "data": data}


# -- the networks --------------------------------------------------------------------------------
@pytest.mark.parametrize("network", sorted(NETS))
@pytest.mark.parametrize("shape", [(2, 1, 16, 16), (3, 1, 20, 13), (1, 2, 8, 24)])
def test_denoisers_keep_the_shape_of_any_image_size_and_channel_count(network, shape):
    torch.manual_seed(0)
    net = DRUNet(shape[1], **NETS["drunet"]) if network == "drunet" else LiftingDenoiser(shape[1], **NETS["lifting"])
    x = torch.rand(shape)
    assert net(x, 0.1).shape == shape
    assert net(x, torch.full((shape[0],), 0.1)).shape == shape
    assert torch.allclose(net(x, 0.1), net(x, torch.tensor(0.1)))


def test_drunet_output_depends_on_sigma_per_sample():
    torch.manual_seed(0)
    net = DRUNet(1, **NETS["drunet"])
    x = torch.rand(1, 1, 16, 16).repeat(2, 1, 1, 1)
    out = net(x, torch.tensor([0.05, 0.2]))
    assert not torch.allclose(out[0], out[1])  # σ enters the network, one level per sample
    assert torch.allclose(out[1], net(x[1:], 0.2)[0], atol=1e-6)


def test_networks_reject_inputs_they_cannot_take():
    drunet, lifting = DRUNet(1, channels=(8, 16, 32)), LiftingDenoiser(1, levels=3)
    with pytest.raises(ValueError, match=r"takes images \(B, 1, H, W\), got \(2, 3, 16, 16\)"):
        drunet(torch.rand(2, 3, 16, 16), 0.1)
    with pytest.raises(ValueError, match="at least 8x8 pixels, got 4x16"):
        lifting(torch.rand(1, 1, 4, 16), 0.1)
    with pytest.raises(ValueError, match=r"sigma must be a number or a tensor of shape \(2,\)"):
        drunet(torch.rand(2, 1, 16, 16), torch.ones(3))
    with pytest.raises(ValueError, match="multiples of 8"):
        LiftingScheme(1, levels=3)(torch.rand(1, 1, 12, 16))
    with pytest.raises(ValueError, match="network must be one of"):
        DenoiserModule(network="bm3d", forward_model=ParallelBeam2D((SIZE, SIZE), num_angles=4).to_dict())


# -- the lifting scheme --------------------------------------------------------------------------
def test_lifting_scheme_starts_as_the_haar_transform_and_its_denoiser_as_the_identity():
    x = torch.rand(2, 1, 16, 16, dtype=torch.float64)
    approximation, details = LiftingScheme(1, levels=2, hidden=8).double()(x)
    blocks = torch.nn.functional.avg_pool2d(x, 2)
    assert torch.allclose(approximation, torch.nn.functional.avg_pool2d(blocks, 2))
    assert torch.allclose(details[0][:, :1], x[..., ::2, 1::2] - x[..., ::2, ::2])  # top-right − top-left
    assert [tuple(d.shape) for d in details] == [(2, 3, 8, 8), (2, 3, 4, 4)]
    denoiser = LiftingDenoiser(1, levels=2, hidden=8, denoiser_hidden=8)
    x32 = torch.rand(2, 1, 16, 16)
    assert torch.allclose(denoiser(x32, 0.1), x32, atol=1e-6)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_lifting_inverse_undoes_forward_for_any_weights(dtype, tolerance):
    torch.manual_seed(0)
    scheme = perturbed(LiftingScheme(2, levels=3, hidden=16), std=0.05).to(dtype)
    x = torch.rand(3, 2, 32, 24, dtype=dtype)
    with torch.no_grad():
        coefficients = scheme(x)
        haar = LiftingScheme(2, levels=3, hidden=16).to(dtype)(x)
        restored = scheme.inverse(coefficients)
    assert (coefficients[0] - haar[0]).abs().max() > 1e-2  # the learned steps do change the transform
    assert float((restored - x).norm() / x.norm()) < tolerance
    with pytest.raises(ValueError, match="needs 3 detail bands"):
        scheme.inverse((coefficients[0], coefficients[1][:2]))


@pytest.mark.parametrize("trained", ["lifting"], indirect=True)
def test_trained_lifting_denoiser_transform_stays_invertible(trained):
    transform = trained["model"].net.transform
    x = torch.stack([trained["data"].dataset("test")[i]["ground_truth"] for i in range(4)])
    x = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        restored = transform.inverse(transform(x))
    assert float((restored - x).norm() / x.norm()) < 1e-5


# -- DenoiserModule ------------------------------------------------------------------------------
def test_training_denoises_better_than_the_noisy_input(trained):
    """After 60 steps on 64 images the denoiser beats its input at σ = 0.2 by more than 1 dB."""
    model = trained["model"].eval()
    truth = torch.stack([trained["data"].dataset("test")[i]["ground_truth"] for i in range(8)])
    noisy = truth + 0.2 * torch.randn(truth.shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        denoised = model(noisy, 0.2)
    assert float(psnr(denoised, truth).mean()) > float(psnr(noisy, truth).mean()) + 1.0


def test_checkpoint_reads_with_weights_only_and_rebuilds_the_network(trained):
    checkpoint = torch.load(trained["path"], weights_only=True, map_location="cpu")
    hparams = checkpoint["hyper_parameters"]
    assert hparams["network"] == trained["network"] and hparams["sigma_max"] == 0.2
    net, info = load_denoiser(trained["path"])
    assert (info.network, info.sigma_min, info.sigma_max, info.in_channels) == (trained["network"], 0.02, 0.2, 1)
    for key, value in net.state_dict().items():
        assert torch.equal(value, checkpoint["state_dict"][f"net.{key}"])
    x = torch.rand(2, 1, 24, 24)  # another size than it trained on: fully convolutional
    assert torch.allclose(net(x, 0.1), trained["model"].net.eval()(x, 0.1), atol=1e-6)
    assert not any(p.requires_grad for p in net.parameters())


def test_validation_is_denoising_at_a_fixed_seeded_level(trained):
    model, data = trained["model"], trained["data"]
    metrics = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False).validate(model, data, verbose=False)[0]
    assert {"val/psnr", "val/ssim", "val/noisy_psnr"} <= set(metrics)
    assert model.method_name == f"Denoiser {trained['network']} σ=0.1"  # its row in a test's results table
    assert math.isfinite(metrics["val/psnr"]) and 15 < metrics["val/noisy_psnr"] < 25  # σ = 0.1 on [0, 1] images
    batch = next(iter(data._loader("val")))
    with torch.no_grad():
        assert torch.equal(model.reconstruct(batch), model.reconstruct(batch))  # the same noise every time
    with pytest.raises(ValueError, match="denoises ground-truth images"):
        model.reconstruct({"measurement": batch["measurement"]})


def test_denoiser_module_rejects_bad_settings_in_one_line():
    geometry = ParallelBeam2D((SIZE, SIZE), num_angles=4).to_dict()
    for settings, message in ((dict(sigma_min=0.3, sigma_max=0.2), "sigma_min <= sigma_max"),
                              (dict(sigma_max=0.0), "sigma_max > 0"),
                              (dict(val_sigma=0.5), "val_sigma 0.5 is outside the training range"),
                              (dict(sigma_max=float("nan")), "sigma_max must be a finite number")):
        with pytest.raises(ValueError, match=message):
            DenoiserModule(forward_model=geometry, **settings)
    with pytest.raises(ValueError, match=r"works on images \(C, H, W\); this forward model's domain is \(40,\)"):
        DenoiserModule(forward_model=SparseCodingProblem(m=20, n=40).to_dict())
    with pytest.raises(ValueError, match="at least 4x4 pixels; the forward model's are 2x2"):
        DenoiserModule(forward_model=ParallelBeam2D((2, 2), num_angles=4).to_dict(), channels=(4, 8, 16))
