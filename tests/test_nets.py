"""Architectures in lightning_recon.nets, with a small dense random operator in place of the ray transform."""
from __future__ import annotations

import copy
import pickle
from typing import Tuple

import pytest
import torch
from torch import nn

from lightning_recon.nets import ConvCritic, LearnedGradientDescent, LearnedPrimalDual, UNet
from lightning_recon.physics import LinearOperator

SMALL_CHANNELS = (8, 8, 16, 16, 32)


class DenseOperator(LinearOperator):
    """``(B, 1, H, W) -> (B, 1, A, D)`` by a fixed matrix of shape ``(A·D, H·W)``: the operator contract
    needs only the two products."""

    def __init__(self, matrix: torch.Tensor, image_shape: Tuple[int, int], data_shape: Tuple[int, int]):
        super().__init__((1, *image_shape), (1, *data_shape))
        self.register_buffer("matrix", matrix)

    def _compute(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(-2) @ self.matrix.T).unflatten(-1, self.range_shape[1:])

    def _compute_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return (y.flatten(-2) @ self.matrix).unflatten(-1, self.domain_shape[1:])


def make_operator(image_shape=(32, 32), data_shape=(8, 12), seed=0, scale=1.0):
    """``(A, ‖A‖₂)`` for a Gaussian random matrix."""
    gen = torch.Generator().manual_seed(seed)
    n_pixels, n_data = image_shape[0] * image_shape[1], data_shape[0] * data_shape[1]
    matrix = scale * torch.randn(n_data, n_pixels, generator=gen) / n_pixels ** 0.5
    op_norm = float(torch.linalg.matrix_norm(matrix, ord=2))
    return DenseOperator(matrix, image_shape, data_shape), op_norm


def make_unrolled(kind: str, image_shape=(32, 32), data_shape=(8, 12), seed=0, **kwargs):
    operator, op_norm = make_operator(image_shape, data_shape)
    torch.manual_seed(seed)
    cls = {"lgd": LearnedGradientDescent, "lpd": LearnedPrimalDual}[kind]
    return cls(operator, n_iter=3, hidden_channels=8, op_norm=op_norm, **kwargs)


def phantoms(batch: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """``(batch, 1, size, size)`` images of two random axis-aligned rectangles each, values in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.zeros(batch, 1, size, size)
    for image in images:
        for _ in range(2):
            top, left = torch.randint(0, size // 2, (2,), generator=gen).tolist()
            height, width = torch.randint(size // 6, size // 2, (2,), generator=gen).tolist()
            image[0, top:top + height, left:left + width] += torch.rand((), generator=gen) * 0.5 + 0.25
    return images


def assert_all_parameters_have_finite_grads(net: nn.Module):
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(parameter.grad).all(), f"non-finite gradient for {name}"


# -- UNet ------------------------------------------------------------------------------------------
UNET_CONFIGS = {
    "fbpconvnet": dict(channels=SMALL_CHANNELS, norm="batch", downsample="maxpool", residual=True),
    "strided_group": dict(channels=SMALL_CHANNELS, norm="group", out_channels=2, sigmoid=True),
    "deep_image_prior": dict(in_channels=3, channels=(16,) * 5, skip_channels=(4, 0, 4, 4, 4), norm="group"),
    "no_norm_two_scales": dict(channels=(8, 16), norm="none"),
}


@pytest.mark.parametrize("size", [(32, 32), (48, 48), (50, 50), (33, 45)])
@pytest.mark.parametrize("config", UNET_CONFIGS, ids=list(UNET_CONFIGS))
def test_unet_output_shape(config, size):
    kwargs = UNET_CONFIGS[config]
    net = UNet(**kwargs)
    x = torch.randn(2, kwargs.get("in_channels", 1), *size)
    out = net(x)
    assert out.shape == (2, kwargs.get("out_channels", 1), *size)
    if kwargs.get("sigmoid"):
        assert ((out > 0) & (out < 1)).all()


def test_unet_residual_adds_input():
    net = UNet(channels=(8, 16), norm="none", residual=True)
    plain = UNet(channels=(8, 16), norm="none")
    plain.load_state_dict(net.state_dict())
    x = torch.randn(1, 1, 20, 20)
    torch.testing.assert_close(net(x), x + plain(x))


def test_unet_rejects_bad_arguments():
    with pytest.raises(ValueError, match="in_channels == out_channels"):
        UNet(in_channels=2, out_channels=1, residual=True)
    with pytest.raises(ValueError, match="one entry per scale"):
        UNet(channels=(8, 16), skip_channels=(4,))
    with pytest.raises(ValueError, match="norm"):
        UNet(norm="instance")


@pytest.mark.parametrize("config", UNET_CONFIGS, ids=list(UNET_CONFIGS))
def test_unet_gradients_reach_every_parameter(config):
    kwargs = UNET_CONFIGS[config]
    net = UNet(**kwargs)
    net(torch.randn(2, kwargs.get("in_channels", 1), 33, 35)).square().mean().backward()
    assert_all_parameters_have_finite_grads(net)


# -- unrolled networks -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lgd", "lpd"])
@pytest.mark.parametrize("image_shape,data_shape", [((32, 32), (8, 12)), ((33, 27), (7, 11))])
def test_unrolled_output_shape(kind, image_shape, data_shape):
    net = make_unrolled(kind, image_shape, data_shape)
    y = torch.randn(2, 1, *data_shape)
    assert net(y).shape == (2, 1, *image_shape)
    assert net(y, x0=torch.randn(2, 1, *image_shape)).shape == (2, 1, *image_shape)


@pytest.mark.parametrize("kind,kwargs", [("lgd", {}), ("lgd", dict(n_memory=2, step_init=0.5)), ("lpd", {})])
def test_unrolled_gradients_reach_every_parameter(kind, kwargs):
    net = make_unrolled(kind, **kwargs)
    x = phantoms(2)
    y = net.operator(x)
    (net(y) - x).square().mean().backward()
    assert_all_parameters_have_finite_grads(net)


@pytest.mark.parametrize("kind", ["lgd", "lpd"])
def test_unrolled_state_dict_holds_only_learned_weights(kind):
    net = make_unrolled(kind, n_memory=1, step_init=1.0) if kind == "lgd" else make_unrolled(kind)
    operator_tensor = net.operator.matrix
    assert set(net.state_dict()) == {name for name, _ in net.named_parameters()}
    assert all(t.data_ptr() != operator_tensor.data_ptr() for t in net.state_dict().values())
    assert not any(m is net.operator or m is net.operator.adjoint for m in net.modules())

    fresh = make_unrolled(kind, n_memory=1, step_init=1.0, seed=1) if kind == "lgd" else make_unrolled(kind, seed=1)
    y = net.operator(phantoms(2))
    assert not torch.equal(fresh(y), net(y))
    fresh.load_state_dict(net.state_dict())
    assert torch.equal(fresh(y), net(y))


@pytest.mark.parametrize("kind", ["lgd", "lpd"])
def test_unrolled_pickles_and_copies(kind):
    net = make_unrolled(kind)
    y = net.operator(phantoms(1))
    for clone in (pickle.loads(pickle.dumps(net)), copy.deepcopy(net)):
        assert torch.equal(clone(y), net(y))


@pytest.mark.parametrize("kind", ["lgd", "lpd"])
def test_unrolled_op_norm_makes_output_invariant_to_operator_scale(kind):
    """With ``A' = c A`` and ``op_norm' = c op_norm`` the networks see the same normalised problem."""
    net = make_unrolled(kind)
    x = phantoms(2)
    scale = 7.0
    scaled_forward, scaled_norm = make_operator(scale=scale)
    scaled = type(net)(scaled_forward, n_iter=3, hidden_channels=8, op_norm=scaled_norm)
    scaled.load_state_dict(net.state_dict())
    torch.testing.assert_close(scaled(scaled_forward(x)), net(net.operator(x)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["lgd", "lpd"])
def test_unrolled_checkpointing_matches_plain(kind):
    plain = make_unrolled(kind)
    checkpointed = make_unrolled(kind, checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    x = phantoms(2)
    y = plain.operator(x)
    for net in (plain, checkpointed):
        (net(y) - x).square().mean().backward()
    torch.testing.assert_close(checkpointed(y), plain(y))
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=f"gradient of {name}")


def test_unrolled_rejects_bad_arguments():
    operator, _ = make_operator()
    with pytest.raises(ValueError, match="n_primal >= 2"):
        LearnedPrimalDual(operator, n_primal=1)
    with pytest.raises(ValueError, match="op_norm"):
        LearnedGradientDescent(operator, op_norm=0.0)
    with pytest.raises(TypeError, match="LinearOperator"):
        LearnedGradientDescent(lambda x: x)


def test_learned_primal_dual_training_reduces_error():
    """30 Adam steps on a fixed batch cut the MSE to the ground truth to a quarter of the start and to
    under half of the all-zero image's (the untrained network does worse than zero)."""
    net = make_unrolled("lpd", data_shape=(16, 24))
    images = phantoms(4, seed=3)
    measurement = net.operator(images)
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)

    def mse() -> torch.Tensor:
        return (net(measurement) - images).square().mean()

    with torch.no_grad():
        initial = mse().item()
    for _ in range(30):
        optimiser.zero_grad()
        loss = mse()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        final = mse().item()
    zero_image_mse = images.square().mean().item()
    assert final < 0.25 * initial, (initial, final)
    assert final < 0.5 * zero_image_mse, (zero_image_mse, final)


# -- critic ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(32, 32), (33, 45)])
def test_critic_scores_each_sample(size):
    critic = ConvCritic(in_channels=3, channels=(8, 16, 32))
    image, condition = torch.randn(2, 1, *size), torch.randn(2, 2, *size)
    scores = critic(image, condition)
    assert scores.shape == (2,)
    torch.testing.assert_close(scores, critic(torch.cat([image, condition], dim=1)))
    scores.sum().backward()
    assert_all_parameters_have_finite_grads(critic)


def test_critic_gradient_penalty_is_per_sample():
    """No batch statistics: a sample's score does not depend on the rest of the batch."""
    critic = ConvCritic(in_channels=1, channels=(8, 16))
    batch = torch.randn(3, 1, 24, 24)
    torch.testing.assert_close(critic(batch)[:1], critic(batch[:1]))
    with pytest.raises(ValueError, match="expects"):
        critic(torch.randn(1, 2, 24, 24))


def test_learned_gd_loads_checkpoints_written_before_the_norm_buffer_was_renamed():
    """State dicts with the old buffer name ``operator_norm`` load into ``cached_operator_norm``."""
    from lightning_recon.methods import LearnedGD
    from lightning_recon.physics import ParallelBeam2D

    geometry = ParallelBeam2D((16, 16), num_angles=6).to_dict()
    model = LearnedGD(forward_model=geometry, n_iter=2, hidden_channels=4, results_dir=None)
    old = dict(model.state_dict())
    old["operator_norm"] = torch.tensor(3.5)
    del old["cached_operator_norm"]
    fresh = LearnedGD(forward_model=geometry, n_iter=2, hidden_channels=4, results_dir=None)
    fresh.load_state_dict(old)
    assert float(fresh.cached_operator_norm) == 3.5
