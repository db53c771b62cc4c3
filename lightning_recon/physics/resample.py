"""Bilinear image resampling with scikit-image's conventions, as a batched torch module.

dival's ``ellipses`` standard simulates its sinograms from the 128² truth upsampled to 400² by
``skimage.transform.resize(x, (400, 400), order=1)``: pixel centres aligned (output pixel ``j``
samples input coordinate ``(j + ½)·n_in/n_out − ½``) and a mirrored border (the sample left of
pixel 0 is pixel 1: numpy's ``reflect``). ``torch.nn.functional.interpolate`` clamps at the border
instead, which changes edge pixels by up to 0.23 on those phantoms. Here the resampling is two
small interpolation matrices (``out × in``), applied as ``Wx · x · Wyᵀ`` on any device.
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
from torch import nn

__all__ = ["linear_interpolation_matrix", "BilinearResize", "rotate_images", "shift_images"]


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


def rotate_images(x: torch.Tensor, degrees: Union[float, torch.Tensor]) -> torch.Tensor:
    """Images ``(B, C, H, W)`` rotated about their centre by ``degrees`` (a number, or one per image
    ``(B,)``): bilinear interpolation, zero outside the image, differentiable in ``x`` (the rotations
    of the equivariant-imaging loss). A multiple of 90° on a square image moves pixel centres onto
    pixel centres (``torch.rot90`` up to rounding)."""
    if x.dim() != 4:
        raise ValueError(f"rotate_images expects images (B, C, H, W), got shape {tuple(x.shape)}")
    height, width = x.shape[-2:]
    radians = torch.as_tensor(degrees, dtype=torch.float32, device=x.device).reshape(-1) * (torch.pi / 180)
    radians = radians.expand(x.shape[0]) if radians.numel() == 1 else radians
    if radians.numel() != x.shape[0]:
        raise ValueError(f"give one angle or one per image ({x.shape[0]}), got {radians.numel()}")
    cos, sin = torch.cos(radians), torch.sin(radians)
    zero = torch.zeros_like(cos)
    # a rigid rotation in pixel units, written in the normalised coordinates of affine_grid
    theta = torch.stack([torch.stack([cos, -sin * height / width, zero], -1),
                         torch.stack([sin * width / height, cos, zero], -1)], 1)
    grid = nn.functional.affine_grid(theta.to(x.dtype if x.is_floating_point() else torch.float32),
                                     list(x.shape), align_corners=False)
    return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def shift_images(x: torch.Tensor, shifts: Sequence[Sequence[int]]) -> torch.Tensor:
    """Images ``(B, C, H, W)`` shifted circularly by whole pixels, ``shifts[b] = (rows, cols)`` for image ``b``."""
    if x.dim() != 4 or len(shifts) != x.shape[0]:
        raise ValueError(f"shift_images expects images (B, C, H, W) and B shifts, got {tuple(x.shape)} and "
                         f"{len(shifts)}")
    return torch.stack([torch.roll(image, shifts=(int(r), int(c)), dims=(-2, -1)) for image, (r, c) in zip(x, shifts)])
