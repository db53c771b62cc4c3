"""The operator contract, checked for every forward model × backend × device (deepinv's
``test_operators_adjointness`` over its ``OPERATORS`` list, here with the norm, gradients, batching,
empty batches and pickling too). A new physics joins by one entry in ``OPERATORS``."""
from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch

from lightning_recon.physics import (ConeBeam3D, FanBeam2D, LightFieldGeometry, LinearOperator, ParallelBeam2D,
                                     RayTransform, SparseCodingProblem, astra_cuda_available, operator_from_dict)

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
