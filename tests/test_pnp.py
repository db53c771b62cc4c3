"""Plug-and-play priors: the solvers (PnP-HQS, PnP-ADMM, PnP-PGD, RED) on any LinearOperator, the
PlugAndPlay method with a DenoiserModule checkpoint (read with weights_only=True), its one-line
errors, `train.py test` from the committed config, and deep unfolding (UnfoldedHQS). Tiny sizes."""
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_recon.cli import cli_main
from lightning_recon.data import SimulatedCTDataModule
from lightning_recon.methods import DenoiserModule, PlugAndPlay, UnfoldedHQS
from lightning_recon.metrics import psnr
from lightning_recon.physics import ParallelBeam2D, RayTransform, SparseCodingProblem
from lightning_recon.results import read_results_table
from lightning_recon.solvers import pnp, pnp_hqs, sigma_schedule

SIZE = 16
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALGORITHMS = ("hqs", "admm", "pgd", "red")

pytestmark = pytest.mark.usefixtures("one_thread")


def datamodule(size=SIZE, **overrides):
    settings = dict(preset="ellipses-small", image_size=size, num_angles=8, train_length=64, val_length=4,
                    test_length=4, batch_size=8, num_workers=0)
    settings.update(overrides)
    return SimulatedCTDataModule(**settings)


def stacked(data, split, count, keys=("ground_truth", "measurement", "fbp")):
    dataset = data.dataset(split)
    return {key: torch.stack([torch.as_tensor(dataset[i][key]) for i in range(count)]) for key in keys}


def smoothing(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A classical denoiser: Gaussian smoothing of width 10 σ pixels (replicated border)."""
    width = max(10 * float(sigma.mean()), 1e-3)
    taps = torch.arange(-3, 4, dtype=x.dtype)
    kernel = torch.exp(-taps ** 2 / (2 * width ** 2))
    kernel = kernel / kernel.sum()
    x = F.conv2d(F.pad(x, (3, 3, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, 3, 3), mode="replicate"), kernel.view(1, 1, -1, 1))


@pytest.fixture(scope="module")
def denoiser(tmp_path_factory):
    """A DRUNet DenoiserModule fitted 60 steps on 16² ground truths (σ ∈ [0.02, 0.2]): its checkpoint."""
    torch.manual_seed(0)
    data = datamodule()
    model = DenoiserModule(network="drunet", channels=(8, 16), blocks=1, forward_model=data.forward_model_dict,
                           sigma_min=0.02, sigma_max=0.2, val_sigma=0.1, lr=3e-3, scheduler="none", results_dir=None)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=60, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0)
    trainer.fit(model, data)
    path = tmp_path_factory.mktemp("denoiser") / "drunet.ckpt"
    trainer.save_checkpoint(path)
    return str(path)


# -- the schedule --------------------------------------------------------------------------------
def test_sigma_schedule_decreases_geometrically_between_its_ends():
    levels = sigma_schedule(0.2, 0.02, 5)
    assert levels[0] == pytest.approx(0.2) and levels[-1] == pytest.approx(0.02)
    ratios = [b / a for a, b in zip(levels, levels[1:])]
    assert all(r == pytest.approx(ratios[0]) for r in ratios) and ratios[0] < 1
    assert sigma_schedule(0.1, 0.1, 3) == pytest.approx([0.1] * 3) and sigma_schedule(0.2, 0.05, 1) == [0.05]
    with pytest.raises(ValueError, match="iterations must be an integer >= 1"):
        sigma_schedule(0.2, 0.02, 0)
    with pytest.raises(ValueError, match="sigma end must be a finite number > 0"):
        sigma_schedule(0.2, 0.0, 4)


# -- the solvers, exactly: a quadratic prior has closed forms ------------------------------------
@pytest.fixture(scope="module")
def quadratic_case():
    """An 8² CT problem in float64 and its matrix, for the denoiser of R(x) = μ/2 ‖x‖²:
    ``D(v, σ) = prox_{σ²R}(v) = v / (1 + σ² μ)``."""
    torch.manual_seed(0)
    operator = RayTransform(ParallelBeam2D((8, 8), num_angles=6), backend="matrix")
    truth = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    y = operator(truth) + 0.05 * torch.randn(2, *operator.range_shape, dtype=torch.float64)
    matrix = torch.stack([operator(e.view(1, 1, 8, 8))[0].flatten() for e in torch.eye(64, dtype=torch.float64)], 1)
    return operator, y, matrix


def tikhonov(matrix, y, weight):
    """``argmin ½‖Ax − y‖² + weight/2 ‖x‖²`` by a dense solve."""
    normal = matrix.T @ matrix + weight * torch.eye(matrix.shape[1], dtype=matrix.dtype)
    return torch.linalg.solve(normal, matrix.T @ y.flatten(1).T).T.view(len(y), 1, 8, 8)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_solvers_reach_the_closed_form_of_a_quadratic_prior(quadratic_case, algorithm):
    """With R = μ/2‖x‖², λ = 0.5 (units of ½‖Ax − y‖²) and a constant σ = 0.3: ADMM solves
    ½‖Ax − y‖² + λR exactly; HQS's fixed point is the Tikhonov solution with μ' = μ/(1 + σ²μ),
    denoised once; RED's gradient λ(x − D(x))/σ² is λμ'x; PGD with step η solves it with
    λ = σ²‖A‖²/η. Checks the units of λ, the normalisation by ‖A‖ and the CG steps."""
    operator, y, matrix = quadratic_case
    mu, sigma, weight = 2.0, 0.3, 0.5
    relaxed = mu / (1 + sigma ** 2 * mu)

    def denoise(v, s):
        return v / (1 + s.view(-1, 1, 1, 1) ** 2 * mu)

    norm = operator.operator_norm()
    step = None
    if algorithm == "pgd":
        weight = 5.0
        step = sigma ** 2 * norm ** 2 / weight  # 0.95 of 1/‖A‖²
    expected = {"admm": tikhonov(matrix, y, weight * mu), "pgd": tikhonov(matrix, y, weight * mu),
                "hqs": tikhonov(matrix, y, weight * relaxed) / (1 + sigma ** 2 * mu),
                "red": tikhonov(matrix, y, weight * relaxed)}[algorithm]
    x = pnp(algorithm, y, operator, denoise, [sigma] * 300, weight=weight, step=step, cg_iterations=10)
    assert float((x - expected).norm() / expected.norm()) < (1e-3 if algorithm == "red" else 1e-8)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_smoothing_denoiser_beats_fbp_on_a_tiny_ct_problem(algorithm):
    data = datamodule(size=32, num_angles=10)
    batch = stacked(data, "test", 4)
    operator = RayTransform(data.geometry)
    x = pnp(algorithm, batch["measurement"], operator, smoothing, sigma_schedule(0.1, 0.03, 20), weight=0.01,
            x0=batch["fbp"], nonnegative=True)
    gain = float(psnr(x, batch["ground_truth"]).mean() - psnr(batch["fbp"], batch["ground_truth"]).mean())
    assert gain > (0.5 if algorithm == "pgd" else 1.5), f"{algorithm}: {gain:.2f} dB over FBP"


def test_hqs_is_differentiable_in_its_levels_weights_and_denoiser():
    """Deep unfolding trains through the solver: gradients reach σ_k, λ_k and the network."""
    torch.manual_seed(0)
    operator = RayTransform(ParallelBeam2D((8, 8), num_angles=4))
    y = operator(torch.rand(2, 1, 8, 8))
    scale = torch.nn.Parameter(torch.tensor(0.5))
    sigmas = torch.tensor([0.1, 0.05], requires_grad=True)
    weights = torch.tensor([0.01, 0.02], requires_grad=True)
    x = pnp_hqs(y, operator, lambda v, s: scale * v, list(sigmas), list(weights), cg_iterations=3)
    x.square().sum().backward()
    for tensor in (scale, sigmas, weights):
        assert tensor.grad is not None and bool(torch.isfinite(tensor.grad).all())
        assert float(tensor.grad.abs().sum()) > 0


def test_solvers_reject_bad_arguments_in_one_line():
    operator = RayTransform(ParallelBeam2D((8, 8), num_angles=4))
    y = operator(torch.rand(1, 1, 8, 8))
    identity = lambda v, s: v  # noqa: E731
    cases = [(dict(y=torch.zeros(1, 1, 3, 3)), r"y must be measurements \(B, 1, 4, "),
             (dict(sigmas=0.1), "sigmas must be a non-empty sequence"),
             (dict(sigmas=[0.1, -0.1]), r"sigmas\[1\] must be finite and > 0"),
             (dict(weight=0.0), "weight must be finite and > 0"),
             (dict(weight=[0.1]), r"weight must be one number or one per iteration \(2\), got 1"),
             (dict(cg_iterations=0), "cg_iterations must be an integer >= 1"),
             (dict(x0=torch.zeros(1, 1, 4, 4)), r"x0 must be of shape \(1, 1, 8, 8\)"),
             (dict(algorithm="fista"), "algorithm must be one of")]
    for change, message in cases:
        arguments = dict(algorithm="hqs", y=y, operator=operator, denoise=identity, sigmas=[0.1, 0.05], weight=0.01)
        arguments.update(change)
        with pytest.raises(ValueError, match=message):
            pnp(**arguments)
    with pytest.raises(ValueError, match="y contains NaN"):
        pnp("red", torch.full_like(y, float("nan")), operator, identity, [0.1], weight=0.1)


# -- the PlugAndPlay method ------------------------------------------------------------------------
def test_checkpoint_loads_weights_only_and_every_algorithm_beats_fbp(denoiser):
    """The learned prior (60 training steps) improves on the FBP it starts from at 8 angles, 16²."""
    checkpoint = torch.load(denoiser, weights_only=True, map_location="cpu")
    assert checkpoint["hyper_parameters"]["network"] == "drunet"
    data = datamodule()
    batch = stacked(data, "test", 4)
    fbp_psnr = float(psnr(batch["fbp"], batch["ground_truth"]).mean())
    for algorithm in ALGORITHMS:
        model = PlugAndPlay(denoiser, algorithm=algorithm, forward_model=data.forward_model_dict, iterations=10,
                            sigma_start=0.1, sigma_end=0.02, weight=0.01, tune=False, results_dir=None)
        assert model.method_name == f"PnP-{algorithm.upper()} (drunet)"
        for key, value in model.denoiser_net.state_dict().items():
            assert torch.equal(value, checkpoint["state_dict"][f"net.{key}"])
        gain = float(psnr(model.reconstruct(batch), batch["ground_truth"]).mean()) - fbp_psnr
        assert gain > (1.5 if algorithm in ("hqs", "admm") else 0.5), f"{algorithm}: {gain:.2f} dB over FBP"


def test_tuned_on_validation_and_tested_on_two_geometries_with_one_denoiser(denoiser, tmp_path):
    rows = {}
    for name, geometry in (("8 angles", ParallelBeam2D((SIZE, SIZE), num_angles=8)),
                           ("60 degrees", ParallelBeam2D((SIZE, SIZE), num_angles=6, angle_range=(0.0, math.pi / 3)))):
        data = datamodule(geometry=geometry.to_dict())
        model = PlugAndPlay(denoiser, forward_model=data.forward_model_dict, iterations=6, sigma_start=0.1, weights=[0.001, 0.1],
                            sigma_ends=[0.02, 0.05], tune_samples=2, results_dir=str(tmp_path / name))
        L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                  enable_model_summary=False).test(model, data, verbose=False)
        assert model.hparams.weight in (0.001, 0.1) and model.hparams.sigma_end in (0.02, 0.05)
        rows[name] = read_results_table(tmp_path / name)["PnP-HQS (drunet)"]
    assert all(row["images"] == "4" and math.isfinite(float(row["psnr"])) for row in rows.values())
    assert model.operator.range_shape[1] == 6  # the limited-angle operator, from the data


def test_train_py_test_runs_the_committed_config(denoiser, tmp_path):
    results = tmp_path / "results"
    cli_main(["test", "--config", str(CONFIGS / "data/ellipses-small.yaml"),
              "--config", str(CONFIGS / "model/pnp.yaml"), "--config", str(CONFIGS / "trainer/cpu.yaml"),
              "--trainer.logger=false", "--trainer.enable_progress_bar=false",
              f"--trainer.default_root_dir={tmp_path}", "--data.init_args.image_size=16",
              "--data.init_args.num_angles=8", "--data.init_args.val_length=2", "--data.init_args.test_length=2",
              "--data.init_args.num_workers=0", f"--model.init_args.denoiser={denoiser}",
              "--model.init_args.iterations=4", "--model.init_args.weights=[0.01]",
              "--model.init_args.sigma_ends=[0.02, 0.04]", "--model.init_args.tune_samples=2",
              f"--model.init_args.results_dir={results}"])
    row = read_results_table(results)["PnP-HQS (drunet)"]
    assert row["images"] == "2" and math.isfinite(float(row["psnr"]))


def test_bad_denoisers_levels_and_geometries_give_one_line_errors(denoiser, tmp_path):
    geometry = ParallelBeam2D((SIZE, SIZE), num_angles=8).to_dict()
    other = tmp_path / "learned_gd.ckpt"
    torch.save({"state_dict": {"net.steps.0.update.0.weight": torch.zeros(1)},
                "hyper_parameters": {"_class_path": "lightning_recon.methods.LearnedGD", "n_iter": 5}}, other)
    untrained = DenoiserModule(network="lifting", levels=3, hidden=4, denoiser_hidden=4, forward_model=geometry)
    lifting = tmp_path / "lifting.ckpt"  # 3 levels: images of at least 8²
    torch.save({"state_dict": untrained.state_dict(), "hyper_parameters": dict(untrained.hparams)}, lifting)
    cases = [
        (dict(denoiser=str(other)), "holds LearnedGD, not a DenoiserModule checkpoint"),
        (dict(sigma_start=0.5), r"sigma_start 0.5 is outside the noise range .* \[0.02, 0.2\]"),
        (dict(sigma_end=0.01, tune=False), r"sigma_end 0.01 is outside the noise range"),
        (dict(sigma_ends=[0.005, 0.05]), r"sigma_ends entry 0.005 is outside the noise range"),
        (dict(forward_model=SparseCodingProblem(m=20, n=40).to_dict()),
         r"takes images \(1, H, W\); this forward model's domain is \(40,\)"),
        (dict(forward_model=SparseCodingProblem(dictionary="convolutional", num_filters=3, image_size=8).to_dict()),
         r"takes images \(1, H, W\); this forward model's domain is \(3, 8, 8\)"),
        (dict(denoiser=str(lifting), forward_model=ParallelBeam2D((4, 4), num_angles=4).to_dict()),
         r"\(lifting\) takes images of at least 8x8 pixels; this forward model's are 4x4"),
        (dict(algorithm="ista"), "algorithm must be one of"),
        (dict(sigma_start=0.05, sigma_end=0.1), "the noise levels decrease: sigma_end 0.1 > sigma_start 0.05"),
        (dict(weights=[0.01, -1.0]), "every entry of weights must be a finite number > 0"),
    ]
    for change, message in cases:
        settings = dict(denoiser=denoiser, forward_model=geometry)
        settings.update(change)
        with pytest.raises(ValueError, match=message) as raised:
            PlugAndPlay(**settings)
        assert "\n" not in str(raised.value)
    missing = PlugAndPlay(str(tmp_path / "none.ckpt"), forward_model=geometry)  # configs parse before the denoiser exists
    with pytest.raises(ValueError, match="none.ckpt does not exist"):
        missing.setup("test")
    with pytest.raises(RuntimeError, match="nothing to train"):
        PlugAndPlay(denoiser, forward_model=geometry, sigma_ends=[0.02]).configure_optimizers()


# -- deep unfolding ------------------------------------------------------------------------------
def test_unfolded_hqs_starts_from_the_pretrained_denoiser_and_trains_end_to_end(denoiser, tmp_path):
    torch.manual_seed(0)
    data = datamodule()
    model = UnfoldedHQS(n_iter=3, pretrained=denoiser, network="lifting", forward_model=data.forward_model_dict,
                        sigma_start=0.1, sigma_end=0.03, lr=1e-3, scheduler="none", results_dir=None)
    assert model.hparams.network == "drunet" and list(model.hparams.channels) == [8, 16]  # the checkpoint's
    saved = torch.load(denoiser, weights_only=True, map_location="cpu")["state_dict"]
    for key, value in model.net.state_dict().items():
        assert torch.equal(value, saved[f"net.{key}"])
    assert torch.allclose(model.sigmas(), torch.tensor(sigma_schedule(0.1, 0.03, 3)), rtol=1e-5)
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0)
    trainer.fit(model, data)
    moved = {name for name, p in model.named_parameters() if not torch.equal(p, start[name])}
    assert {"sigma_logits", "log_weights"} <= moved and any(name.startswith("net.") for name in moved)
    assert bool(((model.sigmas() > 0) & (model.sigmas() <= 0.2)).all())
    path = tmp_path / "unfolded.ckpt"
    trainer.save_checkpoint(path)
    hparams = torch.load(path, weights_only=True, map_location="cpu")["hyper_parameters"]
    reloaded = UnfoldedHQS(**{**hparams, "pretrained": None})  # the architecture is recorded
    batch = stacked(data, "test", 2)
    assert reloaded.reconstruct(batch).shape == batch["ground_truth"].shape
    with pytest.raises(ValueError, match="outside the denoiser's noise range"):
        UnfoldedHQS(pretrained=denoiser, forward_model=data.forward_model_dict, sigma_start=0.3)


def test_finetune_py_reconstructs_one_measurement_with_a_denoiser_prior(denoiser, tmp_path, capsys):
    """``finetune.py sinogram.npy --prior denoiser:CKPT``: plug-and-play on a user's file, better
    than its FBP against the reference; bad priors and DIP options are one line each."""
    import json

    from lightning_recon.finetune import main as finetune

    truth = datamodule().dataset("test")[0]["ground_truth"][None]
    angles = [math.pi * k / 8 for k in range(8)]  # an .npz with its angles (radians), a pixel per detector pixel
    geometry = ParallelBeam2D((SIZE, SIZE), angles=angles, num_detector_pixels=SIZE, detector_extent=float(SIZE))
    sinogram = RayTransform(geometry)(truth)[0, 0]
    sinogram = sinogram + 0.02 * sinogram.abs().max() * torch.randn(sinogram.shape, generator=torch.Generator().manual_seed(0))
    np.savez(tmp_path / "sinogram.npz", sinogram=sinogram.numpy(), angles=np.array(angles))
    np.save(tmp_path / "reference.npy", truth[0, 0].numpy())
    common = [str(tmp_path / "sinogram.npz"), "--reference", str(tmp_path / "reference.npy"),  # one pixel a detector pixel
              "--logger", "none", "--accelerator", "cpu"]
    summary = finetune([*common, "--prior", f"denoiser:{denoiser}", "--out", str(tmp_path / "pnp")])
    assert np.load(tmp_path / "pnp" / "recon.npy").shape == (SIZE, SIZE)
    assert (tmp_path / "pnp" / "preview.png").exists()
    assert summary["recon_psnr"] > summary["fbp_psnr"] + 0.5
    assert json.loads((tmp_path / "pnp" / "summary.json").read_text())["algorithm"] == "admm"
    for bad, message in ((["--prior", "denoiser:ellipses-small-learned-gd"], "not a DenoiserModule checkpoint"),
                         (["--prior", "denoiser"], "--prior must be 'dip' or 'denoiser:CHECKPOINT'"),
                         (["--prior", f"denoiser:{denoiser}", "--tv-weight", "0.1"], "does not use --tv-weight")):
        with pytest.raises(SystemExit) as ended:
            finetune([*common, *bad, "--out", str(tmp_path / "bad")])
        error = capsys.readouterr().err.strip().splitlines()
        assert ended.value.code == 2 and len(error) == 1 and message in error[0], error
        assert not (tmp_path / "bad").exists()
