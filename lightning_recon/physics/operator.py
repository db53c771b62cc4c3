"""The one contract of every forward model: a linear operator ``A`` as a differentiable torch module.

A :class:`LinearOperator` maps a batch of elements of its domain ``(B, *domain_shape)`` to the range
``(B, *range_shape)``; the shapes exclude the batch axis and include a channel axis where the data
have one (a CT image is ``(1, H, W)``, its sinogram ``(1, n_angles, n_det)``; a light-field volume
``(D, H, W)``; a sparse code ``(n,)``). Every operator offers

- ``A(x)``: the forward model;
- ``A.adjoint``: the adjoint ``Aᵀ`` as a module (itself a :class:`LinearOperator`), so ``A.adjoint(y)``
  applies it and ``A.adjoint.adjoint is A``; ``A.apply_adjoint(y)`` is the same as a method;
- ``A.operator_norm()``: ‖A‖₂ by the power method on ``AᵀA`` (seeded, cached);
- ``A.adjointness_error()``: the relative gap of ``⟨Ax, y⟩ = ⟨x, Aᵀy⟩`` on random elements (0 for an
  exact adjoint: the check every new physics should pass, as deepinv's ``adjointness_test``).

Gradients: ``torch.autograd`` differentiates ``A(x)`` as ``Aᵀ`` applied to the output gradient. An
operator written in torch operations (convolutions, matrix products) gets this from autograd; one
that calls an outside library (ASTRA, ODL, torch sparse kernels) sets ``native_autograd = False`` and
the base routes both directions through one torch custom op, ``torch.ops.lightning_recon.apply_operator``,
whose backward is the other direction. The custom op is opaque to ``torch.compile``: a network with
such an operator inside compiles with ``fullgraph=True`` (no graph break), its FakeTensor kernel
giving the output's shape and dtype. The op refers to its operator by an integer id in a
process-local registry of live operators (weak references: the registry keeps no operator alive);
an operator gets its id where it is built or unpickled, so a copy in another process has its own.
Operators in torch operations need none of this: they compile as they are. In eager mode the custom
op's dispatch costs about 20 µs per call more than an ``autograd.Function`` (torch 2.14, CPU): well
under 1 % of a learned-GD training step at the demo's 64², ~20 operator calls per step.

State that is expensive or not picklable (a system matrix, GPU projector handles) is built lazily by
``build(device)``, once per device and process, cached by :meth:`built`, and never pickled: a module
sent to another process (DDP, DataLoader workers) rebuilds it there.

Operators are described by plain numbers (a dataclass with ``to_dict()``); :func:`operator_from_dict`
turns such a dict into its operator through one registry, so configs and checkpoints hold numbers only.
"""
from __future__ import annotations

import dataclasses
import itertools
import weakref
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
from torch import nn

__all__ = ["AdjointOperator", "LinearOperator", "WeightedOperator", "apply_operator", "description_from_dict",
           "live_operator", "operator_from_dict", "register_operator", "spec_from_dict"]


# -------------------------------------------------------------------------------------------------
# Operators autograd cannot see, as one torch custom op
# -------------------------------------------------------------------------------------------------
_HALF = (torch.float16, torch.bfloat16)
_LIVE: "weakref.WeakValueDictionary[int, LinearOperator]" = weakref.WeakValueDictionary()
_NEXT_ID = itertools.count(1)


def _register_live(operator: "LinearOperator") -> int:
    """Give ``operator`` a fresh id in this process's registry of live operators (a weak reference)."""
    operator_id = next(_NEXT_ID)
    _LIVE[operator_id] = operator
    operator.__dict__["_operator_id"] = operator_id
    return operator_id


def live_operator(operator_id: int) -> "LinearOperator":
    """The live operator with this id in this process (the custom op's handle on its operator)."""
    operator = _LIVE.get(operator_id)
    if operator is None:
        raise RuntimeError(f"no live LinearOperator with id {operator_id} in this process: the operator was garbage "
                           "collected (a compiled function outlived it?) or the id comes from another process")
    return operator


def _output_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _HALF else dtype


@torch.library.custom_op("lightning_recon::apply_operator", mutates_args=())
def apply_operator(x: torch.Tensor, operator_id: int, transpose: bool, check_finite: bool) -> torch.Tensor:
    """``A x`` (``transpose=False``) or ``Aᵀ y`` (``transpose=True``) of the live operator
    ``operator_id`` on a validated, non-empty batch, for operators whose computation autograd and
    ``torch.compile`` cannot see (sparse products, ASTRA, ODL).

    Half-precision input is computed in float32 and returned in float32, outside autocast (sparse
    products and ASTRA have no half-precision kernels), so a network trained under ``bf16-mixed``
    keeps a float32 operator. ``check_finite``: raise ``ValueError`` on NaN/inf input (one host
    synchronisation; inside the op, so a compiled graph keeps the check without a graph break).
    The output is a new contiguous tensor. Backward: the other direction (exact for a linear operator).
    """
    operator = live_operator(operator_id)
    if x.dtype in _HALF:
        x = x.float()
    if check_finite and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{operator.range_name if transpose else operator.domain_name} contains NaN or inf values")
    with torch.autocast(x.device.type, enabled=False):
        out = operator._compute_adjoint(x) if transpose else operator._compute(x)
    out = out.contiguous()
    if out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
        out = out.clone()  # a custom op's output may not alias its input
    return out


@apply_operator.register_fake
def _apply_operator_fake(x: torch.Tensor, operator_id: int, transpose: bool, check_finite: bool) -> torch.Tensor:
    operator = live_operator(operator_id)
    shape = operator.domain_shape if transpose else operator.range_shape
    return x.new_empty((x.shape[0], *shape), dtype=_output_dtype(x.dtype))


def _apply_operator_setup_context(ctx, inputs, output) -> None:
    x, operator_id, transpose, _ = inputs
    ctx.operator_id, ctx.transpose, ctx.input_dtype = operator_id, transpose, x.dtype


def _apply_operator_backward(ctx, grad: torch.Tensor):
    grad_input = apply_operator(grad.contiguous(), ctx.operator_id, not ctx.transpose, False)
    return grad_input.to(ctx.input_dtype), None, None, None


apply_operator.register_autograd(_apply_operator_backward, setup_context=_apply_operator_setup_context)


class LinearOperator(nn.Module):
    """Base of every forward model: ``(B, *domain_shape) -> (B, *range_shape)``.

    A subclass sets ``domain_shape``/``range_shape`` (by ``__init__`` arguments or attributes) and
    implements ``_compute(x)`` and ``_compute_adjoint(y)`` on validated, non-empty batches; optionally
    ``build(device)`` for lazily built per-device state and ``_check`` for a stricter input check.

    Args:
        domain_shape, range_shape: one element of the domain and of the range, without the batch axis.
    """

    native_autograd: bool = True  # False: _compute/_compute_adjoint call a library autograd cannot trace
    check_finite: bool = False  # operators with native_autograd = False: refuse NaN/inf inputs (in the custom op)
    domain_name, range_name = "input", "measurement"  # what error messages call the elements

    def __init__(self, domain_shape: Tuple[int, ...], range_shape: Tuple[int, ...]):
        super().__init__()
        self.domain_shape = tuple(int(s) for s in domain_shape)
        self.range_shape = tuple(int(s) for s in range_shape)
        self._norm: Optional[float] = None
        self._built: Dict[tuple, Any] = {}
        _register_live(self)

    # -- to implement ---------------------------------------------------------------------------
    def _compute(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """``A x`` for a validated batch ``(N, ...)``."""
        raise NotImplementedError

    def _compute_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """``Aᵀ y`` for a validated batch ``(N, ...)``."""
        raise NotImplementedError

    def build(self, device: torch.device) -> Any:
        """Per-device state that is costly or not picklable (default: none); see :meth:`built`."""
        return None

    # -- lazily built state ---------------------------------------------------------------------
    def built(self, device: Union[str, torch.device]) -> Any:
        """``build(device)``, computed once per device in this process."""
        device = torch.device(device)
        key = (device.type, device.index)
        if key not in self._built:
            self._built[key] = self.build(device)
        return self._built[key]

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_built"] = {}
        state.pop("_adjoint_module", None)
        state.pop("_operator_id", None)  # ids are per process: a copy registers itself anew
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        _register_live(self)

    # -- validation -----------------------------------------------------------------------------
    def _check(self, t: torch.Tensor, shape: Tuple[int, ...], what: str) -> torch.Tensor:
        """``t`` must be a floating ``(B, *shape)`` tensor; returns it contiguous."""
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != len(shape) + 1 or tuple(t.shape[1:]) != tuple(shape):
            raise ValueError(f"{type(self).__name__} expects {what} of shape (B, {', '.join(map(str, shape))}), "
                             f"got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{what} must be a floating tensor, got dtype {t.dtype}")
        return t.contiguous()

    # -- application ----------------------------------------------------------------------------
    def _run(self, t: torch.Tensor, transpose: bool) -> torch.Tensor:
        if t.shape[0] == 0:  # an empty batch maps to an empty batch, whatever the implementation
            return t.new_zeros(0, *(self.domain_shape if transpose else self.range_shape))
        if self.native_autograd:
            return self._compute_adjoint(t) if transpose else self._compute(t)
        return apply_operator(t, self._operator_id, transpose, bool(self.check_finite))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``A x``: ``(B, *domain_shape) -> (B, *range_shape)``."""
        return self._run(self._check(x, self.domain_shape, self.domain_name), False)

    def apply_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``Aᵀ y``: ``(B, *range_shape) -> (B, *domain_shape)``."""
        return self._run(self._check(y, self.range_shape, self.range_name), True)

    @property
    def adjoint(self) -> "LinearOperator":
        """``Aᵀ`` as a module sharing this operator's state (not a registered submodule)."""
        if "_adjoint_module" not in self.__dict__:
            self.__dict__["_adjoint_module"] = AdjointOperator(self)
        return self.__dict__["_adjoint_module"]

    # -- checks and numbers ---------------------------------------------------------------------
    def _default_device(self) -> torch.device:
        tensor = next(iter(self.buffers()), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    @torch.no_grad()
    def operator_norm(self, iterations: int = 100, device: Optional[Union[str, torch.device]] = None) -> float:
        """‖A‖₂ by the power method on ``AᵀA`` from a seeded uniform start, cached on the operator.

        ``device``: where to iterate (default: the device of the operator's buffers, else the CPU).
        """
        if self._norm is None:
            device = torch.device(device) if device is not None else self._default_device()
            gen = torch.Generator().manual_seed(0)
            x = torch.rand((1, *self.domain_shape), generator=gen).to(device)
            for _ in range(iterations):
                x = self.apply_adjoint(self(x))
                x = x / x.norm()
            self._norm = float(self(x).norm())
        return self._norm

    @torch.no_grad()
    def adjointness_error(self, device: Optional[Union[str, torch.device]] = None, dtype: torch.dtype = torch.float32,
                          batch: int = 2, seed: int = 0) -> float:
        """``|⟨A x, y⟩ − ⟨x, Aᵀ y⟩| / max(|⟨A x, y⟩|, tiny)`` for seeded random ``x``, ``y``: ~1e-7 in
        float32 for an exact adjoint, larger for a mismatched one."""
        device = torch.device(device) if device is not None else self._default_device()
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand((batch, *self.domain_shape), generator=gen, dtype=torch.float64).to(device, dtype)
        y = torch.rand((batch, *self.range_shape), generator=gen, dtype=torch.float64).to(device, dtype)
        lhs = float((self(x).double() * y.double()).sum())
        rhs = float((x.double() * self.apply_adjoint(y).double()).sum())
        return abs(lhs - rhs) / max(abs(lhs), 1e-30)


class AdjointOperator(LinearOperator):
    """``Aᵀ`` of a :class:`LinearOperator` as an operator of its own: ``(B, *range) -> (B, *domain)``."""

    def __init__(self, operator: LinearOperator):
        super().__init__(operator.range_shape, operator.domain_shape)
        self.domain_name, self.range_name = operator.range_name, operator.domain_name
        self.__dict__["operator"] = operator  # shared, not a submodule (avoids a cycle in the module tree)
        self.__dict__["_adjoint_module"] = operator

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.operator.apply_adjoint(y)

    def apply_adjoint(self, x: torch.Tensor) -> torch.Tensor:
        return self.operator(x)

    def _default_device(self) -> torch.device:
        return self.operator._default_device()

    def extra_repr(self) -> str:
        return f"adjoint of {type(self.operator).__name__}"


class WeightedOperator(LinearOperator):
    """An operator computed from one fixed tensor ``weight`` (a matrix, a filter bank), whose adjoint
    can also be computed with another tensor of that shape: ``adjoint_with(weight, y)``. Unrolled
    networks (LISTA) start learned back-projections from ``weight`` and train copies of it.

    ``weight`` is a non-persistent buffer: it is rebuilt from plain numbers, so checkpoints stay small.
    """

    def __init__(self, weight: torch.Tensor, domain_shape: Tuple[int, ...], range_shape: Tuple[int, ...]):
        super().__init__(domain_shape, range_shape)
        if not torch.isfinite(weight).all():
            raise ValueError("operator weight contains non-finite values")
        self.register_buffer("weight", weight.float().contiguous(), persistent=False)

    def adjoint_with(self, weight: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """The adjoint's computation with ``weight`` in place of ``self.weight``: ``(B, *range) -> (B, *domain)``."""
        raise NotImplementedError

    def _compute_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.adjoint_with(self.weight, y)


# -------------------------------------------------------------------------------------------------
# The registry: plain-number descriptions -> operators
# -------------------------------------------------------------------------------------------------
_REGISTRY: Dict[str, Tuple[Callable[[dict], Any], Callable[..., LinearOperator]]] = {}


def description_from_dict(cls, values: dict):
    """The dataclass ``cls`` of a description dict (its ``type`` entry is not a field); unknown
    fields are an error naming them (the parser every registered description type uses)."""
    values = {key: value for key, value in dict(values).items() if key != "type"}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}; expected a subset of {sorted(known)}")
    return cls(**values)


def register_operator(type_name: str, parse: Callable[[dict], Any], build: Callable[..., LinearOperator]) -> None:
    """Make ``operator_from_dict({"type": type_name, ...})`` work.

    Args:
        type_name: the ``type`` entry of the description (the class name of its dataclass).
        parse: description dict (with ``type``) -> its plain-number object (validates the numbers).
        build: ``build(spec_object, **options) -> LinearOperator``; options every builder accepts:
            ``backend`` (a ray-transform backend; operators with a single torch implementation ignore
            it) and ``check_finite``.
    """
    _REGISTRY[type_name] = (parse, build)


def _entry(spec: Union[dict, Any]):
    if isinstance(spec, dict) and "type" not in spec:
        raise ValueError(f"a forward-model description needs its type (type: one of {', '.join(sorted(_REGISTRY))}); "
                         f"got the fields {sorted(spec)}")
    name = spec["type"] if isinstance(spec, dict) else type(spec).__name__
    if name not in _REGISTRY:
        raise ValueError(f"unknown type {name!r} of a forward-model description (known: "
                         f"{', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


def spec_from_dict(spec: Union[dict, Any]) -> Any:
    """The plain-number object of a description dict (``type`` required), or the object itself."""
    if not isinstance(spec, dict):
        _entry(spec)
        return spec
    parse, _ = _entry(spec)
    return parse(dict(spec))


def operator_from_dict(spec: Union[dict, Any], backend: str = "auto", check_finite: bool = True) -> LinearOperator:
    """The operator a description dict (or its object) stands for: a CT geometry gives a
    ``RayTransform``, a ``LightFieldGeometry`` a ``LightFieldModel``, a ``SparseCodingProblem`` its
    dictionary. ``backend``/``check_finite``: see :func:`register_operator`."""
    _, build = _entry(spec)
    return build(spec_from_dict(spec), backend=backend, check_finite=check_finite)
