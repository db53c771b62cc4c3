"""Training without ground truth: the angle splits and sub-geometries of Noise2Inverse, the
selectable losses of FBPUNet / LearnedGD / LearnedPD (noise2inverse, equivariant) and where they are
exactly zero, the training batches without ground truth, the low-dose preset and the one-line errors.
Tiny sizes (≤ 32², a few steps)."""
import math

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from lightning_recon.data import PRESETS, SimulatedCTDataModule
from lightning_recon.methods import FBPUNet, LearnedGD, LearnedPD, LearnedReconstructionModule
from lightning_recon.methods.self_supervised import noise2inverse_sets
from lightning_recon.physics import (FBP, FanBeam2D, LightFieldGeometry, ParallelBeam2D, RayTransform,
                                     SparseCodingProblem, angle_splits, split_geometries, sub_geometry)
from lightning_recon.physics.resample import rotate_images, shift_images

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)` but the `self.trainer`")]

SIZE = 24
GEOMETRY = ParallelBeam2D((SIZE, SIZE), num_angles=40)
NETWORKS = {FBPUNet: dict(channels=[4, 8]), LearnedGD: dict(n_iter=2, hidden_channels=4),
            LearnedPD: dict(n_iter=2, hidden_channels=4)}
LOSS_SETTINGS = {"noise2inverse": dict(loss="noise2inverse", n2i_splits=4),
                 "equivariant": dict(loss="equivariant", ei_rotations=2, ei_weight=10.0)}


def model(cls=FBPUNet, geometry=GEOMETRY, **settings):
    return cls(forward_model=geometry.to_dict(), results_dir=None, **NETWORKS[cls], **settings)


def sinograms(geometry=GEOMETRY, count=2, seed=0):
    """Noiseless sinograms of smooth random images (and the images)."""
    generator = torch.Generator().manual_seed(seed)
    images = nn.functional.avg_pool2d(torch.rand(count, 1, *geometry.image_shape, generator=generator), 5, 1, 2)
    return RayTransform(geometry)(images), images


class NoGroundTruth(dict):
    """A batch whose ``ground_truth`` cannot be read (only its absence can be asked)."""

    def __getitem__(self, key):
        if key == "ground_truth":
            raise AssertionError("the training step read the ground truth")
        return super().__getitem__(key)

    def get(self, key, default=None):
        if key == "ground_truth":
            raise AssertionError("the training step read the ground truth")
        return super().get(key, default)


def datamodule(**overrides):
    settings = dict(preset="ellipses-small-lowdose", image_size=SIZE, num_angles=48, train_length=16, val_length=4,
                    test_length=4, batch_size=8, num_workers=0, train_ground_truth=False, cache_samples=True,
                    fbp_filter="Ram-Lak", fbp_frequency_scaling=1.0)
    settings.update(overrides)
    return SimulatedCTDataModule(**settings)


def tiny_trainer(steps: int, **settings) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     **({"limit_val_batches": 0} | settings))


# -- angle splits and sub-geometries --------------------------------------------------------------
@pytest.mark.parametrize("num_angles", [2, 7, 30, 360])
@pytest.mark.parametrize("splits", [2, 4])
def test_angle_splits_partition_the_angles_by_interleaving(num_angles, splits):
    if splits > num_angles:
        return
    parts = angle_splits(num_angles, splits)
    assert len(parts) == splits
    assert sorted(np.concatenate(parts).tolist()) == list(range(num_angles))  # disjoint and complete
    for j, part in enumerate(parts):
        assert part.tolist() == list(range(j, num_angles, splits))
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("geometry", [
    ParallelBeam2D((SIZE, SIZE), num_angles=40),
    ParallelBeam2D((SIZE, SIZE), num_angles=20, angle_step=3),  # every 3rd angle of a 60-angle grid
    FanBeam2D((SIZE, SIZE), num_angles=40, source_radius=60.0, detector_radius=40.0),
], ids=["parallel", "parallel-angle-step", "fan"])
@pytest.mark.parametrize("splits", [2, 4])
def test_sub_fbp_of_a_split_matches_an_fbp_on_an_independently_built_sub_geometry(geometry, splits):
    """The module's split FBPs equal FBPs on geometries built here from the angles alone (uniform
    weights: the angle range is the subset's cells), and their mean is the full scan's FBP."""
    y, _ = sinograms(geometry)
    net = model(geometry=geometry, loss="noise2inverse", n2i_splits=splits)
    got = net.split_reconstructions(y)
    assert got.shape == (2, splits, SIZE, SIZE)
    lo, hi = geometry.angle_range
    cell = (hi - lo) / (geometry.num_angles * geometry.angle_step)
    measured = lo + cell * (np.arange(geometry.num_angles * geometry.angle_step) + 0.5)
    measured = measured[::geometry.angle_step]
    spacing = splits * cell * geometry.angle_step
    kind = type(geometry)
    extra = {} if kind is ParallelBeam2D else dict(source_radius=60.0, detector_radius=40.0)
    for j in range(splits):
        angles = measured[j::splits]
        own = kind((SIZE, SIZE), angles=tuple(angles), angle_range=(angles[0] - spacing / 2, angles[-1] + spacing / 2),
                   num_detector_pixels=geometry.num_detector_pixels, **extra)
        assert own.sinogram_shape == (len(angles), geometry.num_detector_pixels)
        expected = FBP(own)(y[:, :, j::splits])
        assert torch.allclose(got[:, j:j + 1], expected, atol=1e-5 * float(expected.abs().max()))
    full = FBP(geometry)(y)
    assert torch.allclose(got.mean(1, keepdim=True), full, atol=1e-5 * float(full.abs().max()))


def test_sub_geometries_keep_grid_and_detector_and_describe_themselves_in_numbers():
    parts = split_geometries(GEOMETRY.to_dict(), 4)
    for part, indices in zip(parts, angle_splits(40, 4)):
        assert part.image_shape == GEOMETRY.image_shape and part.num_detector_pixels == GEOMETRY.num_detector_pixels
        assert part.detector_length == GEOMETRY.detector_length
        np.testing.assert_allclose(part.angle_array, GEOMETRY.angle_array[indices])
        np.testing.assert_allclose(part.angle_weights, 4 * GEOMETRY.angle_weights[indices])
        assert ParallelBeam2D.from_dict(part.to_dict()) == part  # plain numbers, round trip
    explicit = ParallelBeam2D((SIZE, SIZE), angles=(0.1, 0.5, 0.7, 1.9, 2.5))
    assert sub_geometry(explicit, [1, 3]).angles == (0.5, 1.9)
    with pytest.raises(ValueError, match="distinct, increasing"):
        sub_geometry(GEOMETRY, [3, 1])


def test_the_strategies_pair_inputs_and_targets():
    assert noise2inverse_sets(4, "X:1") == [([1, 2, 3], [0]), ([0, 2, 3], [1]), ([0, 1, 3], [2]), ([0, 1, 2], [3])]
    assert noise2inverse_sets(2, "1:X") == [([0], [1]), ([1], [0])]


def test_subset_operators_of_learned_methods_measure_the_subset_rows():
    """LearnedGD / LearnedPD with noise2inverse read the measurement of J's angles through A_J."""
    y, images = sinograms()
    for strategy in ("X:1", "1:X"):
        net = model(LearnedGD, loss="noise2inverse", n2i_splits=4, n2i_strategy=strategy)
        for indices, operator in zip(net.subset_indices, net.subset_operators):
            assert torch.allclose(operator(images), y[:, :, indices], atol=1e-4 * float(y.abs().max()))
        assert len(net.subset_indices[0]) == (30 if strategy == "X:1" else 10)


# -- the losses: exact where they should be, finite everywhere ------------------------------------
def test_noise2inverse_with_the_identity_network_is_the_split_mse_and_infers_the_full_fbp():
    y, _ = sinograms()
    full = FBP(GEOMETRY)(y)
    splits = torch.cat([FBP(g)(y[:, :, i]) for g, i in zip(split_geometries(GEOMETRY, 4), angle_splits(40, 4))], 1)
    for strategy in ("X:1", "1:X"):
        net = model(loss="noise2inverse", n2i_splits=4, n2i_strategy=strategy)
        net.net = nn.Identity()
        expected = []
        for j in range(4):
            others = splits[:, [i for i in range(4) if i != j]].mean(1, keepdim=True)
            expected.append(nn.functional.mse_loss(others, splits[:, j:j + 1]))
        batch = {"measurement": y, "fbp": full}
        assert net.training_loss(batch).item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-4)
        # mean over J of the inputs: every split weighs the same, so the average is the full FBP
        assert torch.allclose(net.reconstruct(batch), full, atol=1e-5 * float(full.abs().max()))


class Spy(nn.Module):
    """The identity that keeps what it was given."""

    def forward(self, x):
        self.seen = x.detach().clone()
        return x


def test_noise2inverse_augmentation_turns_inputs_and_targets_alike_in_training_only():
    y, _ = sinograms()
    batch = {"measurement": y, "fbp": FBP(GEOMETRY)(y)}
    plain = model(loss="noise2inverse", n2i_splits=4)
    plain.net = Spy()
    expected = plain.training_loss(batch).item()
    inputs = plain.net.seen
    symmetries = [torch.rot90(inputs, k, dims=(-2, -1)).flip(-1) if flip else torch.rot90(inputs, k, dims=(-2, -1))
                  for k in range(4) for flip in (False, True)]
    augmented = model(loss="noise2inverse", n2i_splits=4, n2i_augment=True)
    augmented.net = Spy()
    torch.manual_seed(0)
    turned = 0
    for _ in range(8):
        # the same symmetry on inputs and targets: the identity's loss is unchanged
        assert augmented.training_loss(batch).item() == pytest.approx(expected, rel=1e-5)
        matches = [i for i, symmetry in enumerate(symmetries) if torch.equal(augmented.net.seen, symmetry)]
        assert len(matches) >= 1
        turned += matches[0] != 0
    assert turned >= 1  # some steps saw a turned or flipped batch
    torch.testing.assert_close(augmented.reconstruct(batch), plain.reconstruct(batch))  # inference: never turned
    assert torch.equal(augmented.net.seen, inputs)
    with pytest.raises(ValueError, match="^n2i_augment flips sub-reconstructions; LearnedGD reads the measured"):
        model(LearnedGD, loss="noise2inverse", n2i_splits=4, n2i_augment=True)


class PseudoInverse(LearnedReconstructionModule):
    """f(y) = A⁺ y exactly (a dense pseudo-inverse of an injective A): both equivariant terms vanish."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        shape = self.operator.domain_shape
        basis = torch.eye(math.prod(shape)).reshape(-1, *shape)
        matrix = self.operator(basis).reshape(len(basis), -1).T.double()
        self.rank = int(torch.linalg.matrix_rank(matrix))
        self.register_buffer("pinv", torch.linalg.pinv(matrix))
        self.scale = nn.Parameter(torch.ones(()))

    def apply_network(self, batch, operator=None, operator_scale=1.0):
        y = batch["measurement"].flatten(1).double()
        return (self.scale * (y @ self.pinv.T)).float().reshape(len(y), *self.operator.domain_shape)


def test_equivariant_loss_vanishes_for_an_exact_inverse_and_its_consistency_term_is_the_residual():
    geometry = ParallelBeam2D((8, 8), num_angles=20)
    inverse = PseudoInverse(forward_model=geometry.to_dict(), loss="equivariant", ei_rotations=3, ei_max_shift=2,
                            results_dir=None)
    assert inverse.rank == 64  # injective: A⁺A = I
    y, _ = sinograms(geometry)
    consistency, equivariance = inverse.equivariant_terms({"measurement": y})
    scale = float(y.pow(2).mean())
    assert consistency.item() < 1e-9 * scale and equivariance.item() < 1e-9
    with torch.no_grad():
        inverse.scale.zero_()  # f = 0: the consistency term is ‖y‖², the equivariance term 0
    consistency, equivariance = inverse.equivariant_terms({"measurement": y})
    assert consistency.item() == pytest.approx(scale, rel=1e-5) and equivariance.item() == 0.0


@pytest.mark.parametrize("cls", list(NETWORKS), ids=lambda c: c.__name__)
@pytest.mark.parametrize("loss", list(LOSS_SETTINGS))
def test_losses_are_finite_with_finite_gradients_and_never_read_the_ground_truth(cls, loss):
    torch.manual_seed(0)
    y, _ = sinograms()
    net = model(cls, **LOSS_SETTINGS[loss])
    batch = NoGroundTruth(measurement=y, fbp=FBP(GEOMETRY)(y), index=torch.arange(2))
    value = net.training_step(batch, 0)
    assert torch.isfinite(value) and value.item() > 0
    value.backward()
    gradients = [p.grad for p in net.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in gradients)
    assert all(g is None or torch.isfinite(g).all() for g in gradients)
    if cls is not FBPUNet:  # the subsets' operators were swapped in and out: the full one is back
        assert net.net.operator is net.operator and net.net.op_norm == float(net.cached_operator_norm)
    with torch.no_grad():
        assert net.reconstruct(batch).shape == (2, 1, SIZE, SIZE)
        assert net(y).shape == (2, 1, SIZE, SIZE)
    assert net.method_name == f"{cls.__name__} ({loss})"


def test_rotations_and_shifts_of_the_equivariant_loss():
    x = torch.rand(2, 1, 6, 6)
    assert torch.allclose(rotate_images(x, 0.0), x, atol=1e-6)
    assert torch.allclose(rotate_images(x, 90.0), torch.rot90(x, 1, (2, 3)), atol=1e-5)
    assert torch.allclose(rotate_images(x, torch.tensor([180.0, -90.0])),
                          torch.stack([torch.rot90(x[0], 2, (1, 2)), torch.rot90(x[1], -1, (1, 2))]), atol=1e-5)
    assert torch.equal(shift_images(x, [(1, 0), (0, -2)])[1], torch.roll(x[1], -2, dims=-1))


def test_the_loss_settings_hold_no_extra_weights():
    """Noise2Inverse's subset operators are rebuilt from numbers: checkpoints of either loss load into the other."""
    supervised, self_supervised = model(LearnedGD), model(LearnedGD, loss="noise2inverse", n2i_splits=2)
    assert supervised.state_dict().keys() == self_supervised.state_dict().keys()
    self_supervised.load_state_dict(supervised.state_dict())


# -- training from measurements alone --------------------------------------------------------------
def test_training_batches_hide_the_ground_truth_and_validation_keeps_it():
    data = datamodule()
    train = next(iter(data.train_dataloader()))
    assert set(train) == {"measurement", "fbp", "index"}
    assert "ground_truth" in next(iter(data.val_dataloader()))
    assert data.description.endswith("trained without ground truth")
    assert "ground_truth" in next(iter(datamodule(train_ground_truth=True).train_dataloader()))


def test_device_simulated_training_batches_hide_the_ground_truth_too():
    data = SimulatedCTDataModule(preset="ellipses-small", image_size=16, num_angles=8, train_length=4,
                                 simulate_on="device", train_ground_truth=False)
    batch = data.transfer_batch_to_device(torch.tensor([0, 1]), torch.device("cpu"), 0)
    assert set(batch) == {"measurement", "fbp", "index"} and batch["measurement"].shape[:2] == (2, 1)


def test_the_supervised_loss_is_the_mse_against_the_ground_truth():
    y, images = sinograms()
    net = model()
    batch = {"measurement": y, "fbp": FBP(GEOMETRY)(y), "ground_truth": images}
    with torch.no_grad():
        expected = nn.functional.mse_loss(net.net(batch["fbp"]), images)
        assert net.training_loss(batch).item() == pytest.approx(expected.item(), rel=1e-6)
    assert net.method_name == "FBPUNet" and model(method_name="mine", loss="equivariant").method_name == "mine"


def test_a_tiny_fbp_unet_trained_with_noise2inverse_reduces_its_loss():
    """60 steps from measurements alone: the Noise2Inverse loss of a training batch falls below its
    start and below the identity network's (the plain split FBPs): the network denoises."""
    torch.manual_seed(0)
    data = datamodule()
    settings = dict(geometry=data.geometry, loss="noise2inverse", n2i_splits=4, fbp_filter="Ram-Lak",
                    fbp_frequency_scaling=1.0)
    net = model(lr=3e-3, scheduler="none", **settings)
    identity = model(**settings)
    identity.net = nn.Identity()
    batch = next(iter(data.train_dataloader()))

    def loss(module):
        module.eval()
        with torch.no_grad():
            value = module.training_loss(batch).item()
        module.train()
        return value

    before = loss(net)
    tiny_trainer(60).fit(net, data)
    after = loss(net)
    assert after < 0.85 * before and after < loss(identity), (before, after, loss(identity))


@pytest.mark.parametrize("cls", [LearnedGD, LearnedPD], ids=lambda c: c.__name__)
def test_learned_iterative_methods_fit_from_measurements_alone_and_validate_against_ground_truth(cls):
    torch.manual_seed(0)
    data = datamodule(image_size=16, num_angles=16, train_length=4, batch_size=2)
    net = model(cls, geometry=data.geometry, loss="noise2inverse", n2i_splits=2)
    trainer = tiny_trainer(2, limit_val_batches=1)
    trainer.fit(net, data)
    logged = trainer.callback_metrics
    assert {"val/noise2inverse_loss", "val/psnr"} <= set(logged)
    assert all(math.isfinite(float(logged[key])) for key in ("val/noise2inverse_loss", "val/psnr"))


# -- the preset ------------------------------------------------------------------------------------
def test_the_low_dose_preset_sits_next_to_ellipses_small():
    preset = PRESETS["ellipses-small-lowdose"]
    assert (preset["image_size"], preset["num_angles"], preset["noise"]) == (64, 360, "poisson")
    assert 50 <= preset["photons"] <= 300  # noise-dominated FBP, yet no zero counts (docs/data.md)
    data = SimulatedCTDataModule(preset="ellipses-small-lowdose", image_size=16, num_angles=24, test_length=2)
    assert data.dataset("test").noise.photons == preset["photons"]
    sample = data.dataset("test")[0]
    assert sample["measurement"].shape == (1, 24, data.geometry.num_detector_pixels)
    assert SimulatedCTDataModule(preset="ellipses-small").dataset("test").noise.relative_std == 0.025
    assert SimulatedCTDataModule(preset="ellipses-small-lowdose", photons=1e4).dataset("test").noise.photons == 1e4


# -- one-line errors ---------------------------------------------------------------------------------
def test_supervised_loss_with_a_data_module_without_ground_truth_is_refused_in_one_line():
    data = datamodule(image_size=16, num_angles=8, train_length=4)
    with pytest.raises(ValueError, match=r"^loss 'supervised' needs the ground truth of the training split, which "
                                         r"SimulatedCTDataModule leaves out \(train_ground_truth: false\)") as error:
        tiny_trainer(1).fit(model(geometry=data.geometry), data)
    assert "\n" not in str(error.value)
    y, _ = sinograms()
    with pytest.raises(ValueError, match="FBPUNet trains supervised and needs ground_truth in the training batches"):
        model().training_step({"measurement": y, "fbp": FBP(GEOMETRY)(y)}, 0)


@pytest.mark.parametrize("settings, geometry, message", [
    (dict(loss="noise2inverse", n2i_splits=41), GEOMETRY,
     r"^cannot split 40 projection angles into K = 41 subsets: K must be at most the number of angles$"),
    (dict(loss="noise2inverse", n2i_splits=1), GEOMETRY, r"^n2i_splits must be an integer >= 2, got 1$"),
    (dict(loss="noise2inverse", n2i_splits=2), LightFieldGeometry(num_lenslets=6, lenslet_size=3, num_depths=3,
                                                                  psf_radius=1),
     r"^noise2inverse splits the projection angles of a 2D CT geometry \(ParallelBeam2D, FanBeam2D\); "
     r"LightFieldGeometry has none to split$"),
    (dict(loss="noise2inverse", n2i_splits=2), SparseCodingProblem(m=8, n=16), "SparseCodingProblem has none to split"),
    (dict(loss="equivariant"), SparseCodingProblem(m=8, n=16), r"^loss 'equivariant' rotates images"),
    (dict(loss="noise2self"), GEOMETRY, r"^loss must be one of \('supervised', 'noise2inverse', 'equivariant'\)"),
    (dict(loss="noise2inverse", n2i_strategy="2:2"), GEOMETRY, r"^n2i_strategy must be one of \('X:1', '1:X'\)"),
    (dict(ei_weight=-1.0), GEOMETRY, r"^ei_weight must be a finite number >= 0"),
    (dict(ei_rotations=0), GEOMETRY, r"^ei_rotations must be an integer >= 1"),
], ids=["K-above-angles", "K-below-2", "light-field", "sparse-coding", "equivariant-codes", "unknown-loss",
        "strategy", "ei-weight", "ei-rotations"])
def test_bad_settings_are_one_line_value_errors(settings, geometry, message):
    with pytest.raises(ValueError, match=message) as error:
        LearnedGD(forward_model=geometry.to_dict(), n_iter=1, hidden_channels=2, results_dir=None, **settings)
    assert "\n" not in str(error.value)


def test_train_py_refuses_a_supervised_loss_on_data_without_ground_truth_in_one_line(tmp_path, capsys):
    from lightning_recon.cli import cli_main

    with pytest.raises(SystemExit) as ended:
        cli_main(["fit", "--model=lightning_recon.methods.FBPUNet", "--model.init_args.channels=[4,4]",
                  "--data.init_args.preset=ellipses-small", "--data.init_args.image_size=16",
                  "--data.init_args.num_angles=6", "--data.init_args.train_ground_truth=false",
                  "--trainer.accelerator=cpu", "--trainer.logger=false", f"--out={tmp_path}"])
    assert ended.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "train_ground_truth: false" in error[0]
    assert not (tmp_path / "checkpoints").exists()
