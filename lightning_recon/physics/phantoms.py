"""Random-ellipse phantoms: dival's ``ellipses`` standard and Adler & Öktem's family.

Two families, both drawn image by image from one ``numpy.random.RandomState(seed)`` so that a
split's phantom ``i`` is the ``i``-th image of that seed's stream (any worker or rank gets the same
image for the same (seed, index)):

- ``"dival"`` (dival 0.6.2's ``EllipsesDataset``; the ``ellipses`` standard): per image 70 slots
  drawn in the order value ``U(−0.4, 1.0)``, half-axes ``0.2·Exp(1)`` twice, centre
  ``U(−0.9, 0.9)`` twice, rotation ``U(0, 2π)``, then ``n = min(Poisson(40), 70)`` and the values of
  slots ``n…69`` set to 0. After rasterising, the *foreground* (pixels ≠ 0) is shifted by the
  image minimum and the image divided by its maximum: the background stays exactly 0 (≈ 39 % of
  pixels) and the mean pixel value is ≈ 0.23. dival's fixed seeds: train 42, validation 2, test 1.
- ``"adler"`` (Adler & Öktem's learned primal-dual code): 50 ellipses, value ``U(−½, ½)·Exp(0.4)``,
  centre ``U(−1, 1)²``, whole image min-max normalised (mean pixel ≈ 0.5). A different
  distribution: its numbers never compare with the dival standard's.

Ellipse parameters are rows ``(value, a1, a2, x0, y0, rotation)`` relative to the reference square
[−1, 1]² spanned by the outermost pixel *centres* (ODL's ``ellipsoid_phantom`` convention); images
are ``(H, W)`` with ODL's axes (axis 0 along x). ``rasterise_ellipses`` is a batched torch version
of ODL's rasteriser that runs on any device; ``ellipse_phantom`` is ODL's own (the reference).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

__all__ = ["PHANTOM_FAMILIES", "ellipse_parameters", "ellipse_phantom", "rasterise_ellipses", "normalise_phantoms"]

PHANTOM_FAMILIES = ("dival", "adler")
DIVAL_SLOTS, DIVAL_MEAN_COUNT = 70, 40
ADLER_ELLIPSES = 50


def _check_family(family: str) -> None:
    if family not in PHANTOM_FAMILIES:
        raise ValueError(f"phantom family must be one of {PHANTOM_FAMILIES}, got {family!r}")


def _dival_draw(rng: np.random.RandomState) -> np.ndarray:
    n = DIVAL_SLOTS
    value = rng.uniform(-0.4, 1.0, (n,))
    a1 = 0.2 * rng.exponential(1.0, (n,))
    a2 = 0.2 * rng.exponential(1.0, (n,))
    x0 = rng.uniform(-0.9, 0.9, (n,))
    y0 = rng.uniform(-0.9, 0.9, (n,))
    rotation = rng.uniform(0.0, 2 * np.pi, (n,))
    count = min(rng.poisson(DIVAL_MEAN_COUNT), n)
    value[count:] = 0.0
    return np.stack((value, a1, a2, x0, y0, rotation), axis=1)


def _adler_draw(rng: np.random.RandomState) -> np.ndarray:
    n = ADLER_ELLIPSES
    value = rng.uniform(-0.5, 0.5, (n,)) * rng.exponential(0.4, (n,))
    a1 = 0.2 * rng.exponential(1.0, (n,))
    a2 = 0.2 * rng.exponential(1.0, (n,))
    x0 = rng.uniform(-1.0, 1.0, (n,))
    y0 = rng.uniform(-1.0, 1.0, (n,))
    rotation = rng.uniform(0.0, 2 * np.pi, (n,))
    return np.stack((value, a1, a2, x0, y0, rotation), axis=1)


def ellipse_parameters(seed: int, count: int, family: str = "dival") -> np.ndarray:
    """Parameters ``(count, slots, 6)`` (float64) of the first ``count`` phantoms of ``seed``.

    ``slots`` is 70 for ``"dival"`` (unused slots have value 0) and 50 for ``"adler"``.
    """
    _check_family(family)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    rng = np.random.RandomState(seed)
    draw = _dival_draw if family == "dival" else _adler_draw
    slots = DIVAL_SLOTS if family == "dival" else ADLER_ELLIPSES
    params = np.empty((count, slots, 6))
    for i in range(count):
        params[i] = draw(rng)
    return params


def normalise_phantoms(images: torch.Tensor, family: str = "dival") -> torch.Tensor:
    """Normalise raw ellipse sums ``(..., H, W)`` per image as the family does (see module doc)."""
    _check_family(family)
    flat = images.flatten(-2)
    low = flat.min(dim=-1, keepdim=True).values
    if family == "dival":
        flat = torch.where(flat != 0, flat - low, flat)
    else:
        flat = flat - low
    peak = flat.max(dim=-1, keepdim=True).values
    flat = flat / torch.where(peak > 0, peak, torch.ones_like(peak))  # an empty image stays 0
    return flat.reshape(images.shape)


def _pixel_coordinates(shape: Sequence[int], device, dtype=torch.float64):
    """Pixel centres mapped to [−1, 1] (outermost centres at ±1), as ODL's rasteriser does."""
    axes = [torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype) if n > 1
            else torch.zeros(1, device=device, dtype=dtype) for n in shape]
    return torch.meshgrid(*axes, indexing="ij")


def rasterise_ellipses(params, shape: Sequence[int], family: Optional[str] = "dival",
                       device=None) -> torch.Tensor:
    """Batched torch rasteriser: parameters ``(B, n, 6)`` → images ``(B, H, W)`` float32.

    Reproduces ODL's ``ellipsoid_phantom`` (a pixel is inside when its centre satisfies the rotated
    ellipse inequality, evaluated in float64; values add up in ellipse order in float32), then
    normalises per ``family`` (``None``: the raw sum). Runs on ``device`` (default: the parameters'
    device, or the CPU for numpy input); only pixels whose centre lies exactly on an ellipse border
    can differ from ODL's output, by float rounding of the inequality.
    """
    params = torch.as_tensor(params, dtype=torch.float64, device=device)
    if params.dim() != 3 or params.shape[-1] != 6:
        raise ValueError(f"params must have shape (B, n, 6), got {tuple(params.shape)}")
    x, y = _pixel_coordinates(shape, params.device)
    value, a1, a2, x0, y0, theta = (params[..., k, None, None] for k in range(6))  # (B, n, 1, 1)
    cos, sin = torch.cos(theta), torch.sin(theta)
    dx, dy = x - x0, y - y0
    u = cos * dx + sin * dy
    v = (-sin) * dx + cos * dy
    inside = u * u * (1.0 / (a1 * a1)) + v * v * (1.0 / (a2 * a2)) <= 1.0  # (B, n, H, W)
    values = value.to(torch.float32) * inside
    images = torch.zeros(params.shape[0], *shape, dtype=torch.float32, device=params.device)
    for k in range(params.shape[1]):  # sequential float32 sums, in ODL's order
        images += values[:, k]
    return images if family is None else normalise_phantoms(images, family)


def ellipse_phantom(params: np.ndarray, shape, extent=None, family: Optional[str] = "dival") -> np.ndarray:
    """ODL's ``ellipsoid_phantom`` of one phantom's ``(n, 6)`` parameters on ``shape`` (float32),
    normalised per ``family`` (``None``: the raw sum). The reference for ``rasterise_ellipses``."""
    import odl
    from odl.core.phantom import ellipsoid_phantom

    extent = extent if extent is not None else shape
    half = [e / 2 for e in extent]
    space = odl.uniform_discr([-h for h in half], half, tuple(shape), dtype="float32")
    image = np.asarray(ellipsoid_phantom(space, params).data, dtype=np.float32)
    if family is None:
        return image
    return normalise_phantoms(torch.from_numpy(image), family).numpy()
