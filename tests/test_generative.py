"""Generative regularisers: VAE / GAN priors trained on images only, then range and soft
reconstruction for any operator with the same generator (tiny images, few steps)."""
import math

import lightning as L
import pytest
import torch

from lightning_recon.data import SimulatedCTDataModule
from lightning_recon.methods import GANPrior, GenerativeRegulariser, VAEPrior
from lightning_recon.methods.generative_regulariser import load_prior
from lightning_recon.solvers import generative_reconstruction
from lightning_recon.nets import ImageDecoder, ImageEncoder
from lightning_recon.physics import ParallelBeam2D, RayTransform

SIZE = 16
NET = dict(latent_dim=8, generator_channels=(16, 8, 4))
FULL = ParallelBeam2D((SIZE, SIZE), num_angles=8).to_dict()
LIMITED = ParallelBeam2D((SIZE, SIZE), num_angles=5, angle_range=(0.0, math.pi / 3)).to_dict()


pytestmark = pytest.mark.usefixtures("one_thread")


def datamodule(geometry=None, **overrides):
    settings = dict(preset="ellipses-small", image_size=SIZE, num_angles=8, train_length=32, val_length=4,
                    test_length=4, batch_size=8, num_workers=0)
    settings.update(overrides)
    return SimulatedCTDataModule(geometry=geometry, **settings)


def trainer(steps, **kwargs):
    return L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     limit_val_batches=0, **kwargs)


@pytest.fixture(scope="module")
def vae_checkpoint(tmp_path_factory):
    """A VAE prior trained 30 steps on 16² phantoms, and its checkpoint path."""
    torch.manual_seed(0)
    data = datamodule()
    model = VAEPrior(forward_model=data.forward_model_dict, likelihood_std=0.1, lr=3e-3, scheduler="none", results_dir=None, **NET)
    images = torch.stack([data.dataset("train")[i]["ground_truth"] for i in range(16)])
    before = model_nelbo(model, images)
    fit = trainer(30)
    fit.fit(model, data)
    path = tmp_path_factory.mktemp("prior") / "vae.ckpt"
    fit.save_checkpoint(path)
    return {"path": str(path), "before": before, "after": model_nelbo(model, images), "model": model}


def model_nelbo(model, images):
    with torch.no_grad():
        reconstruction, kl = model.elbo_terms(images, generator=torch.Generator().manual_seed(1))
    return float((reconstruction + kl).mean())


# -- nets ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [64, 128])
def test_decoder_and_encoder_shapes_at_64_and_128(size):
    decoder, encoder = ImageDecoder(32, (size, size)), ImageEncoder(32, (size, size))
    x = decoder(torch.randn(2, 32))
    assert x.shape == (2, 1, size, size)
    mean, log_variance = encoder(x)
    assert mean.shape == log_variance.shape == (2, 32)


def test_nets_reject_bad_shapes():
    with pytest.raises(ValueError, match="divisible"):
        ImageDecoder(8, (20, 20), (16, 8, 4, 2))
    with pytest.raises(ValueError, match="z of shape"):
        ImageDecoder(8, (16, 16), (16, 8))(torch.randn(2, 9))
    with pytest.raises(ValueError, match="images of shape"):
        ImageEncoder(8, (16, 16), (4, 8))(torch.randn(2, 1, 8, 8))


# -- priors --------------------------------------------------------------------------------------
def test_vae_training_decreases_the_negative_elbo(vae_checkpoint):
    assert vae_checkpoint["after"] < 0.5 * vae_checkpoint["before"]


def test_gan_prior_trains_a_few_steps_on_images_only():
    torch.manual_seed(0)
    data = datamodule()
    model = GANPrior(forward_model=data.forward_model_dict, critic_channels=(4, 8), n_critic=2, results_dir=None, **NET)
    generator_before = [p.detach().clone() for p in model.generator.parameters()]
    critic_before = [p.detach().clone() for p in model.critic.parameters()]
    fit = trainer(6)
    fit.fit(model, data)
    assert fit.global_step == 6  # 4 critic + 2 generator updates
    assert any(not torch.equal(a, b) for a, b in zip(generator_before, model.generator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(critic_before, model.critic.parameters()))
    assert all(math.isfinite(float(v)) for k, v in fit.callback_metrics.items() if k.startswith("train/"))
    assert model.sample(3, seed=0).shape == (3, 1, SIZE, SIZE)


def test_prior_validation_is_a_range_reconstruction_in_the_data_geometry(vae_checkpoint):
    model = vae_checkpoint["model"]
    data = datamodule()
    batch = next(iter(data._loader("val")))
    metrics = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False).validate(model, data, verbose=False)[0]
    assert {"val/psnr", "val/ssim", "val/autoencoder_psnr"} <= set(metrics)
    assert model.reconstruct(batch).shape == batch["ground_truth"].shape


# -- the reconstruction --------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["range", "soft"])
def test_range_and_soft_reduce_the_misfit_on_two_geometries_with_one_generator(vae_checkpoint, mode):
    generator, _, _ = load_prior(vae_checkpoint["path"])
    truth = torch.stack([datamodule().dataset("test")[i]["ground_truth"] for i in range(3)])
    for geometry in (FULL, LIMITED):
        operator = RayTransform(ParallelBeam2D(**{k: v for k, v in geometry.items() if k != "type"}))
        y = operator(truth)
        with torch.no_grad():
            start = float(((operator(generator(torch.zeros(3, 8))) - y) ** 2).flatten(1).sum(1).mean())
        out = generative_reconstruction(generator, operator, y, mode=mode, mu=1e-3, lam=1.0, iterations=40,
                                        restarts=2, lr=0.1)
        assert out["x"].shape == truth.shape and out["z"].shape == (3, 8)
        # range is held to the range of a 30-step generator; soft leaves it
        assert float(out["misfit"].mean()) < (0.9 if mode == "range" else 0.5) * start
        assert not out["x"].requires_grad


def test_soft_with_huge_lambda_approaches_range():
    """λ → ∞ with μ_soft = μ_range / λ: x ≈ G(z) and the z-steps are range's."""
    torch.manual_seed(0)
    generator = ImageDecoder(8, (SIZE, SIZE), (16, 8, 4)).double().eval().requires_grad_(False)
    operator = RayTransform(ParallelBeam2D((SIZE, SIZE), num_angles=8), backend="matrix")
    truth = torch.stack([datamodule().dataset("test")[i]["ground_truth"] for i in range(2)]).double()
    y = operator(truth)
    common = dict(iterations=20, restarts=1, lr=0.05)
    ranged = generative_reconstruction(generator, operator, y, mode="range", mu=0.1, **common)
    gaps = []
    for lam in (1e4, 1e8):
        soft = generative_reconstruction(generator, operator, y, mode="soft", mu=0.1 / lam, lam=lam, **common)
        gaps.append(float((soft["x"] - ranged["x"]).norm() / ranged["x"].norm()))
    assert gaps[1] < 1e-3 and gaps[1] < 0.1 * gaps[0]
    assert torch.allclose(soft["z"], ranged["z"], atol=1e-3)
    moderate = generative_reconstruction(generator, operator, y, mode="soft", mu=0.1, lam=1.0, **common)
    assert float(moderate["misfit"].mean()) < float(ranged["misfit"].mean())  # off the range fits better


def test_restarts_keep_the_lowest_objective_per_sample():
    torch.manual_seed(0)
    generator = ImageDecoder(8, (SIZE, SIZE), (16, 8, 4)).eval().requires_grad_(False)
    operator = RayTransform(ParallelBeam2D((SIZE, SIZE), num_angles=8))
    y = operator(torch.rand(3, 1, SIZE, SIZE))
    one = generative_reconstruction(generator, operator, y, iterations=10, restarts=1)
    three = generative_reconstruction(generator, operator, y, iterations=10, restarts=3)
    # restart 0 of both is the same start: equal up to float32 rounding of objectives ~2.5e4 (a ULP is 2e-3)
    assert bool((three["objective"] <= one["objective"] * (1 + 1e-6) + 1e-4).all())


# -- the regulariser module ----------------------------------------------------------------------
def test_checkpoint_loads_weights_only_and_the_same_generator_serves_every_geometry(vae_checkpoint, tmp_path):
    checkpoint = torch.load(vae_checkpoint["path"], weights_only=True, map_location="cpu")
    assert checkpoint["hyper_parameters"]["latent_dim"] == 8
    rows = {}
    for name, geometry in (("8 angles", FULL), ("60 degrees", LIMITED)):
        data = datamodule(geometry=geometry)
        model = GenerativeRegulariser(vae_checkpoint["path"], mode="soft", forward_model=data.forward_model_dict, iterations=15,
                                      restarts=1, lam=1.0, tune=True, lams=[0.3, 3.0], tune_samples=2,
                                      results_dir=str(tmp_path / name))
        assert model.method_name == "VAE soft"
        for key, value in model.generator.state_dict().items():
            assert torch.equal(value, checkpoint["state_dict"][f"generator.{key}"])
        L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                  enable_model_summary=False).test(model, data, verbose=False)
        assert model.hparams.lam in (0.3, 3.0)  # tuned on validation samples
        rows[name] = model.test_results
        assert (tmp_path / name / "results.md").exists()
    assert all(row["images"] == 4 and math.isfinite(row["psnr"]) for row in rows.values())
    assert model.operator.range_shape[1] == 5  # the limited-angle operator, from the data


def test_bad_arguments_give_clear_errors(vae_checkpoint, tmp_path):
    geometry = FULL
    with pytest.raises(ValueError, match="mode must be one of"):
        GenerativeRegulariser(vae_checkpoint["path"], mode="both", forward_model=geometry)
    with pytest.raises(ValueError, match="lam must be > 0"):
        GenerativeRegulariser(vae_checkpoint["path"], mode="soft", lam=0.0, forward_model=geometry)
    with pytest.raises(ValueError, match="restarts must be an integer >= 1"):
        GenerativeRegulariser(vae_checkpoint["path"], restarts=0, forward_model=geometry)
    with pytest.raises(ValueError, match="mu must be >= 0"):
        GenerativeRegulariser(vae_checkpoint["path"], mu=-1.0, forward_model=geometry)
    with pytest.raises(ValueError, match="image size|generates images 16x16"):
        GenerativeRegulariser(vae_checkpoint["path"], forward_model=ParallelBeam2D((32, 32), num_angles=8).to_dict())
    missing = GenerativeRegulariser(str(tmp_path / "none.ckpt"), forward_model=geometry)  # configs parse before training
    with pytest.raises(ValueError, match="not found"):
        missing.setup("test")
    torch.save({"state_dict": {"net.weight": torch.zeros(1)}, "hyper_parameters": {}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="no generative prior"):
        GenerativeRegulariser(str(tmp_path / "other.ckpt"), forward_model=geometry)
    with pytest.raises(RuntimeError, match="nothing to train"):
        GenerativeRegulariser(vae_checkpoint["path"], forward_model=geometry).configure_optimizers()
    with pytest.raises(ValueError, match="likelihood_std"):
        VAEPrior(forward_model=geometry, likelihood_std=0.0, **NET)
    with pytest.raises(ValueError, match="n_critic"):
        GANPrior(forward_model=geometry, n_critic=0, **NET)
