"""Bilinear image resampling with scikit-image's conventions, as a batched torch module.

dival's ``ellipses`` standard simulates its sinograms from the 128² truth upsampled to 400² by
``skimage.transform.resize(x, (400, 400), order=1)``: pixel centres aligned (output pixel ``j``
samples input coordinate ``(j + ½)·n_in/n_out − ½``) and a mirrored border (the sample left of
pixel 0 is pixel 1: numpy's ``reflect``). ``torch.nn.functional.interpolate`` clamps at the border
instead, which changes edge pixels by up to 0.23 on those phantoms. Here the resampling is two
small interpolation matrices (``out × in``), applied as ``Wx · x · Wyᵀ`` on any device.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["linear_interpolation_matrix", "BilinearResize"]


def _mirror(index: np.ndarray, n: int) -> np.ndarray:
    """Whole-sample symmetric indices: −1 → 1, n → n − 2 (period 2n − 2)."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * n - 2
    index = np.mod(index, period)
    return np.where(index >= n, period - index, index)


def linear_interpolation_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` float64 matrix of 1D linear interpolation (skimage ``order=1``, mirrored border)."""
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be >= 1, got n_in={n_in}, n_out={n_out}")
    coords = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    left = np.floor(coords).astype(np.int64)
    weight_right = coords - left
    matrix = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(matrix, (rows, _mirror(left, n_in)), 1.0 - weight_right)
    np.add.at(matrix, (rows, _mirror(left + 1, n_in)), weight_right)
    return matrix


class BilinearResize(nn.Module):
    """Resize images ``(..., H, W)`` to ``(..., *out_shape)`` (skimage ``resize(order=1)`` semantics)."""

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int]):
        super().__init__()
        self.in_shape, self.out_shape = tuple(int(s) for s in in_shape), tuple(int(s) for s in out_shape)
        rows = linear_interpolation_matrix(self.in_shape[0], self.out_shape[0])
        cols = linear_interpolation_matrix(self.in_shape[1], self.out_shape[1])
        self.register_buffer("rows", torch.from_numpy(rows).float(), persistent=False)
        self.register_buffer("cols", torch.from_numpy(cols).float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.in_shape:
            raise ValueError(f"expected images of shape (..., {self.in_shape[0]}, {self.in_shape[1]}), "
                             f"got {tuple(x.shape)}")
        rows, cols = self.rows.to(x.device, x.dtype), self.cols.to(x.device, x.dtype)
        return rows @ x @ cols.T

    def extra_repr(self) -> str:
        return f"{self.in_shape} -> {self.out_shape}"
