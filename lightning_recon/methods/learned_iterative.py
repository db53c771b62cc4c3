"""Learned iterative schemes with the forward operator inside the network."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Iterator

import torch

from ..nets import LearnedGradientDescent, LearnedPrimalDual
from .self_supervised import LearnedReconstructionModule

__all__ = ["LearnedGD", "LearnedPD"]


def _renamed_norm_buffer(module, state_dict, prefix, *args) -> None:
    """Checkpoints written before the buffer's rename store it as ``operator_norm``."""
    if prefix + "operator_norm" in state_dict:
        state_dict[prefix + "cached_operator_norm"] = state_dict.pop(prefix + "operator_norm")


class _UnrolledModule(LearnedReconstructionModule):
    """Holds ‖A‖ as a persistent buffer ``cached_operator_norm``: computed once on first use (by
    ``self.operator.operator_norm()``), then saved with the weights. The loss is selectable
    (:mod:`~lightning_recon.methods.self_supervised`); with ``noise2inverse`` the network reads the
    measurement of a subset J of the angles with that subset's operator ``A_J`` inside."""

    weights_not_transferred = ("cached_operator_norm",)  # ‖A‖ of this geometry, not the source's
    noise2inverse_input = "measurement"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.register_buffer("cached_operator_norm", torch.zeros(()))
        self.register_load_state_dict_pre_hook(_renamed_norm_buffer)

    def _normalised_net(self):
        """The network with ``op_norm`` set; reads the buffer once (one host synchronisation per run)."""
        if self.__dict__.get("_op_norm_value") is None:
            if float(self.cached_operator_norm) == 0.0:
                self.cached_operator_norm.fill_(self.operator.operator_norm())
            self.__dict__["_op_norm_value"] = float(self.cached_operator_norm)
        self.net.op_norm = self.__dict__["_op_norm_value"]
        return self.net

    @contextmanager
    def _network(self, operator=None, operator_scale: float = 1.0) -> Iterator[torch.nn.Module]:
        """The normalised network; with ``operator`` (a Noise2Inverse subset's ``A_J``), that operator
        inside it, normalised by ‖A‖ · ``operator_scale``, for the duration of the block."""
        net = self._normalised_net()
        if operator is None:
            yield net
            return
        norm = net.op_norm
        net.__dict__["operator"], net.op_norm = operator, norm * operator_scale
        try:
            yield net
        finally:
            net.__dict__["operator"], net.op_norm = self.operator, norm

    def on_load_checkpoint(self, checkpoint) -> None:
        super().on_load_checkpoint(checkpoint)
        self.__dict__["_op_norm_value"] = None  # the loaded buffer holds the norm


class LearnedGD(_UnrolledModule):
    """Learned gradient descent: ``x_{k+1} = x_k + Γ_θk(x_k, Aᵀ(A x_k − y))`` with ``A / ‖A‖``.

    Args:
        n_iter: unrolled iterations K (5–10).
        hidden_channels: width of the 3-layer convolutional update per iteration.
        init: ``"fbp"`` (start from the FBP) or ``"zero"``.
        checkpointing: recompute activations per iteration in the backward pass (saves memory).
    """

    def __init__(self, n_iter: int = 10, hidden_channels: int = 32, init: str = "fbp",
                 checkpointing: bool = False, **kwargs):
        super().__init__(**kwargs)
        if init not in ("fbp", "zero"):
            raise ValueError(f"init must be 'fbp' or 'zero', got {init!r}")
        self.net = LearnedGradientDescent(self.operator, n_iter=n_iter,
                                          hidden_channels=hidden_channels, checkpointing=checkpointing)

    def apply_network(self, batch: Dict[str, torch.Tensor], operator=None, operator_scale: float = 1.0) -> torch.Tensor:
        x0 = batch["fbp"] if self.hparams.init == "fbp" else None
        with self._network(operator, operator_scale) as net:
            return net(batch["measurement"], x0=x0)


class LearnedPD(_UnrolledModule):
    """Learned primal-dual (Adler & Öktem 2018): 10 iterations, 5 primal + 5 dual channels, zero
    initialisation, ``A / ‖A‖``; train with Adam(β₂ = 0.99), lr 1e-3, cosine, gradient clipping 1.
    """

    def __init__(self, n_iter: int = 10, n_primal: int = 5, n_dual: int = 5, hidden_channels: int = 32,
                 checkpointing: bool = False, betas=(0.9, 0.99), **kwargs):
        super().__init__(betas=betas, **kwargs)
        self.net = LearnedPrimalDual(self.operator, n_iter=n_iter,
                                     n_primal=n_primal, n_dual=n_dual, hidden_channels=hidden_channels,
                                     checkpointing=checkpointing)

    def apply_network(self, batch: Dict[str, torch.Tensor], operator=None, operator_scale: float = 1.0) -> torch.Tensor:
        with self._network(operator, operator_scale) as net:
            return net(batch["measurement"])
