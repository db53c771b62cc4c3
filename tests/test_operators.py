"""The operator contract, checked for every forward model × backend × device (deepinv's
``test_operators_adjointness`` over its ``OPERATORS`` list, here with the norm, gradients, batching,
empty batches and pickling too). A new physics joins by one entry in ``OPERATORS``. The end of the
file: the custom op of the operators autograd cannot see (opcheck, its registry of live operators),
``torch.compile(fullgraph=True)`` of every operator and of a learned-GD training step, bf16 autocast."""
from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch

from lightning_recon.nets import LearnedGradientDescent
from lightning_recon.physics import (ConeBeam3D, FanBeam2D, LightFieldGeometry, LinearOperator, ParallelBeam2D,
                                     RayTransform, SparseCodingProblem, astra_cuda_available, operator_from_dict)
from lightning_recon.physics.operator import apply_operator, live_operator

SMALL = (12, 12)
OFFSET = ParallelBeam2D(SMALL, num_angles=7, detector_offset=1.5)


def _ray(geometry, backend):
    return lambda: RayTransform(geometry, backend=backend)


# name -> (builder, backends' float64 support, adjointness tolerance in float32, needs CUDA)
# Tolerances: exact transposes (sparse matrix, torch convolutions) agree to float32 rounding; ODL's
# CPU projector and ASTRA's GPU projectors are matched pairs only to ~1e-4 (measured).
OPERATORS = {
    "parallel-matrix": (_ray(ParallelBeam2D(SMALL, num_angles=7), "matrix"), True, 1e-5, False),
    "parallel-sparse-view-matrix": (_ray(ParallelBeam2D(SMALL, num_angles=5, angle_step=3), "matrix"), True, 1e-5, False),
    "parallel-offset-matrix": (_ray(OFFSET, "matrix"), True, 1e-5, False),
    "fan-matrix": (_ray(FanBeam2D(SMALL, num_angles=9, source_radius=40.0, detector_radius=20.0), "matrix"), True,
                   1e-5, False),
    "parallel-odl": (_ray(ParallelBeam2D(SMALL, num_angles=7), "odl"), False, 1e-3, False),
    "fan-odl": (_ray(FanBeam2D(SMALL, num_angles=9, source_radius=40.0, detector_radius=20.0), "odl"), False, 1e-3,
                False),
    "light-field": (lambda: operator_from_dict(LightFieldGeometry(num_lenslets=3, lenslet_size=3, num_depths=3,
                                                                  psf_radius=1).to_dict()), True, 1e-5, False),
    "gaussian-dictionary": (lambda: operator_from_dict(SparseCodingProblem(m=20, n=40).to_dict()), True, 1e-5, False),
    "convolutional-dictionary": (lambda: operator_from_dict(SparseCodingProblem(
        dictionary="convolutional", num_filters=3, filter_size=3, image_size=8).to_dict()), True, 1e-5, False),
    "parallel-astra_cuda": (_ray(ParallelBeam2D(SMALL, num_angles=7), "astra_cuda"), False, 1e-3, True),
    "parallel-offset-astra_cuda": (_ray(OFFSET, "astra_cuda"), False, 1e-3, True),
    "fan-astra_cuda": (_ray(FanBeam2D(SMALL, num_angles=9, source_radius=40.0, detector_radius=20.0), "astra_cuda"),
                       False, 1e-3, True),
    "cone-astra_cuda": (_ray(ConeBeam3D((8, 8, 6), num_angles=10, detector_shape=(12, 12)), "astra_cuda"), False,
                        5e-3, True),
}
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA")])]


def _cases():
    for name, (_, _, _, needs_cuda) in OPERATORS.items():
        for device in DEVICES:
            on_cuda = not isinstance(device, str)
            if needs_cuda and not on_cuda:
                continue
            marks = [pytest.mark.gpu, pytest.mark.skipif(not astra_cuda_available(), reason="needs ASTRA with CUDA")] \
                if needs_cuda else []
            yield pytest.param(name, device if isinstance(device, str) else device.values[0],
                               marks=marks + (list(device.marks) if on_cuda else []),
                               id=f"{name}-{'cuda' if on_cuda else 'cpu'}")


CASES = list(_cases())


def _operator(name: str, device: str) -> LinearOperator:
    op = OPERATORS[name][0]().to(device)
    assert isinstance(op, LinearOperator)
    return op


def _random(shape, device, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=gen, dtype=torch.float64).to(device, dtype)


@pytest.mark.parametrize("name,device", CASES)
def test_adjointness(name, device):
    op = _operator(name, device)
    assert op.adjointness_error(device=device) < OPERATORS[name][2]
    assert op.adjoint.adjoint is op
    assert op.adjoint.domain_shape == op.range_shape and op.adjoint.range_shape == op.domain_shape


@pytest.mark.parametrize("name,device", CASES)
def test_norm_is_the_largest_singular_value_of_the_materialised_matrix(name, device):
    """‖A‖ from the power method against the SVD of ``A`` applied to the identity basis; ``Aᵀ``
    applied to the range's basis gives the same matrix, row by row."""
    op = _operator(name, device)
    n, m = math.prod(op.domain_shape), math.prod(op.range_shape)
    if n > 2048:
        pytest.skip("too large to materialise")
    matrix = op(torch.eye(n, device=device).reshape(n, *op.domain_shape)).reshape(n, m).T.double().cpu()
    sigma = float(torch.linalg.matrix_norm(matrix, 2))
    assert op.operator_norm(device=device) == pytest.approx(sigma, rel=1e-3)
    rows = op.adjoint(torch.eye(m, device=device).reshape(m, *op.range_shape)).reshape(m, n).double().cpu()
    tolerance = OPERATORS[name][2] * 10
    assert float((rows - matrix).norm() / matrix.norm()) < tolerance


@pytest.mark.parametrize("name,device", CASES)
def test_gradients_are_the_adjoint(name, device):
    """Autograd through ``A`` applies ``Aᵀ`` (and through ``Aᵀ`` applies ``A``); gradcheck in float64
    where the backend computes in float64."""
    op = _operator(name, device)
    x = _random((2, *op.domain_shape), device, seed=1).requires_grad_(True)
    y = _random((2, *op.range_shape), device, seed=2)
    (op(x) * y).sum().backward()
    torch.testing.assert_close(x.grad, op.adjoint(y), rtol=1e-4, atol=1e-4 * float(x.grad.abs().max()))
    if OPERATORS[name][1]:
        x64 = _random((2, *op.domain_shape), device, torch.float64, seed=3).requires_grad_(True)
        y64 = _random((2, *op.range_shape), device, torch.float64, seed=4).requires_grad_(True)
        assert torch.autograd.gradcheck(op, (x64,))
        assert torch.autograd.gradcheck(op.adjoint, (y64,))


@pytest.mark.parametrize("name,device", CASES)
def test_batches_equal_single_samples_and_empty_batches_stay_empty(name, device):
    op = _operator(name, device)
    x = _random((3, *op.domain_shape), device, seed=5)
    singles = torch.cat([op(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(op(x), singles, rtol=1e-5, atol=1e-5 * float(singles.abs().max()))
    assert op(x[:0]).shape == (0, *op.range_shape)
    assert op.adjoint(op(x)[:0]).shape == (0, *op.domain_shape)


@pytest.mark.parametrize("name,device", CASES)
def test_pickles_and_copies_without_backend_state(name, device):
    op = _operator(name, device)
    x = _random((2, *op.domain_shape), device, seed=6)
    y = op(x)
    for clone in (pickle.loads(pickle.dumps(op)), copy.deepcopy(op)):
        assert clone._built == {}
        torch.testing.assert_close(clone(x), y)


@pytest.mark.parametrize("name,device", CASES)
def test_wrong_shapes_are_refused_with_the_expected_shape(name, device):
    op = _operator(name, device)
    wrong = torch.zeros(1, *op.domain_shape[:-1], op.domain_shape[-1] + 1, device=device)
    with pytest.raises(ValueError, match="shape"):
        op(wrong)


# -------------------------------------------------------------------------------------------------
# torch.compile and mixed precision: operators autograd cannot see run as one custom op
# (torch.ops.lightning_recon.apply_operator) whose backward is the adjoint
# -------------------------------------------------------------------------------------------------
TINY = ParallelBeam2D((16, 16), num_angles=8)


@pytest.fixture
def fresh_dynamo():
    """Frames compiled by earlier tests neither count toward dynamo's recompile limit nor stay cached."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("backend,device", [
    ("matrix", "cpu"), ("odl", "cpu"),
    pytest.param("matrix", "cuda", marks=DEVICES[1].marks, id="matrix-cuda"),
    pytest.param("astra_cuda", "cuda", marks=[*DEVICES[1].marks, pytest.mark.skipif(
        not astra_cuda_available(), reason="needs ASTRA with CUDA")], id="astra_cuda-cuda"),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("transpose", [False, True], ids=["forward", "adjoint"])
def test_custom_op_passes_opcheck(backend, device, dtype, transpose):
    """``torch.library.opcheck``: schema (no mutation, no aliasing), autograd registration, the fake
    kernel's shapes/strides/dtypes against the real output, and AOT dispatch with dynamic shapes
    (outputs and gradients against eager). The sparse CSR matrices (and ASTRA/ODL) live inside the
    op, never among its inputs, so every check runs on the sparse backend too: nothing is skipped."""
    if dtype == torch.float64 and backend != "matrix":
        pytest.skip("float64 is computed by the matrix backend only")
    op = RayTransform(ParallelBeam2D(SMALL, num_angles=7), backend=backend).to(device)
    shape = op.range_shape if transpose else op.domain_shape
    x = _random((2, *shape), device, dtype, seed=7).requires_grad_(True)
    for check_finite in (False, True):
        torch.library.opcheck(apply_operator, (x, op._operator_id, transpose, check_finite))


def test_half_precision_is_computed_and_returned_in_float32():
    op = RayTransform(TINY, backend="matrix")
    x = _random((2, *op.domain_shape), "cpu", seed=8)
    xb = x.bfloat16().requires_grad_(True)
    y = op(xb)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, op(xb.detach().float()))
    y.sum().backward()
    assert xb.grad.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast does not reach the operator
        y_autocast, x_autocast = op(x), op.adjoint(op(x))
    assert y_autocast.dtype == x_autocast.dtype == torch.float32
    torch.testing.assert_close(y_autocast, op(x), rtol=0, atol=0)
    torch.testing.assert_close(x_autocast, op.adjoint(op(x)), rtol=0, atol=0)


def test_operator_ids_are_per_object_and_weak():
    """The custom op finds its operator by an id in a registry of weak references: a copy (pickle,
    deepcopy) registers itself anew, a collected operator leaves the registry."""
    import gc

    op = RayTransform(TINY, backend="matrix")
    assert live_operator(op._operator_id) is op
    clones = [pickle.loads(pickle.dumps(op)), copy.deepcopy(op)]
    ids = {op._operator_id, *(clone._operator_id for clone in clones)}
    assert len(ids) == 3 and all(live_operator(clone._operator_id) is clone for clone in clones)
    dead = clones[0]._operator_id
    del clones
    gc.collect()
    with pytest.raises(RuntimeError, match=f"no live LinearOperator with id {dead}"):
        live_operator(dead)


@pytest.mark.parametrize("name,device", CASES)
@pytest.mark.usefixtures("fresh_dynamo")
def test_every_operator_compiles_without_graph_breaks(name, device):
    """Every forward model, both directions: ``torch._dynamo.explain`` finds one graph and no
    break, and a ``fullgraph`` compile (AOT autograd, eager kernels: quick) gives eager's output and
    gradient."""
    op = _operator(name, device)
    x = _random((2, *op.domain_shape), device, seed=9)
    y = _random((2, *op.range_shape), device, seed=10)
    for apply, inp in ((op, x), (op.adjoint, y)):
        explanation = torch._dynamo.explain(apply)(inp)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        assert explanation.graph_count == 1
        compiled = torch.compile(apply, fullgraph=True, backend="aot_eager")
        eager_in, compiled_in = inp.clone().requires_grad_(True), inp.clone().requires_grad_(True)
        out = apply(eager_in)
        torch.testing.assert_close(compiled(compiled_in), out)
        weights = torch.rand_like(out)
        (out * weights).sum().backward()
        (compiled(compiled_in) * weights).sum().backward()
        torch.testing.assert_close(compiled_in.grad, eager_in.grad)


@pytest.mark.usefixtures("fresh_dynamo")
def test_nan_check_survives_compilation():
    """``check_finite`` runs inside the custom op: a compiled graph keeps it and has no break for it."""
    op = RayTransform(TINY, backend="matrix", check_finite=True)
    assert torch._dynamo.explain(op)(torch.rand(1, 1, 16, 16)).graph_break_count == 0
    compiled = torch.compile(op, fullgraph=True, backend="aot_eager")
    with pytest.raises(ValueError, match="image contains NaN"):
        compiled(torch.full((1, 1, 16, 16), float("nan")))
    with pytest.raises(ValueError, match="sinogram contains NaN"):
        torch.compile(op.adjoint, fullgraph=True, backend="aot_eager")(torch.full((1, *op.range_shape), float("inf")))


def _learned_gd_case():
    op = RayTransform(TINY, backend="matrix", check_finite=False)
    torch.manual_seed(0)
    net = LearnedGradientDescent(op, n_iter=2, hidden_channels=4, op_norm=op.operator_norm())
    truth = _random((2, *op.domain_shape), "cpu", seed=11)
    return net, op(truth), truth


def _training_loss(net, measurement, truth):
    return torch.nn.functional.mse_loss(net(measurement), truth)


def _step(net, loss_fn, *batch):
    """One training step's loss and parameter gradients (forward + backward)."""
    net.zero_grad(set_to_none=True)
    loss = loss_fn(net, *batch)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in net.parameters()]


@pytest.mark.usefixtures("fresh_dynamo")
def test_learned_gd_training_step_compiles_fullgraph_and_matches_eager():
    """``torch.compile(fullgraph=True)`` (inductor) of one learned-GD training step on a 16² ray
    transform: the forward and the compiled backward (through the custom op's adjoint) match eager.
    About 30 s cold on two busy cores, a few seconds with inductor's on-disk cache."""
    net, measurement, truth = _learned_gd_case()
    assert torch._dynamo.explain(_training_loss)(net, measurement, truth).graph_break_count == 0
    eager_loss, eager_grads = _step(net, _training_loss, measurement, truth)
    compiled = torch.compile(_training_loss, fullgraph=True)
    for _ in range(2):  # the second call reuses the compiled graph
        loss, grads = _step(net, compiled, measurement, truth)
        torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-7)
        for grad, eager_grad in zip(grads, eager_grads):
            torch.testing.assert_close(grad, eager_grad, rtol=1e-4, atol=1e-6)


def test_learned_gd_trains_under_bf16_autocast_on_the_cpu():
    """bf16 autocast on the CPU: the convolutions run in bf16, the operator in float32, the step's
    loss and gradients are finite, float32 and close to the float32 step's (bf16 rounding)."""
    net, measurement, truth = _learned_gd_case()
    seen = []
    handle = net.operator.register_forward_hook(lambda module, args, out: seen.append(out.dtype))

    def autocast_loss(net, measurement, truth):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return _training_loss(net, measurement, truth)

    try:
        loss32, grads32 = _step(net, _training_loss, measurement, truth)
        seen.clear()
        loss16, grads16 = _step(net, autocast_loss, measurement, truth)
    finally:
        handle.remove()
    assert seen and set(seen) == {torch.float32}
    assert torch.isfinite(loss16) and float(loss16) == pytest.approx(float(loss32), rel=5e-2)
    for grad, grad32 in zip(grads16, grads32):
        assert grad.dtype == torch.float32 and bool(torch.isfinite(grad).all())
    flat16, flat32 = torch.cat([g.flatten() for g in grads16]), torch.cat([g.flatten() for g in grads32])
    assert float(torch.nn.functional.cosine_similarity(flat16, flat32, dim=0)) > 0.98
